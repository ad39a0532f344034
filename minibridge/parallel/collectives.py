"""Collectives as autograd functions, in Megatron's conjugate pairs (never forward hooks).

    copy_to_region          forward identity             backward all-reduce
    reduce_from_region      forward all-reduce           backward identity
    scatter_to_sequence     forward split along seq      backward all-gather along seq
    gather_from_sequence    forward all-gather seq       backward reduce-scatter seq
    reduce_scatter_sequence forward reduce-scatter seq   backward all-gather seq
    gather_from_last_dim    forward all-gather last dim  backward split last dim

Activations are (batch, seq, hidden), so sequence parallelism splits dim 1. Every primitive goes
through `_all_reduce` / `_all_gather` / `_reduce_scatter`, which a `CommCounter` can watch.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

SEQ_DIM = 1


class CommCounter:
    """Counts what each collective moves: calls and payload bytes per op (the tensor each rank holds)."""

    active: "CommCounter | None" = None

    def __init__(self):
        self.calls: dict[str, int] = {}
        self.bytes: dict[str, int] = {}  # all-reduce: input size; all-gather: output; reduce-scatter: input

    def add(self, op: str, nbytes: int):
        self.calls[op] = self.calls.get(op, 0) + 1
        self.bytes[op] = self.bytes.get(op, 0) + nbytes

    def sent_bytes(self, n: int) -> dict[str, float]:
        """Bytes one rank sends with ring algorithms on n ranks (what NCCL does for large messages)."""
        factor = {"all_reduce": 2 * (n - 1) / n, "all_gather": (n - 1) / n, "reduce_scatter": (n - 1) / n}
        return {op: b * factor[op] for op, b in self.bytes.items()}


@contextlib.contextmanager
def count_communication():
    counter = CommCounter()
    previous, CommCounter.active = CommCounter.active, counter
    try:
        yield counter
    finally:
        CommCounter.active = previous


def _record(op: str, tensor: torch.Tensor):
    if CommCounter.active is not None:
        CommCounter.active.add(op, tensor.numel() * tensor.element_size())


def _size(group) -> int:
    return dist.get_world_size(group)


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    if _size(group) == 1:
        return x
    _record("all_reduce", x)
    x = x.contiguous()
    dist.all_reduce(x, group=group)
    return x


def _all_gather(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    n = _size(group)
    if n == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x, group=group)
    out = torch.cat(parts, dim=dim)
    _record("all_gather", out)
    return out


def _split(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    n = _size(group)
    if n == 1:
        return x
    if x.shape[dim] % n:
        raise ValueError(f"dimension {dim} of size {x.shape[dim]} does not split over {n} ranks")
    return x.chunk(n, dim=dim)[dist.get_rank(group)].contiguous()


def _reduce_scatter(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    n = _size(group)
    if n == 1:
        return x
    _record("reduce_scatter", x)
    chunks = [c.contiguous() for c in x.chunk(n, dim=dim)]
    if dist.get_backend(group) == "nccl":
        out = torch.empty_like(chunks[0])
        dist.reduce_scatter(out, chunks, group=group)
        return out
    # gloo has no reduce-scatter: all-reduce and keep our chunk (same result, more traffic on CPU only).
    full = x.contiguous().clone()
    dist.all_reduce(full, group=group)
    return full.chunk(n, dim=dim)[dist.get_rank(group)].contiguous()


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.clone(), ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split(x, group, SEQ_DIM)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group, SEQ_DIM), None


class _GatherFromSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather(x, group, SEQ_DIM)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter(grad, ctx.group, SEQ_DIM), None


class _ReduceScatterSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter(x, group, SEQ_DIM)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group, SEQ_DIM), None


class _GatherFromLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather(x, group, -1)

    @staticmethod
    def backward(ctx, grad):
        return _split(grad, ctx.group, -1), None


def copy_to_region(x, group):
    return _CopyToRegion.apply(x, group)


def reduce_from_region(x, group):
    return _ReduceFromRegion.apply(x, group)


def scatter_to_sequence(x, group):
    return _ScatterToSequence.apply(x, group)


def gather_from_sequence(x, group):
    return _GatherFromSequence.apply(x, group)


def reduce_scatter_sequence(x, group):
    return _ReduceScatterSequence.apply(x, group)


def gather_from_last_dim(x, group):
    return _GatherFromLastDim.apply(x, group)


def all_reduce_(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Plain in-place all-reduce outside autograd (gradients, statistics), counted like the rest."""
    if _size(group) > 1:
        _record("all_reduce", x)
        dist.all_reduce(x, op=op, group=group)
    return x
