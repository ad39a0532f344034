"""The tensor-parallel pass: the family's declarative plan (models/registry.py), applied to the
single-device model.

Applied on the meta device before allocation, it shrinks each parameter to this rank's block, records
a `ShardSpec` per parameter name in `model.sharding` (the bridge reads and writes slices with it),
and switches the few modules that need collectives to their parallel subclasses. Parameter names
do not change.
"""

from __future__ import annotations

import functools
import re

import torch
from torch import nn

from ..models import CausalLM
from ..models.common import Attention, GatedMLP
from ..models.registry import family
from .dims import ParallelDims
from .sharding import Sharding, ShardSpec
from .tensor import RowParallelLinear, TensorParallelRegion, VocabParallelEmbedding, VocabParallelHead

# The sublayers that run between one collective pair (input copy or all-gather, output all-reduce or
# reduce-scatter), and the name of their row-parallel linear. A family's subclass (Gemma 3's attention
# with q/k norms) is wrapped the same way.
REGIONS = ((Attention, "o_proj"), (GatedMLP, "down_proj"))


@functools.lru_cache(maxsize=None)
def parallel_region(cls: type, row_name: str) -> type:
    """`cls` with its forward between the tensor-parallel collectives (same parameters and names)."""
    return type(f"TensorParallel{cls.__name__}", (TensorParallelRegion, cls), {"row_name": row_name})


def _style(plan, module_name: str) -> str | None:
    for pattern, style in plan:
        if re.fullmatch(pattern, module_name):
            return style
    return None


def _spec(style: str, param: str, shape, dims: ParallelDims, config) -> ShardSpec:
    tp, rank, sp = dims.tp, dims.tp_rank, dims.sequence_parallel
    shape = tuple(shape)
    if style == "vocab":
        return ShardSpec("vocab", shape, rank, tp, padded_rows=dims.padded_vocab(shape[0]))
    if style == "column":
        return ShardSpec("column", shape, rank, tp)
    if style == "kv":
        replicas = max(1, tp // config.num_kv_heads)
        return ShardSpec("kv", shape, rank, tp, replicas=replicas)
    if style == "row":
        if param == "bias":  # added once after the reduction: on sequence shards under SP
            return ShardSpec("replicated", shape, rank, tp, grad_reduce=sp)
        return ShardSpec("row", shape, rank, tp)
    return ShardSpec("replicated", shape, rank, tp, grad_reduce=style == "partial" or sp)


def apply_tensor_parallel(model: CausalLM, dims: ParallelDims) -> CausalLM:
    """Shard `model` (best on the meta device) for this rank's tensor-parallel position."""
    config = model.config
    dims.validate_model(config)
    plan = family(config.family).tp_plan
    model.sharding = Sharding(dims)
    specs = model.sharding.specs
    if dims.tp == 1:
        return model
    g, sp = dims.tp_group, dims.sequence_parallel
    for module_name, module in list(model.named_modules()):
        for region, row_name in REGIONS:
            if isinstance(module, region):
                module.__class__ = parallel_region(type(module), row_name)
                module.tp_group, module.sequence_parallel = g, sp
        style = _style(plan, module_name)
        params = list(module.named_parameters(recurse=False))
        if params and style is None:
            raise KeyError(f"module {module_name!r} has parameters but no entry in the {config.family} TP plan")
        for param_name, param in params:
            spec = _spec(style, param_name, param.shape, dims, config)
            specs[f"{module_name}.{param_name}"] = spec
            if spec.local_shape() != tuple(param.shape):
                local = torch.empty(spec.local_shape(), dtype=param.dtype, device=param.device)
                setattr(module, param_name, nn.Parameter(local, requires_grad=param.requires_grad))
        if style == "row" and isinstance(module, nn.Linear):
            module.__class__ = RowParallelLinear
        if style == "vocab":
            _shard_vocab(model, module_name, module, specs[f"{module_name}.weight"], dims)
    return model


def _shard_vocab(model: CausalLM, name: str, module: nn.Module, spec: ShardSpec, dims: ParallelDims):
    start, stop = spec.local_range()
    if name == "embed_tokens":
        pad = module.padding_idx
        module.__class__ = VocabParallelEmbedding
        module.num_embeddings = stop - start
        module.padding_idx = pad - start if pad is not None and start <= pad < stop else None
        module.vocab_start, module.tp_group, module.sequence_parallel = start, dims.tp_group, dims.sequence_parallel
    else:
        module.out_features = stop - start
    if name == "lm_head" or model.config.tie_word_embeddings:  # the output layer reads the sharded embedding when tied
        model.head = VocabParallelHead(dims.tp_group, start, spec.full_shape[0], dims.sequence_parallel)
