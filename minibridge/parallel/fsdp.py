"""FSDP2 over the data-parallel ranks: the last parallelize pass (torchtitan's apply_fsdp).

`apply_fsdp` runs `torch.distributed.fsdp.fully_shard` on every transformer block and then on each
pipeline chunk (the root: embedding, final norm, output layer), over a device mesh made from the
layout's own dp group (`DeviceMesh.from_group(dims.dp_group)`, so the ranks keep ParallelDims' order).
`parallelize.build_model(..., fsdp=FsdpSettings(...))` runs it on the META chunks, after TP, CP,
recomputation, compile and any LoRA/DoRA adapter modules (fully_shard fixes the parameters it manages
when it wraps); `to_empty` then allocates only this rank's dp shard of each parameter, and the loaders
fill those shards in place (`local_rows`: the shard and its rows of the TP-local block), so no rank
ever holds its whole TP-local model. It composes with the other passes because they leave ordinary
tensors behind:

    TP      our tensor-parallel layers hold plain local blocks and do their collectives in autograd
            Functions, so FSDP2 shards the TP-local block of each parameter over the dp ranks (dim 0).
            The TP partial-sum reductions (sequence-parallel norms, Gemma's q/k norms, replicated KV
            heads) stay in `finalize_grads`, on the local dp shards of the gradients: the tp ranks that
            share a dp rank hold the same rows of the same block, and the sums commute.
    CP      the cp all-reduce of `finalize_grads` runs on the local shards likewise.
    PP      every chunk is wrapped; each micro-batch's backward reduce-scatters into the sharded fp32
            gradient, which accumulates over micro-batches (FSDP2's default gradient sync).

Numerics: parameters stay sharded fp32 DTensors (they are the optimizer's master weights); under
bf16_mixed `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` all-gathers bf16 copies for
compute and reduce-scatters the gradients in fp32. Forward inputs are not cast (`cast_forward_inputs=False`):
the RoPE tables handed to each block stay fp32, as in the unsharded model. Reduce-scatters sum
(divide factor 1, plain SUM: gloo has no AVG/PREMUL_SUM), because the loop already divides each
micro-batch loss by the global batch's token count.

The model calls `hidden_states` and `loss` instead of `forward`; `hidden_states` is registered as an
FSDP forward method and the root keeps its parameters unsharded after it, so `loss` / `logits`
read whole (compute-dtype) parameters.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import LayoutError
from ..models import ModelChunks
from .dims import ParallelDims

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

# torch.distributed.fsdp and .tensor (~50 MB resident with what they pull in) are imported when a model
# is sharded, not by every process that builds one. Until they are imported no FSDP2 module or DTensor
# can exist, which is what `is_fsdp` and `local` check first.


@dataclass(frozen=True)
class FsdpSettings:
    """What `build_model(fsdp=...)` asks for; set as `chunk.sharding.fsdp` by `apply_fsdp`, with the
    dp mesh it made."""

    param_dtype: torch.dtype | None = None  # None: compute in the parameters' own fp32
    reshard_after_forward: bool = True
    mesh: DeviceMesh | None = None


def data_parallel_mesh(dims: ParallelDims) -> DeviceMesh:
    """A 1-D device mesh over this rank's dp group, in the group's rank order."""
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(dims.dp_group, dims.device.type, mesh_dim_names=("dp",))


def apply_fsdp(model, dims: ParallelDims, param_dtype: torch.dtype | None = None,
               reshard_after_forward: bool = True) -> ModelChunks:
    """Shard every chunk of `model` (fp32, adapters attached; on meta as `build_model` calls it, or
    allocated) over the dp ranks."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    chunks = ModelChunks.of(model)
    low = sorted({str(p.dtype) for p in chunks[0].parameters() if p.dtype != torch.float32})
    if low:
        raise LayoutError(f"FSDP2 keeps fp32 sharded parameters and computes in param_dtype; this model has "
                          f"{', '.join(low)} parameters: build it in float32")
    mesh = data_parallel_mesh(dims)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for chunk in chunks:
        for block in chunk.layers.values():
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
        # the root keeps its parameters after hidden_states: loss() / logits() read them next
        fully_shard(chunk, mesh=mesh, reshard_after_forward=False, mp_policy=policy)
        register_fsdp_forward_method(chunk, "hidden_states")
        for module in fsdp_modules(chunk):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
        chunk.sharding.fsdp = FsdpSettings(param_dtype, reshard_after_forward, mesh)
    return chunks


def fsdp_modules(model) -> list[FSDPModule]:
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None:
        return []
    return [m for chunk in ModelChunks.of(model) for m in chunk.modules() if isinstance(m, fsdp.FSDPModule)]


def is_fsdp(model) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and (isinstance(model, fsdp.FSDPModule)
                                 or any(isinstance(c, fsdp.FSDPModule) for c in ModelChunks.of(model)))


def local(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """This rank's shard of a DTensor (a view of its storage), or the tensor itself."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return tensor.to_local() if dtensor is not None and isinstance(tensor, dtensor.DTensor) else tensor


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """Where this rank's values of `param` live, for filling in place: a plain parameter's own data and
    None (every row), or an FSDP2 parameter's local shard and its rows [first, last) of the TP-local block."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is None or not isinstance(param, dtensor.DTensor):
        return param.data, None
    shard, first = shard_rows(param.data)  # .data: no autograd on the in-place fill
    return shard, (first, first + shard.shape[0])


def fill_local(param: torch.Tensor, full: torch.Tensor, spec) -> None:
    """Fill this rank's values of `param` from its full tensor `full` (a parameter another checkpoint format
    holds whole): its TP block under `spec` (a ShardSpec), then under FSDP2 its rows of that block; rows
    past the real vocabulary (padding) are zeros."""
    out, rows = local_rows(param)
    block = full
    if spec is not None and spec.dim is not None and spec.size > 1:
        start, stop = spec.local_range()
        block = full.narrow(spec.dim, start, max(0, min(stop, full.shape[spec.dim]) - start))
    if rows is not None:
        block = block[rows[0]: rows[1]]
    with torch.no_grad():
        out[: block.shape[0]].copy_(block)
        out[block.shape[0]:].zero_()


def shard_rows(tensor: DTensor) -> tuple[torch.Tensor, int]:
    """(local shard, its first row in the DTensor's global tensor) under FSDP2's Shard(0): rank r holds
    rows [r * c, min((r + 1) * c, n)) with c = ceil(n / dp), as torch.chunk splits them."""
    from torch.distributed.tensor import Shard

    if tuple(tensor.placements) != (Shard(0),):
        raise LayoutError(f"expected an FSDP2 parameter sharded on dim 0 over one mesh dimension, got placements "
                          f"{tensor.placements}")
    rows, parts = tensor.shape[0], tensor.device_mesh.size()
    step = math.ceil(rows / parts)
    start = min(tensor.device_mesh.get_local_rank() * step, rows)
    shard = tensor.to_local()
    assert shard.shape[0] == min(step, rows - start), (tensor.shape, shard.shape, start)
    return shard, start


def unshard(model) -> None:
    """Make every FSDP2 module's parameters whole plain tensors (in the compute dtype) for good: what
    the export, generation and LoRA-merge code read at the end of a run. Not undone: an export hands
    the gathered storage to safetensors (numpy), after which FSDP2 cannot free it to reshard."""
    for module in fsdp_modules(model):
        module.unshard()
