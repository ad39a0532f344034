"""Per-rank slices of HF tensors: read only this rank's block on import, gather full tensors on export."""

from __future__ import annotations

import torch
from safetensors import safe_open

from ..parallel.sharding import ShardSpec, gather_full
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


def full_tensor(model, name: str, param: torch.Tensor) -> torch.Tensor:
    """The whole tensor of parameter `name`, gathered over tensor-parallel ranks when sharded."""
    spec = getattr(model, "tp_specs", {}).get(name)
    dims = getattr(model, "parallel_dims", None)
    if spec is None or dims is None:
        return param.detach()
    return gather_full(param.detach(), spec, dims.tp_group)


def full_shape(model, name: str, param: torch.Tensor) -> tuple[int, ...]:
    spec = getattr(model, "tp_specs", {}).get(name)
    return tuple(spec.full_shape) if spec is not None else tuple(param.shape)
