"""Named training recipes (functions returning a ConfigContainer), installed as `minibridge.recipes`.

    from minibridge.recipes.llama import llama3_8b_pretrain_config
    cfg = llama3_8b_pretrain_config(name="run1", dir="/results", train_iters=1000, global_batch_size=64)

    from minibridge.recipes import build_config          # what `python -m minibridge.train` does
    cfg = build_config("llama3_debug_pretrain_config", overrides=["train.train_iters=5"])

Recipes only build dataclasses: nothing is downloaded or allocated, so even the 405B ones build on a laptop.
"""

from __future__ import annotations

import difflib
from typing import Callable

from minibridge.training.config import ConfigContainer, ConfigError, PeftConfig
from minibridge.training.overrides import apply_overrides

from . import gemma, llama
from .common import FINETUNE_DATASET, dataset_kind, summary as layout_summary

_LLAMA = [
    "llama32_1b_pretrain_config", "llama32_3b_pretrain_config", "llama3_8b_pretrain_config",
    "llama3_8b_16k_pretrain_config", "llama3_8b_64k_pretrain_config", "llama3_8b_128k_pretrain_config",
    "llama3_8b_low_precision_pretrain_config", "llama3_70b_pretrain_config", "llama3_70b_pretrain_deterministic_config",
    "llama3_70b_16k_pretrain_config", "llama3_70b_64k_pretrain_config", "llama31_8b_pretrain_config",
    "llama31_70b_pretrain_config", "llama31_405b_pretrain_config", "llama31_405b_pretrain_deterministic_config",
]
_LLAMA_FINETUNED = ["llama32_1b", "llama32_3b", "llama3_8b", "llama31_8b", "llama3_70b", "llama31_70b", "llama31_405b"]
_LLAMA += [f"{model}_{kind}_config" for model in _LLAMA_FINETUNED for kind in ("finetune", "sft", "peft")]
_LLAMA += ["llama3_debug_pretrain_config", "llama3_debug_finetune_config"]
_GEMMA = ["gemma3_1b_pretrain_config", "gemma3_1b_finetune_config", "gemma3_1b_sft_config", "gemma3_1b_peft_config",
          "gemma3_debug_pretrain_config", "gemma3_debug_finetune_config"]

RECIPES: dict[str, Callable[..., ConfigContainer]] = {
    **{name: getattr(llama, name) for name in _LLAMA},
    **{name: getattr(gemma, name) for name in _GEMMA},
}

# Megatron Bridge 0.6's names -> (the recipe they are, the argument they fix): one recipe, one set of defaults.
ALIASES: dict[str, tuple[str, str]] = {
    **{f"{model}_sft_config": (f"{model}_finetune_config", "peft=None") for model in _LLAMA_FINETUNED + ["gemma3_1b"]},
    **{f"{model}_peft_config": (f"{model}_finetune_config", "peft=peft_scheme")
       for model in _LLAMA_FINETUNED + ["gemma3_1b"]},
}
# Full fine-tuning recipes: those that take pretrained_checkpoint (and, but for sft, a PEFT scheme).
FINETUNE_RECIPES = tuple(name for name in RECIPES if name.endswith(("_finetune_config", "_sft_config", "_peft_config")))


def get_recipe(name: str) -> Callable[..., ConfigContainer]:
    if name in RECIPES:
        return RECIPES[name]
    close = difflib.get_close_matches(name, list(RECIPES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `python -m minibridge.train --list` shows them"
    raise ConfigError(f"unknown recipe {name!r}{hint}")


def list_recipes() -> list[tuple[str, str]]:
    """(name, one line: what it trains, its parallel layout, and for an alias which recipe it is) for every
    recipe, in registry order; `python -m minibridge.train --list` prints them. ALIASES holds the same
    relation as data."""
    out = []
    for name, fn in RECIPES.items():
        summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split()).rstrip(".")  # the first paragraph
        if name in ALIASES:
            target, argument = ALIASES[name]
            text = f"alias of {target}({argument}). {summary.split(':')[0]}. {layout_summary(fn())}"
        elif name.endswith("finetune_config"):
            aliases = [a for a, (t, _) in ALIASES.items() if t == name]
            known = f" (also named {' / '.join(aliases)})" if aliases else ""
            text = f"{summary}{known}. LoRA: {layout_summary(fn())}; full: {layout_summary(fn(peft=None))}"
        else:
            text = f"{summary}. {layout_summary(fn())}"
        out.append((name, text))
    return out


def build_config(name: str, pretrained_checkpoint: str | None = None, peft_scheme: str | None = None,
                 overrides: list[str] = (), validate: bool = True) -> ConfigContainer:
    """Recipe `name`, given the command line's --pretrained-checkpoint / --peft_scheme and key=value overrides.

    A finetune / sft / peft recipe gets both as its `pretrained_checkpoint` / `peft` (peft: `peft_scheme`)
    arguments (so it reads the checkpoint's architecture and picks the layout and lr of LoRA or full training);
    a pretrain recipe gets them set on the result (continued pretraining, or adapters on top of it). Overrides
    come last, then validate(); a fine-tuning recipe given `dataset.data_paths` by them reads those (kind sft)
    instead of its SQuAD default.
    """
    fn = get_recipe(name)
    kwargs = {}
    if pretrained_checkpoint is not None and name in FINETUNE_RECIPES:
        kwargs["pretrained_checkpoint"] = pretrained_checkpoint
    if peft_scheme is not None and name.endswith("_sft_config") and peft_scheme != "none":
        raise ConfigError(f"--peft_scheme {peft_scheme} with {name}, which is full fine-tuning; use "
                          f"{name.replace('_sft_config', '_peft_config')} for adapters")
    if peft_scheme is not None and name.endswith("_peft_config"):
        kwargs["peft_scheme"] = peft_scheme  # 'none' is refused there: that recipe trains adapters
    elif peft_scheme is not None and name.endswith("_finetune_config"):
        kwargs["peft"] = None if peft_scheme == "none" else peft_scheme
    cfg = fn(**kwargs)
    if pretrained_checkpoint is not None and "pretrained_checkpoint" not in kwargs:
        cfg.checkpoint.pretrained_checkpoint = pretrained_checkpoint
    if peft_scheme is not None and name not in FINETUNE_RECIPES:
        cfg.peft = None if peft_scheme == "none" else PeftConfig.default(peft_scheme)
        cfg.optimizer.use_distributed_optimizer = cfg.peft is None
    save, load = cfg.checkpoint.save, cfg.checkpoint.load
    apply_overrides(cfg, list(overrides))
    if load == save and cfg.checkpoint.load == load and cfg.checkpoint.save != save:
        cfg.checkpoint.load = cfg.checkpoint.save  # recipes resume from where they save: keep it so
    d = cfg.dataset
    chosen = any(o.lstrip("+").startswith(("dataset.kind=", "dataset.preset=")) for o in overrides)
    if d.kind == "hf" and d.preset == FINETUNE_DATASET and d.data_paths and not chosen:
        d.kind, d.preset = dataset_kind(d.data_paths, finetune=True), None  # data given: not the SQuAD default
    return cfg.validate() if validate else cfg


__all__ = ["ALIASES", "FINETUNE_RECIPES", "RECIPES", "build_config", "get_recipe", "list_recipes"]
