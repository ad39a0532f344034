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


def _chunks(model) -> list:
    return model if isinstance(model, (list, tuple)) else [model]


def parameter_inventory(model) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, full shape, dtype) of every parameter of the whole model, in the whole model's order,
    whatever the layout (a pipeline rank holds only some of them)."""
    chunks = _chunks(model)
    dims = getattr(chunks[0], "parallel_dims", None)
    dtype = next(chunks[0].parameters()).dtype
    if dims is None or dims.config.pp == 1:
        return [(n, full_shape(chunks[0], n, p), p.dtype) for n, p in chunks[0].named_parameters()]
    from ..models import model_class
    from .loading import _skip_default_init

    config = chunks[0].config
    with torch.device("meta"), _skip_default_init():
        whole = model_class(config)(config)
    return [(n, tuple(p.shape), dtype) for n, p in whole.named_parameters()]


def _pipeline_owner(name: str, config, parallel_config) -> int:
    """The pipeline rank holding parameter `name` (the first stage's copy of a tied embedding)."""
    from ..parallel.pipeline import layout_stages

    pp, vp = parallel_config.pp, parallel_config.vp
    stages = layout_stages(config.num_layers, parallel_config)
    if name.startswith("layers."):
        layer = int(name.split(".")[1])
        stage = next(s for s, layers in enumerate(stages) if layer in layers)
    else:
        stage = 0 if name.startswith("embed_tokens.") else pp * vp - 1
    return stage % pp


def full_parameters(model):
    """(name, full tensor) for every parameter of the whole model, in order, on every rank: gathered
    over tensor-parallel ranks and, under pipeline parallelism, broadcast from the stage holding it."""
    import torch.distributed as dist

    chunks = _chunks(model)
    dims = getattr(chunks[0], "parallel_dims", None)
    if dims is None or dims.config.pp == 1:
        for name, param in chunks[0].named_parameters():
            yield name, full_tensor(chunks[0], name, param)
        return
    local = {}
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            if name not in local or chunk.is_first:
                local[name] = (chunk, param)
    ranks = dist.get_process_group_ranks(dims.pp_group)
    config = chunks[0].config
    for name, shape, dtype in parameter_inventory(chunks):
        owner = _pipeline_owner(name, config, dims.config)
        if dims.pp_rank == owner:
            tensor = full_tensor(local[name][0], name, local[name][1]).contiguous()
        else:
            tensor = torch.empty(shape, dtype=dtype, device=dims.device)
        dist.broadcast(tensor, src=ranks[owner], group=dims.pp_group)
        yield name, tensor
