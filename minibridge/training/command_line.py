"""The command line of `python -m minibridge.train`: Megatron Bridge's scripts/training/run_recipe.py flags,
then Hydra-grammar overrides (hydra_grammar.py over overrides.py).

Order of application, as run_recipe.py: the recipe (by --recipe, or --model and --mode), the --dataset
preset, `--config-file` YAML, the convenience flags (-tp, --lr, ...), then the trailing overrides; a
later setting of the same key wins.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections import namedtuple

from .config import ConfigError
from .validation import choice_message
from .data.presets import PRESETS
from .hydra_grammar import GRAMMAR

# Megatron Bridge run_recipe.py's COMMON_OVERRIDE_FIELDS (its -ep / -etp have no meaning without experts): the
# flags, in the order their changes apply, and the key each one sets.
CONVENIENCE = {
    ("-ms", "--max_steps"): "train.train_iters", ("-gb", "--global_batch_size"): "train.global_batch_size",
    ("-mb", "--micro_batch_size"): "train.micro_batch_size", ("-sl", "--seq_length"): "dataset.seq_length",
    ("-tp", "--tensor_model_parallel_size"): "model.tensor_model_parallel_size",
    ("-pp", "--pipeline_model_parallel_size"): "model.pipeline_model_parallel_size",
    ("-cp", "--context_parallel_size"): "model.context_parallel_size",
    ("-vp", "--virtual_pipeline_model_parallel_size"): "model.virtual_pipeline_model_parallel_size",
    ("--lr",): "optimizer.lr", ("--min_lr",): "optimizer.min_lr", ("--warmup_iters",): "scheduler.lr_warmup_iters",
    ("--save_dir",): "checkpoint.save", ("--load_dir",): "checkpoint.load",
    ("--save_interval",): "checkpoint.save_interval",
}
MODES = ("pretrain", "sft", "lora", "dora")
# --dataset presets of Megatron Bridge (recipes/utils/dataset_utils.py DATASET_PRESETS) -> typed changes here.
_HF = (("dataset.kind", "hf"), ("dataset.data_paths", []), ("dataset.hf_path", None), ("dataset.hf_split", None),
       ("dataset.hf_subset", None))
DATASETS = {"mock": [("dataset.kind", "mock"), ("dataset.data_paths", [])],
            "megatron-indexed": [("dataset.kind", "indexed")], "local-jsonl": [("dataset.kind", "sft")],
            **{name: [*_HF, ("dataset.preset", name)] for name in PRESETS}}
VISION_DATASETS = ("local-vlm", "cord-v2", "llava-video-178k", "medpix", "raven", "rdr")



def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minibridge.train", add_help=False, allow_abbrev=False, exit_on_error=False, epilog=GRAMMAR,
        usage="%(prog)s (--recipe NAME | --model NAME --mode MODE) [flags] [key=value | ~key ...]\n"
              "       %(prog)s --list\n       torchrun --nproc-per-node=N -m minibridge.train ...",
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=118))
    add = parser.add_argument_group("selection").add_argument
    add("--recipe", metavar="NAME", help="a recipe function (--list shows them): llama32_1b_pretrain_config, ...")
    add("--model", metavar="NAME", help="a model stem, with --mode: llama32_1b --mode lora -> its fine-tuning recipe")
    add("--mode", help=f"{', '.join(MODES)} (sft: full fine-tuning); default: the recipe's own")
    add("--peft_scheme", "--peft-scheme", metavar="SCHEME", type=str.lower,
        help="lora, dora or none (full); the older --mode")
    add("--pretrained-checkpoint", "--pretrained_checkpoint", dest="pretrained_checkpoint", metavar="DIR",
        help="HF folder, minibridge or Megatron checkpoint to start from")
    add = parser.add_argument_group("data").add_argument
    add("--dataset", metavar="NAME", help=f"{', '.join(PRESETS)} (Hugging Face datasets formatted as Megatron "
        "Bridge's; a local copy: dataset.hf_path=DIR), mock (random tokens), megatron-indexed (.bin/.idx: "
        "dataset.data_paths=[PREFIX,...]), local-jsonl (prompt/completion rows: dataset.data_paths=[FILE.jsonl]); "
        "any HF dataset: dataset.kind=hf dataset.hf_path=NAME_OR_DIR [dataset.hf_split=...]")
    add("--config-file", "--config_file", dest="config_file", metavar="FILE.yaml",
        help="sections as in run_config.yaml (model:, train:, ...), merged before the flags and overrides")
    add = parser.add_argument_group("convenience overrides (the key they set)").add_argument
    for flags, key in CONVENIENCE.items():
        metavar = "DIR" if flags[-1].endswith("_dir") else "X" if flags[-1].endswith("lr") else "N"
        add(*flags, dest=key, metavar=metavar, help=key)
    add = parser.add_argument_group("runtime").add_argument
    add("--dry-run", "--dry_run", dest="dry_run", action="store_true",
        help="print the resolved configuration (YAML, as run_config.yaml) and exit")
    add("--deterministic", action="store_true",
        help="model.deterministic_mode=true: deterministic kernels, fixed cuBLAS workspace")
    add("--list", dest="list_recipes", action="store_true", help="the recipes, one per line")
    add("-h", "--help", dest="help", action="store_true", help="this text")
    return parser


PARSER = _parser()
USAGE = PARSER.format_help().strip()
FLAGS = [flag for action in PARSER._actions for flag in action.option_strings]


# The flags of the seed documents' command line (`parse_cli`); peft_scheme "none" is explicitly full training.
CliArgs = namedtuple("CliArgs", "recipe pretrained_checkpoint peft_scheme overrides list_recipes")


def parse_cli(argv: list[str]) -> CliArgs:
    """(recipe, pretrained_checkpoint, peft_scheme, overrides, list_flag) of `parse_run_recipe`."""
    a = parse_run_recipe(argv)
    return CliArgs(a.recipe, a.pretrained_checkpoint, a.peft_scheme, a.overrides, a.list_recipes)


def parse_run_recipe(argv: list[str]) -> argparse.Namespace:
    """The arguments after the program name (argparse: `--flag VALUE` or `--flag=VALUE`, the last one wins);
    `overrides` are the convenience flags' changes, then the trailing overrides, in Hydra's grammar. An unknown
    flag, a missing value or a bad choice raises ConfigError naming it."""
    try:
        args, rest = PARSER.parse_known_args(argv)
    except argparse.ArgumentError as err:
        if err.message == "expected one argument":
            raise ConfigError(f"{err.argument_name} needs a value\n{USAGE}") from None
        raise ConfigError(f"{err.argument_name} takes no value ({err.message})") from None
    for arg in rest:
        if arg.startswith("-") and len(arg) > 1 and not arg[1].isdigit():
            close = difflib.get_close_matches(arg.partition("=")[0], FLAGS, n=2, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"unknown flag {arg.partition('=')[0]!r}{hint} (python -m minibridge.train --help "
                              f"shows them)")
        if "=" not in arg and not arg.startswith("~"):
            raise ConfigError(f"unexpected argument {arg!r}: expected a --flag or a key=value override\n{USAGE}")
    if args.peft_scheme not in (None, "lora", "dora", "none"):
        raise ConfigError(choice_message("--peft_scheme", args.peft_scheme, ("lora", "dora", "none")))
    if args.mode is not None and args.mode not in MODES:
        raise ConfigError(choice_message("--mode", args.mode, MODES))
    if args.dataset in VISION_DATASETS:
        raise ConfigError(f"--dataset {args.dataset} is a vision-language dataset; minibridge trains text models only")
    if args.dataset is not None and args.dataset not in DATASETS:
        raise ConfigError(choice_message("--dataset", args.dataset, tuple(DATASETS)))
    if args.recipe and args.model:
        raise ConfigError("give --recipe NAME or --model NAME, not both")
    if args.model and args.mode is None:
        raise ConfigError(f"--model {args.model} needs --mode (one of {', '.join(MODES)})")
    if not (args.list_recipes or args.help or args.recipe or args.model):
        raise ConfigError(f"--recipe NAME is required, or --model NAME --mode MODE (see --list)\n{USAGE}")
    args.overrides = [f"{key}={vars(args)[key]}" for key in CONVENIENCE.values() if vars(args)[key] is not None]
    args.overrides += rest
    return args


def recipe_mode(name: str) -> str | None:
    """The mode a recipe name implies (Megatron Bridge's infer_recipe_mode): pretrain, sft, lora or None.
    Our `*_finetune_config` are LoRA by default, so they imply none and follow --mode."""
    found = re.search(r"_(pretrain|sft|peft|lora|dora)_", f"_{name.lower().strip('_')}_")
    return found and {"peft": "lora", "dora": "lora"}.get(found[1], found[1])


def model_stem(name: str) -> str:
    return re.sub(r"_(pretrain|finetune|sft|peft)_config$", "", name)


def choose_recipe(args: argparse.Namespace, names) -> tuple[str, str | None]:
    """(recipe name, peft scheme for build_config) from --recipe / --model, --mode and --peft_scheme.

    --mode sft|lora|dora maps a model to its fine-tuning recipe: `<model>_sft_config` / `<model>_peft_config`
    when they exist, else `<model>_finetune_config` with peft none / lora / dora."""
    mode, recipe = args.mode, args.recipe
    wanted = {"sft": "none", "lora": "lora", "dora": "dora"}.get(mode)
    if wanted and args.peft_scheme and args.peft_scheme != wanted:
        raise ConfigError(f"--mode {mode} and --peft_scheme {args.peft_scheme} disagree; give one of them")
    scheme, implied = args.peft_scheme or wanted, recipe_mode(recipe) if recipe else None
    stem, tuned = model_stem(recipe) if recipe else args.model, "sft" if mode == "sft" else "peft"
    if mode is None or recipe and implied == mode == "pretrain":
        return recipe, scheme
    if recipe and implied != "pretrain":  # a fine-tuning recipe: the mode picks full or adapters (lora or dora)
        if mode == "pretrain":
            raise ConfigError(f"--mode pretrain is incompatible with recipe {recipe!r} (a fine-tuning recipe); use "
                              f"{stem}_pretrain_config")
        if implied and (implied == "sft") != (mode == "sft"):
            raise ConfigError(f"--mode {mode} is incompatible with recipe {recipe!r} (Megatron Bridge refuses it "
                              f"too); use {stem}_{tuned}_config or --model {stem}")
        return recipe, scheme
    candidates = [f"{stem}_pretrain_config"] if mode == "pretrain" else [f"{stem}_{tuned}_config",
                                                                         f"{stem}_finetune_config"]
    for name in candidates:
        if name in names:
            return name, scheme
    close = difflib.get_close_matches(candidates[-1], sorted(names), n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; --list shows the recipes"
    raise ConfigError(f"--mode {mode} for model {stem!r}: no recipe {' or '.join(candidates)}{hint}")
