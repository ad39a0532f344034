"""The command line of `python -m minibridge.train`: flags, then `key=value` overrides (overrides.py)."""

from __future__ import annotations

import difflib
from typing import NamedTuple

from .config import ConfigError, choice_message

USAGE = """usage: python -m minibridge.train --recipe NAME [--pretrained-checkpoint DIR] [--peft_scheme lora|dora|none]
                               [key=value ...]
       python -m minibridge.train --list
overrides: train.train_iters=1000 train.global_batch_size=64 optimizer.lr=3e-4 model.tensor_model_parallel_size=2
           model.seq_length=4096 checkpoint.save=DIR checkpoint.save_interval=100 mixed_precision=bf16_mixed ..."""


class CliArgs(NamedTuple):
    recipe: str | None
    pretrained_checkpoint: str | None
    peft_scheme: str | None  # "lora", "dora", "none" (explicitly full training) or None (recipe default)
    overrides: list[str]
    list_recipes: bool  # --list (and -h/--help: print USAGE and the list)


_FLAGS = {"--recipe": "recipe", "--pretrained-checkpoint": "pretrained_checkpoint",
          "--pretrained_checkpoint": "pretrained_checkpoint", "--peft_scheme": "peft_scheme",
          "--peft-scheme": "peft_scheme"}


def parse_cli(argv: list[str]) -> CliArgs:
    """(recipe, pretrained_checkpoint, peft_scheme, overrides, list_flag) from the arguments after the
    program name. Flags take `--flag VALUE` or `--flag=VALUE`; unknown flags raise ConfigError."""
    values = {"recipe": None, "pretrained_checkpoint": None, "peft_scheme": None}
    overrides, listing, i = [], False, 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("--list", "-h", "--help"):
            listing = True
        elif arg.startswith("-"):
            flag, sep, value = arg.partition("=")
            if flag not in _FLAGS:
                close = difflib.get_close_matches(flag, [*_FLAGS, "--list"], n=2, cutoff=0.5)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise ConfigError(f"unknown flag {flag!r}{hint}\n{USAGE}")
            if not sep:
                if i >= len(argv) or argv[i].startswith("--") or "=" in argv[i]:
                    raise ConfigError(f"{flag} needs a value\n{USAGE}")
                value, i = argv[i], i + 1
            values[_FLAGS[flag]] = value
        elif "=" in arg:
            overrides.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r}: expected a --flag or a key=value override\n{USAGE}")
    scheme = values["peft_scheme"]
    if scheme is not None:
        scheme = scheme.lower()
        if scheme not in ("lora", "dora", "none"):
            raise ConfigError(choice_message("--peft_scheme", scheme, ("lora", "dora", "none")))
    if not listing and not values["recipe"]:
        raise ConfigError(f"--recipe NAME is required (see --list)\n{USAGE}")
    return CliArgs(values["recipe"], values["pretrained_checkpoint"], scheme, overrides, listing)
