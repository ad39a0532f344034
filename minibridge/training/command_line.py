"""The command line of `python -m minibridge.train`: Megatron Bridge's scripts/training/run_recipe.py flags,
then Hydra-grammar overrides (hydra_grammar.py over overrides.py).

Order of application, as run_recipe.py: the recipe (by --recipe, or --model and --mode), the --dataset
preset, `--config-file` YAML, the convenience flags (-tp, --lr, ...), then the trailing overrides; a
later setting of the same key wins.
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

from .config import ConfigError
from .validation import choice_message
from .data.presets import PRESETS

USAGE = """usage: python -m minibridge.train (--recipe NAME | --model NAME) [--mode pretrain|sft|lora|dora]
                               [--dataset NAME] [--config-file FILE.yaml]
                               [--pretrained-checkpoint DIR] [--peft_scheme lora|dora|none]
                               [-tp N] [-pp N] [-cp N] [-vp N] [-gb N] [-mb N] [-sl N] [-ms N]
                               [--lr X] [--min_lr X] [--warmup_iters N]
                               [--save_dir DIR] [--load_dir DIR] [--save_interval N]
                               [--dry-run] [--deterministic] [key=value | +key=value | ++key=value | ~key ...]
       python -m minibridge.train --list
       torchrun --nproc-per-node=N -m minibridge.train ...

selection:
  --recipe NAME              a recipe function (--list shows them): llama32_1b_pretrain_config, ...
  --model NAME               a model stem, with --mode: llama32_1b --mode lora -> its fine-tuning recipe
  --mode MODE                pretrain, sft (full fine-tuning), lora or dora; default: the recipe's own
  --peft_scheme SCHEME       lora, dora or none (full); the older spelling of --mode
  --pretrained-checkpoint DIR
                             HF folder or minibridge checkpoint to start from (also --pretrained_checkpoint)
data:
  --dataset NAME             squad, gsm8k, tulu3, openmathinstruct2, openmathinstruct2-thinking (Hugging Face
                             datasets formatted as Megatron Bridge's; a local copy: dataset.hf_path=DIR),
                             mock (random tokens), megatron-indexed (.bin/.idx: dataset.data_paths=[PREFIX,...]),
                             local-jsonl (prompt/completion rows: dataset.data_paths=[FILE.jsonl]);
                             any HF dataset: dataset.kind=hf dataset.hf_path=NAME_OR_DIR [dataset.hf_split=...]
  --config-file FILE.yaml    sections as in run_config.yaml (model:, train:, ...), merged before the overrides
convenience overrides (the key on the right; a trailing key=value of the same key wins):
  -ms, --max_steps N         train.train_iters          -gb, --global_batch_size N  train.global_batch_size
  -mb, --micro_batch_size N  train.micro_batch_size     -sl, --seq_length N         dataset.seq_length
  -tp N                      model.tensor_model_parallel_size
  -pp N                      model.pipeline_model_parallel_size
  -cp N                      model.context_parallel_size
  -vp N                      model.virtual_pipeline_model_parallel_size
  --lr X                     optimizer.lr               --min_lr X                  optimizer.min_lr
  --warmup_iters N           scheduler.lr_warmup_iters  --save_interval N           checkpoint.save_interval
  --save_dir DIR             checkpoint.save            --load_dir DIR              checkpoint.load
runtime:
  --dry-run                  print the resolved configuration (YAML, as run_config.yaml) and exit
  --deterministic            model.deterministic_mode=true: deterministic kernels, fixed cuBLAS workspace
  --list                     the recipes, one per line; -h, --help: this text
overrides (Hydra's grammar):
  key=value, +key=value, ++key=value   set a field: train.train_iters=1000 optimizer.lr=3e-4 peft=dora
  ~key, ~key=value                      reset a field to its default (~peft: full training)
  ${section.key}                        another setting's final value: logger.log_dir=${checkpoint.save}/logs"""

# Megatron Bridge run_recipe.py's COMMON_OVERRIDE_FIELDS (its -ep / -etp have no meaning without experts).
COMMON_OVERRIDES = {
    "max_steps": "train.train_iters", "global_batch_size": "train.global_batch_size",
    "micro_batch_size": "train.micro_batch_size", "seq_length": "dataset.seq_length",
    "tensor_model_parallel_size": "model.tensor_model_parallel_size",
    "pipeline_model_parallel_size": "model.pipeline_model_parallel_size",
    "context_parallel_size": "model.context_parallel_size",
    "virtual_pipeline_model_parallel_size": "model.virtual_pipeline_model_parallel_size",
    "lr": "optimizer.lr", "min_lr": "optimizer.min_lr", "warmup_iters": "scheduler.lr_warmup_iters",
    "save_dir": "checkpoint.save", "load_dir": "checkpoint.load", "save_interval": "checkpoint.save_interval",
}
_SHORT = {"-ms": "max_steps", "-gb": "global_batch_size", "-mb": "micro_batch_size", "-sl": "seq_length",
          "-tp": "tensor_model_parallel_size", "-pp": "pipeline_model_parallel_size",
          "-cp": "context_parallel_size", "-vp": "virtual_pipeline_model_parallel_size"}
_VALUE_FLAGS = {
    **{f"--{name}": name for name in COMMON_OVERRIDES}, **_SHORT,
    "--recipe": "recipe", "--model": "model", "--mode": "mode", "--dataset": "dataset",
    "--pretrained-checkpoint": "pretrained_checkpoint", "--pretrained_checkpoint": "pretrained_checkpoint",
    "--peft_scheme": "peft_scheme", "--peft-scheme": "peft_scheme",
    "--config-file": "config_file", "--config_file": "config_file",
}
_SWITCHES = {"--dry-run": "dry_run", "--dry_run": "dry_run", "--deterministic": "deterministic",
             "--list": "list_recipes", "-h": "help", "--help": "help"}
MODES = ("pretrain", "sft", "lora", "dora")
# --dataset presets of Megatron Bridge (recipes/utils/dataset_utils.py DATASET_PRESETS) -> typed changes here.
_HF = (("dataset.kind", "hf"), ("dataset.data_paths", []), ("dataset.hf_path", None), ("dataset.hf_split", None),
       ("dataset.hf_subset", None))
DATASETS = {"mock": [("dataset.kind", "mock"), ("dataset.data_paths", [])],
            "megatron-indexed": [("dataset.kind", "indexed")], "local-jsonl": [("dataset.kind", "sft")],
            **{name: [*_HF, ("dataset.preset", name)] for name in PRESETS}}
VISION_DATASETS = ("local-vlm", "cord-v2", "llava-video-178k", "medpix", "raven", "rdr")


class CliArgs(NamedTuple):
    """The flags of the seed documents' command line (`parse_cli`)."""

    recipe: str | None
    pretrained_checkpoint: str | None
    peft_scheme: str | None  # "lora", "dora", "none" (explicitly full training) or None (recipe default)
    overrides: list[str]
    list_recipes: bool


class RunRecipeArgs(NamedTuple):
    """Everything run_recipe.py takes (`parse_run_recipe`)."""

    recipe: str | None
    pretrained_checkpoint: str | None
    peft_scheme: str | None
    overrides: list[str]  # the convenience flags' overrides, then the trailing ones, in Hydra's grammar
    list_recipes: bool
    model: str | None = None
    mode: str | None = None
    dataset: str | None = None
    config_file: str | None = None
    dry_run: bool = False
    deterministic: bool = False
    help: bool = False


def _unknown_flag(flag: str) -> ConfigError:
    close = difflib.get_close_matches(flag, [*_VALUE_FLAGS, *_SWITCHES], n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(f"unknown flag {flag!r}{hint} (python -m minibridge.train --help shows them)")


def parse_cli(argv: list[str]) -> CliArgs:
    """(recipe, pretrained_checkpoint, peft_scheme, overrides, list_flag) of `parse_run_recipe`."""
    return CliArgs(*parse_run_recipe(argv)[:5])


def parse_run_recipe(argv: list[str]) -> RunRecipeArgs:
    """The arguments after the program name. Flags take `--flag VALUE` or `--flag=VALUE`; an unknown flag,
    a missing value or a bad choice raises ConfigError naming it."""
    values: dict = {name: None for name in _VALUE_FLAGS.values()}
    switches = {name: False for name in _SWITCHES.values()}
    trailing, i = [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in _SWITCHES:
            switches[_SWITCHES[arg]] = True
        elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 1 and arg[1].isdigit():
            raise ConfigError(f"unexpected argument {arg!r}: expected a --flag or a key=value override")
        elif arg.startswith("-"):
            flag, sep, value = arg.partition("=")
            if flag in _SWITCHES:
                raise ConfigError(f"{flag} takes no value (found {arg!r})")
            if flag not in _VALUE_FLAGS:
                raise _unknown_flag(flag)
            if not sep:
                if i >= len(argv) or (argv[i].startswith("-") and not _is_number(argv[i])):
                    raise ConfigError(f"{flag} needs a value\n{USAGE}")
                value, i = argv[i], i + 1
            values[_VALUE_FLAGS[flag]] = value
        elif "=" in arg or arg.startswith("~"):
            trailing.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r}: expected a --flag or a key=value override\n{USAGE}")
    scheme = values["peft_scheme"]
    if scheme is not None:
        scheme = scheme.lower()
        if scheme not in ("lora", "dora", "none"):
            raise ConfigError(choice_message("--peft_scheme", scheme, ("lora", "dora", "none")))
    mode = values["mode"]
    if mode is not None and mode not in MODES:
        raise ConfigError(choice_message("--mode", mode, MODES))
    if values["dataset"] is not None:
        check_dataset(values["dataset"])
    if values["recipe"] and values["model"]:
        raise ConfigError("give --recipe NAME or --model NAME, not both")
    if values["model"] and mode is None:
        raise ConfigError(f"--model {values['model']} needs --mode (one of {', '.join(MODES)})")
    if not (switches["list_recipes"] or switches["help"]) and not (values["recipe"] or values["model"]):
        raise ConfigError(f"--recipe NAME is required, or --model NAME --mode MODE (see --list)\n{USAGE}")
    flagged = [f"{key}={values[name]}" for name, key in COMMON_OVERRIDES.items() if values[name] is not None]
    return RunRecipeArgs(values["recipe"], values["pretrained_checkpoint"], scheme, flagged + trailing,
                   switches["list_recipes"], values["model"], mode, values["dataset"], values["config_file"],
                   switches["dry_run"], switches["deterministic"], switches["help"])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_dataset(name: str) -> None:
    if name in DATASETS:
        return
    if name in VISION_DATASETS:
        raise ConfigError(f"--dataset {name} is a vision-language dataset; minibridge trains text models only")
    raise ConfigError(choice_message("--dataset", name, tuple(DATASETS)))


def recipe_mode(name: str) -> str | None:
    """The mode a recipe name implies (Megatron Bridge's infer_recipe_mode): pretrain, sft, lora or None.
    Our `*_finetune_config` are LoRA by default, so they imply none and follow --mode."""
    padded = f"_{name.lower().strip('_')}_"
    if "_pretrain_" in padded:
        return "pretrain"
    if "_sft_" in padded:
        return "sft"
    if "_peft_" in padded or "_lora_" in padded or "_dora_" in padded:
        return "lora"
    return None


def model_stem(name: str) -> str:
    for suffix in ("_pretrain_config", "_finetune_config", "_sft_config", "_peft_config"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def choose_recipe(args: RunRecipeArgs, names) -> tuple[str, str | None]:
    """(recipe name, peft scheme for build_config) from --recipe / --model, --mode and --peft_scheme.

    --mode sft|lora|dora maps a model to its fine-tuning recipe: `<model>_sft_config` / `<model>_peft_config`
    when they exist, else `<model>_finetune_config` with peft none / lora / dora."""
    names = set(names)
    mode, scheme = args.mode, args.peft_scheme
    wanted = {"sft": "none", "lora": "lora", "dora": "dora"}.get(mode)
    if wanted and scheme and scheme != wanted:
        raise ConfigError(f"--mode {mode} and --peft_scheme {scheme} disagree; give one of them")
    if mode is None:
        return args.recipe, scheme
    recipe = args.recipe
    implied = recipe_mode(recipe) if recipe else None
    if recipe and implied == "pretrain" and mode == "pretrain":
        return recipe, scheme
    if recipe and implied is None and mode == "pretrain" and recipe.endswith("_finetune_config"):
        raise ConfigError(f"--mode pretrain is incompatible with recipe {recipe!r} (a fine-tuning recipe); use "
                          f"{model_stem(recipe)}_pretrain_config")
    if recipe and implied in ("sft", "lora") and mode == "pretrain":
        raise ConfigError(f"--mode pretrain is incompatible with recipe {recipe!r} (a fine-tuning recipe)")
    if recipe and implied in ("sft", "lora") and (implied == "sft") != (mode == "sft"):
        other = f"{model_stem(recipe)}_{'sft' if mode == 'sft' else 'peft'}_config"
        raise ConfigError(f"--mode {mode} is incompatible with recipe {recipe!r} (Megatron Bridge refuses it too); "
                          f"use {other} or --model {model_stem(recipe)}")
    if recipe and implied != "pretrain" and mode != "pretrain":
        return recipe, wanted  # a fine-tuning recipe: the mode picks full or adapters (lora or dora)
    stem = model_stem(recipe) if recipe else args.model
    candidates = ([f"{stem}_pretrain_config"] if mode == "pretrain" else
                  [f"{stem}_{'sft' if mode == 'sft' else 'peft'}_config", f"{stem}_finetune_config"])
    for name in candidates:
        if name in names:
            return name, None if mode == "pretrain" else wanted
    close = difflib.get_close_matches(candidates[-1], sorted(names), n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; --list shows the recipes"
    raise ConfigError(f"--mode {mode} for model {stem!r}: no recipe {' or '.join(candidates)}{hint}")
