"""Gradient synchronisation after backward: tensor-parallel partial sums, then data-parallel averaging.

`finalize_grads` plays the role of Megatron's finalize_model_grads: the training loop calls it once
per step, after the last micro-batch's backward and before clipping and the optimizer step.
Data-parallel averaging flattens gradients into buckets (one all-reduce per ~25 MB), which composes
with the sharded TP parameters without wrapping the model. ZeRO-1 (the optimizer state split over the
dp ranks) is the trainer's optimizer's job: minibridge.training.optimizer.MixedPrecisionAdamW.
Under FSDP2 (parallel/fsdp.py) the dp reduction is FSDP2's reduce-scatter; the tp and cp sums here
then run on each rank's local shard of the sharded gradients.
"""

from __future__ import annotations

import torch

from ..models import CausalLM
from .collectives import all_reduce_
from .dims import ParallelDims
from .fsdp import is_fsdp, local

BUCKET_BYTES = 25 * 2**20


def bucket_indices(sizes: list[int], bucket_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """Consecutive runs of gradients (their indices, from their sizes in bytes), each closed once it
    holds `bucket_bytes` or more: the one bucket composition that finalize_grads and the overlapped
    reducer (parallel.overlap) share, so that their all-reduces sum the same flat buffers (gloo's sum
    order depends on the position in the buffer once there are more than two ranks)."""
    buckets, bucket, size = [], [], 0
    for i, nbytes in enumerate(sizes):
        bucket.append(i)
        size += nbytes
        if size >= bucket_bytes:
            buckets.append(bucket)
            bucket, size = [], 0
    return buckets + [bucket] if bucket else buckets


def flatten(grads: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """One flat buffer of `grads` (into `out` when given: a buffer kept between steps)."""
    return torch.cat([g.reshape(-1) for g in grads], out=out)


def unflatten_into(flat: torch.Tensor, grads: list[torch.Tensor], scale: float = 1.0) -> None:
    """Copy a reduced flat bucket back into its gradients, times `scale` (an average's 1/n)."""
    if scale != 1.0:
        flat.mul_(scale)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _bucketed_all_reduce(grads: list[torch.Tensor], group, scale: float = 1.0, bucket_bytes: int = BUCKET_BYTES):
    for indices in bucket_indices([g.numel() * g.element_size() for g in grads], bucket_bytes):
        bucket = [grads[i] for i in indices]
        unflatten_into(all_reduce_(flatten(bucket), group), bucket, scale)


def _replicated_kv(spec) -> bool:
    """A KV head that several tp ranks hold (more ranks than KV heads): its gradient is summed over them."""
    return spec.kind == "kv" and spec.replicas > 1


def _kv_replica_sum(grad: torch.Tensor, spec, group):
    """Sum a replicated KV head's gradient over the ranks that share it, with one tp all-reduce:
    each rank writes its gradient into its head's slot of a zeroed (heads, ...) buffer."""
    slots = torch.zeros((spec.parts, *grad.shape), dtype=grad.dtype, device=grad.device)
    slots[spec.index] = grad
    all_reduce_(slots, group)
    grad.copy_(slots[spec.index])


def grad_of(param: torch.nn.Parameter) -> torch.Tensor | None:
    """The gradient an optimizer uses: the fp32 `main_grad` that low-precision parameters accumulate
    into under mixed precision (see minibridge.training.optimizer), else `.grad`; under FSDP2 this
    rank's local shard of it."""
    return getattr(param, "main_grad", None) if param.dtype != torch.float32 else local(param.grad)


def finalize_grads(model: CausalLM, dims: ParallelDims, average_dp: bool = True, reducer=None,
                   bucket_bytes: int = BUCKET_BYTES) -> None:
    """Complete the gradients after backward. `average_dp=False` sums over data-parallel ranks, for
    losses already normalised by the global token count. `reducer` (parallel.overlap.GradReducer, built
    with the same `average_dp` and `bucket_bytes`) has launched the cp/dp reduction of most gradients
    during backward: it is waited for here, and only the gradients it does not cover are reduced."""
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    model = model.module if ddp else model
    specs = model.sharding.specs if model.sharding is not None else {}
    params = [(n, g) for n, p in model.named_parameters() if (g := grad_of(p)) is not None]
    if dims.tp > 1:
        partial = [g for n, g in params if n in specs and specs[n].grad_reduce]
        _bucketed_all_reduce(partial, dims.tp_group, bucket_bytes=bucket_bytes)
        for n, g in params:
            if n in specs and _replicated_kv(specs[n]):
                _kv_replica_sum(g, specs[n], dims.tp_group)
    if reducer is not None:
        reducer.finish()
        params = [(n, g) for n, g in params if n not in reducer.names]
    grads = [g for _, g in params]
    if dims.config.cp > 1:  # every cp rank saw a part of each sequence
        _bucketed_all_reduce(grads, dims.cp_group, 1.0 / dims.config.cp if average_dp else 1.0, bucket_bytes)
    if dims.dp > 1 and not ddp and not is_fsdp(model):  # DDP has averaged them, FSDP2 reduce-scattered them
        _bucketed_all_reduce(grads, dims.dp_group, 1.0 / dims.dp if average_dp else 1.0, bucket_bytes)


def late_reduced(model: CausalLM, dims: ParallelDims) -> set[str]:
    """Parameters whose gradients finalize_grads first sums over tp (partial sums, replicated KV heads)
    and only then over cp and dp: an overlapped reducer leaves them to it, so that order holds."""
    if dims.tp == 1 or model.sharding is None:
        return set()
    return {n for n, s in model.sharding.specs.items() if s.grad_reduce or _replicated_kv(s)}


def finalize_pipeline_grads(chunks: list, dims: ParallelDims) -> None:
    """Tied embeddings under pipeline parallelism: the first stage's embedding and the last stage's
    copy used by the output layer are one parameter, so their gradients are summed (Megatron's
    embedding group all-reduce)."""
    if dims.config.pp == 1 or dims.embedding_group is None or not chunks[0].config.tie_word_embeddings:
        return
    for chunk in chunks:
        embed = chunk.embed_tokens
        if embed is not None and embed.weight.requires_grad and (chunk.is_first or chunk.is_last):  # frozen: PEFT
            all_reduce_(grad_of(embed.weight), dims.embedding_group)
