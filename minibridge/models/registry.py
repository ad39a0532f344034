"""The model families, each registered once by its own module (models/llama.py, models/gemma3.py).

A family module defines its blocks and model class and calls `register(Family(...))` with what the
other passes need to know about it, as data: the parallel style of each of its parameters (the TP
plan read by minibridge.parallel.plan). The HF side of a family (architecture names, config keys,
weight names) is registered the same way by its bridge module (minibridge/bridge/families/).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class Family:
    name: str
    model_class: type
    # (module-name regex, style) pairs, first match wins; styles: vocab, column, kv, row, partial
    # (replicated, gradient summed over tp), sequence (replicated, summed under sequence parallelism).
    tp_plan: tuple[tuple[str, str], ...] = field(default=())


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnsupportedModelError(f"model family {name!r} is not supported; expected one of {sorted(FAMILIES)}") \
            from None


def model_class(config) -> type:
    return family(config.family).model_class
