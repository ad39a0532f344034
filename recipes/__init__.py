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
from .common import layout

_LLAMA = [
    "llama32_1b_pretrain_config", "llama32_3b_pretrain_config", "llama3_8b_pretrain_config",
    "llama3_8b_16k_pretrain_config", "llama3_8b_64k_pretrain_config", "llama3_8b_128k_pretrain_config",
    "llama3_8b_low_precision_pretrain_config", "llama3_70b_pretrain_config", "llama3_70b_16k_pretrain_config",
    "llama3_70b_64k_pretrain_config", "llama31_8b_pretrain_config", "llama31_70b_pretrain_config",
    "llama31_405b_pretrain_config", "llama32_1b_finetune_config", "llama32_3b_finetune_config",
    "llama3_8b_finetune_config", "llama31_8b_finetune_config", "llama3_70b_finetune_config",
    "llama31_70b_finetune_config", "llama31_405b_finetune_config", "llama3_debug_pretrain_config",
    "llama3_debug_finetune_config",
]
_GEMMA = ["gemma3_1b_pretrain_config", "gemma3_1b_finetune_config", "gemma3_debug_pretrain_config",
          "gemma3_debug_finetune_config"]

RECIPES: dict[str, Callable[..., ConfigContainer]] = {
    **{name: getattr(llama, name) for name in _LLAMA},
    **{name: getattr(gemma, name) for name in _GEMMA},
}


def get_recipe(name: str) -> Callable[..., ConfigContainer]:
    if name in RECIPES:
        return RECIPES[name]
    close = difflib.get_close_matches(name, list(RECIPES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `python -m minibridge.train --list` shows them"
    raise ConfigError(f"unknown recipe {name!r}{hint}")


def list_recipes() -> list[tuple[str, str]]:
    """(name, one line: what it trains and its parallel layout) for every recipe, in registry order."""
    out = []
    for name, fn in RECIPES.items():
        summary = (fn.__doc__ or "").strip().splitlines()[0].rstrip(".")
        if name.endswith("finetune_config"):
            text = f"{summary}. LoRA: {layout(fn())}; full: {layout(fn(peft=None))}"
        else:
            text = f"{summary}. {layout(fn())}"
        out.append((name, text))
    return out


def build_config(name: str, pretrained_checkpoint: str | None = None, peft_scheme: str | None = None,
                 overrides: list[str] = (), validate: bool = True) -> ConfigContainer:
    """Recipe `name`, given the command line's --pretrained-checkpoint / --peft_scheme and key=value overrides.

    A finetune recipe gets both as its `pretrained_checkpoint` / `peft` arguments (so it reads the checkpoint's
    architecture and picks the layout and lr of LoRA or full training); a pretrain recipe gets them set on
    the result (continued pretraining, or adapters on top of it). Overrides come last, then validate().
    """
    fn = get_recipe(name)
    kwargs = {}
    if pretrained_checkpoint is not None and "finetune" in name:
        kwargs["pretrained_checkpoint"] = pretrained_checkpoint
    if peft_scheme is not None and "finetune" in name:
        kwargs["peft"] = None if peft_scheme == "none" else peft_scheme
    cfg = fn(**kwargs)
    if pretrained_checkpoint is not None and "pretrained_checkpoint" not in kwargs:
        cfg.checkpoint.pretrained_checkpoint = pretrained_checkpoint
    if peft_scheme is not None and "peft" not in kwargs:
        cfg.peft = None if peft_scheme == "none" else PeftConfig.default(peft_scheme)
        cfg.optimizer.use_distributed_optimizer = cfg.peft is None
    save, load = cfg.checkpoint.save, cfg.checkpoint.load
    apply_overrides(cfg, list(overrides))
    if load == save and cfg.checkpoint.load == load and cfg.checkpoint.save != save:
        cfg.checkpoint.load = cfg.checkpoint.save  # recipes resume from where they save: keep it so
    return cfg.validate() if validate else cfg


__all__ = ["RECIPES", "build_config", "get_recipe", "list_recipes"]
