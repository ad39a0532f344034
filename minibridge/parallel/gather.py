"""Whole tensors of a sharded model, on every rank: gathered over tensor-parallel ranks and, under
pipeline parallelism, broadcast from the pipeline rank whose stage holds them (exports, inspection)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..models import ModelChunks, whole_model_shapes
from .pipeline import layout_stages
from .sharding import gather_full


def full_tensor(chunks: ModelChunks, name: str, param: torch.Tensor) -> torch.Tensor:
    """The whole tensor of parameter `name`, gathered over tensor-parallel ranks when sharded."""
    spec = chunks.specs.get(name)
    if spec is None or chunks.dims is None:
        return param.detach()
    return gather_full(param.detach(), spec, chunks.dims.tp_group)


def pipeline_owner(name: str, config, parallel_config) -> int:
    """The pipeline rank holding parameter `name` (the first stage's copy of a tied embedding)."""
    pp, vp = parallel_config.pp, parallel_config.vp
    stages = layout_stages(config.num_layers, parallel_config)
    if name.startswith("layers."):
        layer = int(name.split(".")[1])
        stage = next(s for s, layers in enumerate(stages) if layer in layers)
    else:
        stage = 0 if name.startswith("embed_tokens.") else pp * vp - 1
    return stage % pp


def full_parameters(chunks: ModelChunks):
    """(name, full tensor) for every parameter of the whole model, in the whole model's order, on
    every rank (collective under a parallel layout: every rank must iterate to the end)."""
    dims = chunks.dims
    if dims is None or dims.config.pp == 1:
        for name, param in chunks[0].named_parameters():
            yield name, full_tensor(chunks, name, param)
        return
    local = {}
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            if name not in local or chunk.is_first:
                local[name] = param
    dtype = next(iter(local.values())).dtype
    ranks = dist.get_process_group_ranks(dims.pp_group)
    for name, shape in whole_model_shapes(chunks.config).items():
        owner = pipeline_owner(name, chunks.config, dims.config)
        if dims.pp_rank == owner:
            tensor = full_tensor(chunks, name, local[name]).contiguous()
        else:
            tensor = torch.empty(shape, dtype=dtype, device=dims.device)
        dist.broadcast(tensor, src=ranks[owner], group=dims.pp_group)
        yield name, tensor


def parameter_inventory(chunks: ModelChunks) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, full shape, dtype) of every parameter of the whole model, in order, whatever this rank
    holds of it (a pipeline rank holds only some)."""
    dtypes = dict((n, p.dtype) for n, p in chunks.named_parameters())
    default = next(iter(dtypes.values()))
    return [(n, shape, dtypes.get(n, default)) for n, shape in whole_model_shapes(chunks.config).items()]
