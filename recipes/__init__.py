"""Named training recipes (functions returning a ConfigContainer), installed as `minibridge.recipes`.

    cfg = llama3_8b_pretrain_config(name="run1", dir="/results", train_iters=1000, global_batch_size=64)
    cfg = build_config("llama3_debug_pretrain_config", overrides=["train.train_iters=5"])  # as the command line

Recipes only build dataclasses: nothing is downloaded or allocated, so even the 405B ones build on a laptop.
"""

from __future__ import annotations

import difflib
from typing import Callable

from minibridge.training.config import ConfigContainer, ConfigError
from minibridge.training.hydra_grammar import configure

from . import gemma, llama
from .common import summary as layout_summary

# Every recipe, in the order its module defines it (`--list` prints them so).
RECIPES: dict[str, Callable[..., ConfigContainer]] = {
    name: fn for module in (llama, gemma) for name, fn in vars(module).items() if name.endswith("_config")
}
# Megatron Bridge 0.6's names -> (the recipe they are, the argument they fix): one recipe, one set of defaults.
ALIASES: dict[str, tuple[str, str]] = {name: fn.alias_of for name, fn in RECIPES.items() if hasattr(fn, "alias_of")}


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
    return [(name, _line(name, fn)) for name, fn in RECIPES.items()]


def _line(name: str, fn: Callable[..., ConfigContainer]) -> str:
    summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split()).rstrip(".")  # the first paragraph
    if name in ALIASES:
        target, argument = ALIASES[name]
        return f"alias of {target}({argument}). {summary.split(':')[0]}. {layout_summary(fn())}"
    if "peft" in getattr(fn, "arguments", ()):
        aliases = [a for a, (t, _) in ALIASES.items() if t == name]
        known = f" (also named {' / '.join(aliases)})" if aliases else ""
        return f"{summary}{known}. LoRA: {layout_summary(fn())}; full: {layout_summary(fn(peft=None))}"
    return f"{summary}. {layout_summary(fn())}"


def build_config(name: str, pretrained_checkpoint: str | None = None, peft_scheme: str | None = None,
                 overrides: list[str] = (), validate: bool = True) -> ConfigContainer:
    """Recipe `name` with the command line's --pretrained-checkpoint / --peft_scheme and overrides (Hydra's grammar
    as `python -m minibridge.train` takes it: `key=value`, `~key`, `${a.b}`) applied in order, then validate()."""
    config, changes = recipe_config(name, pretrained_checkpoint, peft_scheme)
    configure(config, [*changes, *overrides])
    return config.validate() if validate else config


def recipe_config(name: str, pretrained_checkpoint: str | None = None,
                  peft_scheme: str | None = None) -> tuple[ConfigContainer, list[tuple[str, object]]]:
    """(recipe `name` built once, the changes the command line's --pretrained-checkpoint / --peft_scheme make).

    A recipe taking them as keyword arguments (fine-tuning: it reads the checkpoint's architecture and picks the
    layout and lr of LoRA or full training) gets them so; for any other (pretraining: continued pretraining, or
    adapters on top of it) they are changes to apply with the overrides."""
    fn = get_recipe(name)
    # The keyword arguments of a @recipe; the hand-written low-precision one is pretraining and takes neither.
    takes, kwargs, changes = getattr(fn, "arguments", ()), {}, []
    if pretrained_checkpoint is not None:
        if "pretrained_checkpoint" in takes:
            kwargs["pretrained_checkpoint"] = pretrained_checkpoint
        else:
            changes.append(("checkpoint.pretrained_checkpoint", pretrained_checkpoint))
    choice = next((arg for arg in ("peft", "peft_scheme") if arg in takes), None)  # how fine-tuning takes it
    if peft_scheme is not None and choice:
        kwargs[choice] = peft_scheme  # peft="none": full training; peft_scheme="none" is refused (adapters only)
    elif peft_scheme not in (None, "none") and "pretrained_checkpoint" in takes:  # full fine-tuning and nothing else
        raise ConfigError(f"--peft_scheme {peft_scheme} with {name}, which is full fine-tuning; use "
                          f"{name.replace('_sft_config', '_peft_config')} for adapters")
    elif peft_scheme is not None and "pretrained_checkpoint" not in takes:
        changes += [("peft", peft_scheme), ("optimizer.use_distributed_optimizer", peft_scheme == "none")]
    return fn(**kwargs), changes


__all__ = ["ALIASES", "RECIPES", "build_config", "get_recipe", "list_recipes", "recipe_config"]
