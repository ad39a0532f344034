"""Recipes as a base and a difference: one base per mode (PRETRAIN, FINETUNE) holding Megatron Bridge's keyword
arguments and their defaults, a family's difference on top (llama.py, gemma.py), and each named recipe a few
lines of changes (`@recipe(PRETRAIN, hf_path=LLAMA3_8B, **layout(1, cp=2))` over a def and its docstring).

A setting is a keyword argument of the recipe (`train_iters`, `global_batch_size`, ..., each passed once) or,
written with a dot, a configuration key that only recipes set (`train.eval_iters`); `recipe.*` keys steer the
build (the layout of full vs adapter training, the architecture). `container` turns the merged settings into
one ordered list of typed `section.key=value` changes, which `training.overrides.apply_values` applies.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

from minibridge.models.config import ModelConfig
from minibridge.training.config import ConfigContainer, ConfigError, ModelSettings, PeftConfig
from minibridge.training.overrides import apply_values

from .architectures import architecture, checkpoint_or, checkpoint_tokenizer, debug_vocabulary, finetune_architecture

FINETUNE_DATASET = "squad"  # what a fine-tuning recipe trains on without data_paths, as Megatron Bridge's
_LAYOUT = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "virtual_pipeline_model_parallel_size",
           "context_parallel_size", "sequence_parallel")
# Keyword arguments that are one configuration key each.
KWARGS = {
    **{f.name: f"model.{f.name}" for f in dataclasses.fields(ModelSettings) if f.name != "config"},
    **{name: f"train.{name}" for name in ("train_iters", "global_batch_size", "micro_batch_size", "eval_interval")},
    **{name: f"optimizer.{name}" for name in ("lr", "min_lr", "adam_eps")},
    **{name: f"scheduler.{name}" for name in ("lr_warmup_iters", "lr_decay_iters")},
    **{name: f"logger.{name}" for name in ("wandb_project", "wandb_entity", "wandb_exp_name")},
    "save_interval": "checkpoint.save_interval", "pretrained_checkpoint": "checkpoint.pretrained_checkpoint",
    "tokenizer": "dataset.tokenizer", "packed_sequence": "dataset.packing", "precision_config": "mixed_precision",
}
# distributed_fused_adam_with_cosine_annealing (Megatron Bridge 0.6.2): Adam beta1 0.9, eps 1e-8, clip 1.0, weight
# decay 0.1 in the optimizer section, which its scheduler overwrites with a constant 0.033 at every step.
SCHEDULED_WEIGHT_DECAY = 0.033
_COMMON = {"hf_path": None, "arch": None, "dir": None, "name": "default", "data_paths": None,
           "wandb_project": None, "wandb_entity": None, "wandb_exp_name": None, "precision_config": "bf16_mixed",
           "account_for_embedding_in_pipeline_split": False, "account_for_loss_in_pipeline_split": False,
           "lr_decay_iters": None, "micro_batch_size": 1, "scheduler.weight_decay_incr_style": "constant",
           "scheduler.start_weight_decay": SCHEDULED_WEIGHT_DECAY, "scheduler.end_weight_decay": SCHEDULED_WEIGHT_DECAY,
           "train.eval_iters": 32}


def layout(tp: int = 1, pp: int = 1, vp: int | None = None, cp: int = 1, sp: bool = False) -> dict:
    return dict(zip(_LAYOUT, (tp, pp, vp, cp, sp)))


PRETRAIN = {**_COMMON, **layout(), "mock": False, "tokenizer": None, "train_iters": 1168251, "global_batch_size": 512,
            "seq_length": 8192, "lr": 3e-4, "min_lr": 3e-5, "adam_eps": 1e-8, "lr_warmup_iters": 2000,
            "eval_interval": 2000, "save_interval": 500, "logger.log_interval": 10, "train.seed": 1234}
# None: chosen by the build (seq_length 4096 packed, 2048 not; global_batch_size recipe.global_batch_size[packed]).
FINETUNE = {**_COMMON, **layout(), "pretrained_checkpoint": None, "peft": "lora", "packed_sequence": True,
            "train_iters": 1000, "global_batch_size": None, "seq_length": None, "eval_interval": 30,
            "save_interval": 50, "finetune_lr": None, "min_lr": 0.0, "lr_warmup_iters": 50, "train.seed": 5678,
            "logger.log_interval": 1,
            "recipe.lora": {}, "recipe.full": {},  # the differences of adapter and of full training (layouts)
            "recipe.lr": (5e-6, 1e-4),  # finetune_lr of full and of adapter training
            "recipe.peft": {},  # LoRA / DoRA settings besides minibridge.peft's defaults
            "recipe.global_batch_size": (128, 8)}  # unpacked, packed
# What every CPU-sized debug recipe sets on top of its family's: fp32 (exact comparisons), short runs, small batches.
DEBUG = {"model.make_vocab_size_divisible_by": 1, "dataset.num_workers": 0, "train.eval_iters": 2,
         "logger.log_interval": 1, "train_iters": 20, "global_batch_size": 8, "micro_batch_size": 2, "seq_length": 256,
         "lr_warmup_iters": 2, "eval_interval": 10, "save_interval": 10, "precision_config": "fp32"}


def debug_pretrain(arch: ModelConfig, name: str) -> dict:
    """A debug pretraining recipe of `arch` (its vocabulary: architectures.debug_vocabulary)."""
    return {**DEBUG, "recipe.architecture": functools.partial(debug_vocabulary, arch), "name": name,
            "vocab_size": None, "lr": 1e-3, "min_lr": 1e-4}


def debug_finetune(arch: ModelConfig, name: str, other_recipe: str) -> dict:
    """A debug fine-tuning recipe of `arch` or of its pretrained checkpoint (architectures.checkpoint_or)."""
    return {**DEBUG, "recipe.architecture": functools.partial(checkpoint_or, arch, other_recipe),
            "recipe.lr": (1e-4, 1e-3), "name": name, "packed_sequence": False}


def recipe(base, *changes: dict, **more) -> Callable[[Callable], Callable[..., ConfigContainer]]:
    """A decorator making a recipe of `base` (a base's settings, or another recipe) plus changes, later ones
    winning; the decorated function gives its name and docstring, its body is not run."""
    settings = {**getattr(base, "settings", base)}
    for change in (*changes, more):
        settings.update(change)

    def wrap(stub: Callable) -> Callable[..., ConfigContainer]:
        def made(**kwargs) -> ConfigContainer:
            return build(settings, kwargs, stub.__name__)

        functools.update_wrapper(made, stub).settings = settings
        made.arguments = tuple(key for key in settings if "." not in key)  # the keyword arguments it takes
        return made

    return wrap


def build(settings: dict, kwargs: dict, name: str) -> ConfigContainer:
    """The recipe `name`: `settings` with the caller's keyword arguments (Megatron Bridge's) over them."""
    unknown = [key for key in kwargs if key not in settings or "." in key]
    if unknown:
        raise TypeError(f"{name}() got an unexpected keyword argument {unknown[0]!r}")
    s = {**settings, **kwargs, "recipe.name": name}
    if "peft" in s:  # fine-tuning: full or adapter training, each with its layout and learning rate
        peft = peft_config(s["peft"], **s["recipe.peft"])  # (the changes apply to a scheme's name only)
        s = {**s, **s["recipe.lora" if peft else "recipe.full"], **kwargs, "peft": peft}
        if s["finetune_lr"] is None:
            s["finetune_lr"] = s["recipe.lr"][0 if peft is None else 1]
    return container(s)


def _architecture(s: dict):
    if "recipe.architecture" in s:
        return s["recipe.architecture"](s)
    builtin = s["arch"] or architecture(s["hf_path"])
    return finetune_architecture(builtin, s.get("pretrained_checkpoint"), s["recipe.name"]) if "peft" in s else builtin


def container(s: dict) -> ConfigContainer:
    """One ConfigContainer from a recipe's merged settings."""
    if not isinstance(s["precision_config"], str):
        raise ConfigError(f"precision_config={s['precision_config']!r}: expected a mixed-precision recipe name "
                          f"such as 'bf16_mixed' or 'fp32'")
    finetune, arch = "peft" in s, _architecture(s)
    if finetune:
        packed = s["packed_sequence"]
        s["seq_length"] = s["seq_length"] or (4096 if packed else 2048)  # SQuAD fits 2k unpacked
        s["global_batch_size"] = s["global_batch_size"] or s["recipe.global_batch_size"][packed]
        s["lr"] = s["finetune_lr"]
        if s.get("recipe.decay_to_end") and s["lr_decay_iters"] is None:
            s["lr_decay_iters"] = s["train_iters"]
    elif s["seq_length"] > arch.max_position_embeddings:
        # Pretraining from scratch at a longer context (the 16k/64k/128k recipes): the model being made
        # is trained for seq_length positions, as Megatron Bridge's providers take them from seq_length.
        arch = dataclasses.replace(arch, max_position_embeddings=s["seq_length"])
    paths, weights = split_blend(s["data_paths"])
    kind = "mock" if s.get("mock") else dataset_kind(paths, finetune)
    save = checkpoint_dir(s["dir"], s["name"])
    changes = [(KWARGS[key], value) for key, value in s.items() if key in KWARGS]
    changes += [("dataset.kind", kind), ("dataset.data_paths", paths), ("dataset.blend_weights", weights),
                ("dataset.preset", FINETUNE_DATASET if kind == "hf" else None), ("checkpoint.save", save),
                ("checkpoint.load", save), ("optimizer.use_distributed_optimizer", s.get("peft") is None)]
    if s.get("tokenizer") is None:  # an HF folder carries its tokenizer
        changes.append(("dataset.tokenizer", checkpoint_tokenizer(s.get("pretrained_checkpoint"))))
    changes += [(key, value) for key, value in s.items() if "." in key and not key.startswith("recipe.")]
    cfg = apply_values(ConfigContainer(model=ModelSettings(config=arch)), changes)
    cfg.peft = s.get("peft")  # the caller's PeftConfig itself, when it passed one
    return cfg


def checkpoint_dir(dir: str | None, name: str) -> str:
    """{dir}/{name}/checkpoints as Megatron Bridge lays it out; without `dir`: $SAVE_DIR, else
    ./nemo_experiments (Megatron Bridge's default)."""
    base = dir or os.environ.get("SAVE_DIR") or os.path.join(os.getcwd(), "nemo_experiments")
    return os.path.join(base, name, "checkpoints")


def split_blend(data_paths: list[str] | None) -> tuple[list[str], list[float] | None]:
    """Megatron's blend list: ["a", "b"] or weights interleaved, ["0.3", "a", "0.7", "b"]."""
    paths = [str(p) for p in data_paths or []]
    if not paths or not _is_number(paths[0]):
        return paths, None
    if len(paths) % 2 or not all(_is_number(w) for w in paths[::2]):
        raise ConfigError(f"data_paths={paths}: a weighted blend alternates weight and path, "
                          f"e.g. ['0.3', 'a', '0.7', 'b']")
    return paths[1::2], [float(w) for w in paths[::2]]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def dataset_kind(paths: list[str], finetune: bool) -> str:
    """mock (pretraining without data, as Megatron Bridge), hf (fine-tuning without data: SQuAD), sft, jsonl
    or indexed."""
    if not paths:
        return "hf" if finetune else "mock"
    if finetune:
        return "sft"
    return "jsonl" if all(p.endswith((".jsonl", ".json")) for p in paths) else "indexed"


def peft_config(peft, **changes) -> PeftConfig | None:
    """peft argument of a finetune recipe: "lora", "dora", None / "none" (full training) or a PeftConfig."""
    if peft is None or isinstance(peft, PeftConfig):
        return peft
    if isinstance(peft, str) and peft.lower() == "none":
        return None
    if not isinstance(peft, str):
        raise ConfigError(f"peft={peft!r}: expected 'lora', 'dora', None or a PeftConfig")
    return PeftConfig.default(peft, **changes)


def summary(c: ConfigContainer) -> str:
    """One line: TP/PP/VP/CP/SP, sequence length and global batch."""
    m = c.model
    return (f"TP={m.tensor_model_parallel_size} PP={m.pipeline_model_parallel_size} "
            f"VP={m.virtual_pipeline_model_parallel_size or '-'} CP={m.context_parallel_size} "
            f"SP={'on' if m.sequence_parallel else 'off'} seq={m.seq_length} gbs={c.train.global_batch_size}")


def aliases(finetune: Callable[..., ConfigContainer]) -> tuple[Callable[..., ConfigContainer], ...]:
    """Megatron Bridge 0.6's names of `<model>_finetune_config`: `<model>_sft_config` (full training: peft=None)
    and `<model>_peft_config(peft_scheme="lora"|"dora")` (adapters). One recipe, three names, the same defaults."""
    stem = finetune.__name__.removesuffix("_finetune_config")
    sft, peft, takes = f"{stem}_sft_config", f"{stem}_peft_config", tuple(k for k in finetune.arguments if k != "peft")

    def full(**kwargs) -> ConfigContainer:
        if "peft" in kwargs or "peft_scheme" in kwargs:
            raise ConfigError(f"{sft} is full fine-tuning and takes no peft / peft_scheme; for adapters use "
                              f"{peft}(peft_scheme='lora')")
        return finetune(**kwargs, peft=None)

    def adapters(peft_scheme="lora", **kwargs) -> ConfigContainer:
        if "peft" in kwargs:
            raise ConfigError(f"{peft} takes peft_scheme= ('lora', 'dora' or a PeftConfig), not peft=")
        if peft_config(peft_scheme) is None:
            raise ConfigError(f"{peft}(peft_scheme={peft_scheme!r}): expected 'lora', 'dora' or a PeftConfig; "
                              f"for full fine-tuning use {sft}")
        return finetune(**kwargs, peft=peft_scheme)

    first = (finetune.__doc__ or "").strip().splitlines()[0].split(":")[0]
    for made, name, argument, trains, arguments in (
            (full, sft, "peft=None", "full (all weights)", takes),
            (adapters, peft, "peft=peft_scheme", "LoRA (default) or DoRA adapters", (*takes, "peft_scheme"))):
        made.__name__ = made.__qualname__ = name
        made.__doc__ = f"{first}, {trains}: {finetune.__name__}({argument}) under its Megatron Bridge 0.6 name."
        made.arguments, made.alias_of = arguments, (finetune.__name__, argument)
    return full, adapters
