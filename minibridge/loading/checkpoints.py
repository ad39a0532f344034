"""The checkpoint loaders: the model weights of a minibridge (DCP) checkpoint, or of a Megatron-Core
`torch_dist` one (Megatron Bridge, Megatron-LM), into chunks made by `build_model`, in any layout.

Optimizer states and RNG states are not read: a run that starts from a checkpoint's weights starts its own
(Megatron's distributed-optimizer buckets are not model weights). LoRA/DoRA adapters attached on meta are in
neither kind of checkpoint of a base model: hide them first (`minibridge.peft.adapters_hidden`).
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import load_checkpoint as load_dcp, resolve_checkpoint
from ..checkpoint.megatron import checkpoint_kind
from ..checkpoint.megatron_weights import load_megatron_weights, megatron_parameters
from ..errors import ConfigError
from ..models import ModelChunks


def load_checkpoint(chunks: ModelChunks, folder: str | Path) -> None:
    """A minibridge checkpoint (a save folder: its latest iteration; or one iteration folder), resharded to
    the layout of `chunks`."""
    load_dcp(resolve_checkpoint(folder), chunks, restore_rng=False)


def load_megatron(chunks: ModelChunks, folder: str | Path) -> None:
    """A Megatron-Core checkpoint (a save folder or one iteration folder), one parameter (one layer's slice
    of a stacked key) in memory at a time; every parameter's key is checked to be stored first."""
    found, kind = checkpoint_kind(folder)
    if kind != "megatron":
        raise ConfigError(f"{found}: a minibridge checkpoint, not a Megatron one: load it with load_checkpoint")
    load_megatron_weights(chunks, megatron_parameters(found, chunks.config)[1])


def load_pretrained(chunks: ModelChunks, source: str | Path) -> None:
    """A checkpoint of either kind (`--pretrained-checkpoint`), its kind read from the folder's marker."""
    if checkpoint_kind(source)[1] == "megatron":
        load_megatron(chunks, source)
    else:
        load_checkpoint(chunks, source)
