"""Megatron-Core `torch_dist` checkpoints as a source of minibridge parameters (megatron.py reads the
folder safely; megatron_names.py says where each parameter sits). Conversion, training
(`--pretrained-checkpoint`, through `minibridge.loading.checkpoints.load_megatron`), generation and evaluation
all read through `MegatronWeights.tensor`.

`MegatronWeights(folder, config).tensor(name)` returns one minibridge parameter, full size, reading only
the chunk of its layer: DCP reads the overlap of a block placed at offset (i, 0, ...) of the stacked key,
so memory stays bounded by one layer's slice (a 405B stacked linear_qkv is ~76 GB whole). The layer slice
last read is kept, so q, k and v (gate and up) cost one read.

The architecture comes from Megatron Bridge's run_config.yaml (bridge/megatron_config.py), or, for
Megatron-LM runs that have none, from the HF folder given with the checkpoint.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from .blocks import BlockLoadPlanner, ShardedBlock
from .megatron import MegatronReader
from ..errors import CheckpointMismatchError, MissingTensorError
from ..models import ModelChunks, ModelConfig, whole_model_shapes
from ..parallel.fsdp import fill_local
from .megatron_names import ALIASES, LAYER_PREFIX, TABLES, split_qkv


def _rows(family: str):
    return [(re.compile("^" + re.escape(local).replace(r"\{i\}", r"(?P<i>\d+)") + "$"), key, kind)
            for local, key, kind in TABLES[family]]


class MegatronWeights:
    def __init__(self, folder: str | Path, config: ModelConfig):
        self.folder, self.config = Path(folder), config
        self.reader = MegatronReader(str(folder))
        self.stored = self.reader.read_metadata().state_dict_metadata
        self.rows = _rows(config.family)
        self.shapes = whole_model_shapes(config)
        # the stored dtype (a Megatron model has one, params_dtype): a model built from it defaults to it
        self.dtype = next((m.properties.dtype for m in self.stored.values() if hasattr(m, "properties")),
                          torch.float32)
        self._slice: tuple | None = None  # (key, layer, tensor) last read

    def where(self, name: str) -> tuple[str, str, int | None]:
        """(stored key, kind, layer index within a stacked key or None) of a minibridge parameter."""
        for pattern, key, kind in self.rows:
            m = pattern.match(name)
            if m is None:
                continue
            i = m.groupdict().get("i")
            if i is None:
                return key, kind, None
            suffix = key[len(LAYER_PREFIX):]
            for candidate in (suffix, ALIASES.get(suffix)):
                if candidate is None:
                    continue
                if LAYER_PREFIX + candidate in self.stored:
                    return LAYER_PREFIX + candidate, kind, int(i)
                if f"{LAYER_PREFIX}{i}.{candidate}" in self.stored:
                    return f"{LAYER_PREFIX}{i}.{candidate}", kind, None
            return key, kind, int(i)
        raise KeyError(f"parameter {name!r} has no Megatron name in the {self.config.family} table")

    def check(self, names) -> None:
        """Every parameter's key is stored, or one line naming what is missing and what was found."""
        missing = sorted({self.where(n)[0] for n in names} - set(self.stored))
        if missing:
            found = sorted(k for k in self.stored if "_extra_state" not in k and not k.startswith("common_state"))
            raise MissingTensorError(f"{self.folder}: Megatron checkpoint lacks {missing[:4]}"
                                     f"{' ...' if len(missing) > 4 else ''}; it holds {found[:6]}"
                                     f"{' ...' if len(found) > 6 else ''} (another model family or layout?)")

    def _read(self, key: str, layer: int | None, rows: int | None = None) -> torch.Tensor:
        if self._slice is not None and self._slice[:2] == (key, layer):
            return self._slice[2]
        meta = self.stored[key]
        size = tuple(meta.size)
        shape = size[1:] if layer is not None else ((min(rows, size[0]),) + size[1:] if rows else size)
        local = torch.empty((1, *shape) if layer is not None else shape, dtype=meta.properties.dtype)
        offsets = (layer,) + (0,) * len(shape) if layer is not None else (0,) * len(shape)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is .*")
            dcp.load({key: ShardedBlock(local, offsets, size)}, storage_reader=self.reader,
                     planner=BlockLoadPlanner(), no_dist=True)
        out = local[0] if layer is not None else local
        if layer is not None:
            self._slice = (key, layer, out)
        return out

    def tensor(self, name: str) -> torch.Tensor:
        """Parameter `name`, full size, checked against the shape the configuration gives it."""
        key, kind, layer = self.where(name)
        c = self.config
        if kind == "vocab":
            value = self._read(key, layer, rows=c.vocab_size)
        else:
            value = self._read(key, layer)
        if kind in ("q", "k", "v"):
            value = split_qkv(value, c, kind) if value.shape[0] % (c.num_kv_heads * c.head_dim) == 0 else value
        elif kind in ("gate", "up"):
            half = value.shape[0] // 2
            value = value[:half] if kind == "gate" else value[half:]
        if tuple(value.shape) != tuple(self.shapes[name]):
            stored = list(self.stored[key].size)
            raise CheckpointMismatchError(f"{self.folder}: {key} has shape {stored}, which does not hold {name!r} of "
                                          f"shape {list(self.shapes[name])} (a checkpoint of another model?)")
        return value.clone()


@torch.no_grad()
def load_megatron_weights(chunks: ModelChunks, weights: MegatronWeights) -> None:
    """Fill this rank's `chunks` (any layout: TP blocks, pipeline stages, FSDP2 shards) from a Megatron
    checkpoint, one parameter (one layer's slice of a stacked key) in memory at a time. LoRA/DoRA adapters
    are not in a Megatron checkpoint: hide them first (peft.adapters_hidden)."""
    specs = chunks.specs
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            fill_local(param, weights.tensor(name), specs.get(name))


def megatron_parameters(folder, config: ModelConfig):
    """(minibridge name, shape) of every parameter, checked to be stored; and the weights' source."""
    weights = MegatronWeights(folder, config)
    shapes = whole_model_shapes(config)
    weights.check(shapes)
    return shapes, weights
