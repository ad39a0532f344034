"""Per-rank slices of HF tensors: read only this rank's block of a safetensors tensor on import (the
whole tensors an export needs are gathered by minibridge.parallel.gather)."""

from __future__ import annotations

import torch
from safetensors import safe_open

from ..parallel.sharding import ShardSpec
from .safetensors_io import TensorInfo, read_tensor


def read_block(info: TensorInfo, out: torch.Tensor, spec: ShardSpec | None, rows: tuple[int, int] | None = None) -> None:
    """Fill `out` with this rank's block of the tensor described by `info`: its TP block under `spec`,
    or with `rows` = (first, last) only those rows (dim 0) of the block (an FSDP2 dp shard of it)."""
    split = spec is not None and spec.dim is not None and spec.size > 1
    if rows is None and not split:
        read_tensor(info, out=out)
        return
    first, last = rows if rows is not None else (0, out.shape[0])
    if last == first:
        return  # an empty dp shard (fewer rows than dp ranks)
    if not split:
        read_tensor(info, out=out, rows=slice(first, last))
        return
    start, stop = spec.local_range()
    if spec.dim == 0:
        # Contiguous rows: one direct read. Vocabulary padding rows (past the real vocab) stay zero.
        first, last = start + first, start + last
        real = max(first, min(last, info.shape[0]))
        if real > first:
            read_tensor(info, out=out[: real - first], rows=slice(first, real))
        if real < last:
            out[real - first :].zero_()
        return
    # Columns (row-parallel weights): strided, so let safetensors' slice reader pick the bytes.
    with safe_open(info.path, "pt") as f:
        block = f.get_slice(info.name)[first:last, start:stop]
    with torch.no_grad():
        out.copy_(block)

