"""Step one of the one way a model is made: the single-device model (or one pipeline stage of it),
built on the meta device, where construction is free.

    build -> parallelize -> load       (minibridge.parallel.parallelize.build_model runs all three)

`build_on_meta` is the only place a model is constructed: the bridge, the checkpoint importer, the
trainer and generation all start here, then shard the meta model for their layout and allocate it
once (each rank only its blocks), then fill it from a checkpoint or initialise it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .causal_lm import CausalLM
from .config import ModelConfig
from .registry import model_class


@dataclass(frozen=True)
class Stage:
    """The part of the model one chunk holds: `layers` (global indices), with the embedding when
    `first` and the final norm and output layer when `last`."""

    layers: range
    first: bool = True
    last: bool = True

    @classmethod
    def whole(cls, config: ModelConfig) -> "Stage":
        return cls(range(config.num_layers))


@contextlib.contextmanager
def _no_default_init():
    """nn.Linear / nn.Embedding initialise themselves on construction; on meta that is wasted work
    (and the first random op on meta costs ~1 s of imports). Weights are loaded or reset afterwards."""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


def build_on_meta(config: ModelConfig, stage: Stage | None = None) -> CausalLM:
    """The model of `config` (or its pipeline `stage`), parameters on the meta device, uninitialised."""
    stage = stage or Stage.whole(config)
    with torch.device("meta"), _no_default_init():
        return model_class(config)(config, stage.layers, stage.first, stage.last)


def whole_model_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """name -> full shape of every parameter of the whole single-device model, in model order."""
    return {name: tuple(p.shape) for name, p in build_on_meta(config).named_parameters()}


def parameter_count(config: ModelConfig) -> int:
    return sum(p.numel() for p in build_on_meta(config).parameters())
