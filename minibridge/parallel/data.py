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


def _bucketed_all_reduce(grads: list[torch.Tensor], group, scale: float = 1.0):
    bucket, size = [], 0
    for grad in grads + [None]:
        if grad is not None:
            bucket.append(grad)
            size += grad.numel() * grad.element_size()
        if bucket and (grad is None or size >= BUCKET_BYTES):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            all_reduce_(flat, group)
            if scale != 1.0:
                flat.mul_(scale)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


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


def finalize_grads(model: CausalLM, dims: ParallelDims, average_dp: bool = True) -> None:
    """Complete the gradients after backward. `average_dp=False` sums over data-parallel ranks, for
    losses already normalised by the global token count."""
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    model = model.module if ddp else model
    specs = model.sharding.specs if model.sharding is not None else {}
    params = [(n, grad_of(p)) for n, p in model.named_parameters() if grad_of(p) is not None]
    if dims.tp > 1:
        partial = [g for n, g in params if n in specs and specs[n].grad_reduce]
        _bucketed_all_reduce(partial, dims.tp_group)
        for n, g in params:
            if n in specs and specs[n].kind == "kv" and specs[n].replicas > 1:
                _kv_replica_sum(g, specs[n], dims.tp_group)
    if dims.config.cp > 1:  # every cp rank saw a part of each sequence
        _bucketed_all_reduce([g for _, g in params], dims.cp_group, scale=1.0 / dims.config.cp if average_dp else 1.0)
    if dims.dp > 1 and not ddp and not is_fsdp(model):  # DDP has averaged them, FSDP2 reduce-scattered them
        _bucketed_all_reduce([g for _, g in params], dims.dp_group, scale=1.0 / dims.dp if average_dp else 1.0)


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
