"""Command line training, as in the Megatron Bridge docs:

    torchrun --nproc-per-node=N -m minibridge.train --recipe NAME [--pretrained-checkpoint DIR]
             [--peft_scheme lora|dora] train.global_batch_size=64 model.tensor_model_parallel_size=2 ...
    python -m minibridge.train --list
"""

from __future__ import annotations

import sys

from .training.config import ConfigError
from .training.overrides import parse_cli


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_cli(sys.argv[1:] if argv is None else argv)
        from minibridge.recipes import build_config, list_recipes

        if args.list_recipes:
            width = max(len(name) for name, _ in list_recipes())
            for name, summary in list_recipes():
                print(f"{name:<{width}}  {summary}")
            return 0
        config = build_config(args.recipe, args.pretrained_checkpoint, args.peft_scheme, args.overrides)
        from .training.loop import Trainer

        trainer = Trainer(config)  # validates the layout against the world before any work
    except (ConfigError, KeyError, ValueError, NotImplementedError) as err:
        print(f"minibridge.train: {err}", file=sys.stderr)
        return 2
    trainer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
