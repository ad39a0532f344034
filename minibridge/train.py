"""Command line training, as Megatron Bridge's scripts/training/run_recipe.py (`--help` shows its flags, which
minibridge.training.command_line parses, and the override grammar of hydra_grammar). A bad recipe, flag, override,
file or layout stops the run with one line naming it and exit code 2 (`minibridge.cli`), at startup or mid-run.
"""

from __future__ import annotations

import copy
import os
import sys

from .cli import run_main
from .training.command_line import DATASETS, USAGE, choose_recipe, parse_run_recipe


def resolved_config(args):
    """(recipe name, the validated ConfigContainer) of parsed command-line arguments: the recipe built once, then
    one ordered list of changes (run_recipe.py's order, a later one of a key winning) applied to it."""
    from minibridge.recipes import RECIPES, recipe_config

    from .training.hydra_grammar import configure, read_yaml, yaml_items

    name, scheme = choose_recipe(args, RECIPES)
    config, items = recipe_config(name, args.pretrained_checkpoint, scheme)
    items += DATASETS.get(args.dataset, [])
    if args.config_file:  # the file's values that differ from the configuration so far
        so_far = configure(copy.deepcopy(config), items)
        items += yaml_items(so_far, read_yaml(args.config_file), source=args.config_file)
    if args.deterministic:  # Megatron Bridge's apply_determinism_overrides; the loop applies it (training.loop)
        items.append(("model.deterministic_mode", True))
    return name, configure(config, [*items, *args.overrides]).validate()


def _main(argv: list[str] | None) -> int:
    args = parse_run_recipe(sys.argv[1:] if argv is None else argv)
    if args.help:
        print(USAGE)
        return 0
    if args.list_recipes:
        from minibridge.recipes import list_recipes

        width = max(len(name) for name, _ in list_recipes())
        for name, summary in list_recipes():
            print(f"{name:<{width}}  {summary}")
        return 0
    name, config = resolved_config(args)
    if args.dry_run:
        from .checkpoint.folder import run_config_yaml

        if os.environ.get("RANK", "0") == "0":
            training = config.peft.scheme if config.peft is not None else "all weights"
            print(f"# recipe: {name}; trains: {training}")
            print(run_config_yaml(config.to_dict()), end="", flush=True)
        return 0
    from .training.loop import Trainer

    Trainer(config).run()  # validates the layout against the world before any work
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main("minibridge.train", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
