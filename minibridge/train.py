"""Command line training, as in the Megatron Bridge docs:

    torchrun --nproc-per-node=N -m minibridge.train --recipe NAME [--pretrained-checkpoint DIR]
             [--peft_scheme lora|dora] train.global_batch_size=64 model.tensor_model_parallel_size=2 ...
    python -m minibridge.train --list

A bad recipe, override, file or layout stops the run with one line naming it and exit code 2
(`minibridge.cli`), at startup or mid-run (a corrupt checkpoint, a diverging loss).
"""

from __future__ import annotations

import sys

from .cli import run_main
from .training.command_line import parse_cli


def _main(argv: list[str] | None) -> int:
    args = parse_cli(sys.argv[1:] if argv is None else argv)
    from minibridge.recipes import build_config, list_recipes

    if args.list_recipes:
        width = max(len(name) for name, _ in list_recipes())
        for name, summary in list_recipes():
            print(f"{name:<{width}}  {summary}")
        return 0
    config = build_config(args.recipe, args.pretrained_checkpoint, args.peft_scheme, args.overrides)
    from .training.loop import Trainer

    Trainer(config).run()  # validates the layout against the world before any work
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("minibridge.train", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
