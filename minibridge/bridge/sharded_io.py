"""Per-rank slices of HF tensors: read only this rank's block of a safetensors tensor on import (the
whole tensors an export needs are gathered by minibridge.parallel.gather)."""

from __future__ import annotations

import torch
from safetensors import safe_open

from ..parallel.sharding import ShardSpec
from .safetensors_io import TensorInfo, read_tensor


def read_block(info: TensorInfo, out: torch.Tensor, spec: ShardSpec | None) -> None:
    """Fill `out` with this rank's block of the tensor described by `info`."""
    if spec is None or spec.dim is None or spec.size == 1:
        read_tensor(info, out=out)
        return
    start, stop = spec.local_range()
    if spec.dim == 0:
        # Contiguous rows: one direct read. Vocabulary padding rows (past the real vocab) stay zero.
        real_stop = max(start, min(stop, info.shape[0]))
        if real_stop > start:
            read_tensor(info, out=out[: real_stop - start], rows=slice(start, real_stop))
        if real_stop < stop:
            out[real_stop - start :].zero_()
        return
    # Columns (row-parallel weights): strided, so let safetensors' slice reader pick the bytes.
    with safe_open(info.path, "pt") as f:
        block = f.get_slice(info.name)[:, start:stop]
    with torch.no_grad():
        out.copy_(block)
