"""Collectives as autograd functions, in Megatron's conjugate pairs (never forward hooks).

    copy_to_region          forward identity             backward all-reduce
    reduce_from_region      forward all-reduce           backward identity
    scatter_to_sequence     forward split along seq      backward all-gather along seq
    gather_from_sequence    forward all-gather seq       backward reduce-scatter seq
    reduce_scatter_sequence forward reduce-scatter seq   backward all-gather seq
    gather_from_last_dim    forward all-gather last dim  backward split last dim

Activations are (batch, seq, hidden), so sequence parallelism splits dim 1. Every primitive goes
through `_all_reduce` / `all_gather_along` / `_reduce_scatter`, which a `CommCounter` can watch.
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
        factor = {"all_reduce": 2 * (n - 1) / n, "all_gather": (n - 1) / n, "reduce_scatter": (n - 1) / n, "p2p": 1.0}
        return {op: b * factor[op] for op, b in self.bytes.items()}


@contextlib.contextmanager
def count_communication():
    counter = CommCounter()
    previous, CommCounter.active = CommCounter.active, counter
    try:
        yield counter
    finally:
        CommCounter.active = previous


def record_communication(op: str, tensor: torch.Tensor):
    if CommCounter.active is not None:
        CommCounter.active.add(op, tensor.numel() * tensor.element_size())


def _size(group) -> int:
    return dist.get_world_size(group)


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    if _size(group) == 1:
        return x
    record_communication("all_reduce", x)
    x = x.contiguous()
    dist.all_reduce(x, group=group)
    return x


def all_gather_along(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    n = _size(group)
    if n == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x, group=group)
    out = torch.cat(parts, dim=dim)
    record_communication("all_gather", out)
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
    record_communication("reduce_scatter", x)
    chunks = [c.contiguous() for c in x.chunk(n, dim=dim)]
    if dist.get_backend(group) == "nccl":
        out = torch.empty_like(chunks[0])
        dist.reduce_scatter(out, chunks, group=group)
        return out
    # gloo has no reduce-scatter: all-reduce and keep our chunk (same result, more traffic on CPU only).
    full = x.contiguous().clone()
    dist.all_reduce(full, group=group)
    return full.chunk(n, dim=dim)[dist.get_rank(group)].contiguous()


def _conjugate_pair(name: str, forward, backward):
    """An autograd function running `forward(x, group)` and, in backward, `backward(grad, group)`."""

    def fwd(ctx, x, group):
        ctx.group = group
        return forward(x, group)

    def bwd(ctx, grad):
        return backward(grad, ctx.group), None

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(bwd)}).apply


def _identity(x, group):
    return x


copy_to_region = _conjugate_pair("CopyToRegion", _identity, lambda g, grp: _all_reduce(g.clone(), grp))
reduce_from_region = _conjugate_pair("ReduceFromRegion", lambda x, grp: _all_reduce(x.clone(), grp), _identity)
scatter_to_sequence = _conjugate_pair(
    "ScatterToSequence", lambda x, grp: _split(x, grp, SEQ_DIM), lambda g, grp: all_gather_along(g, grp, SEQ_DIM)
)
gather_from_sequence = _conjugate_pair(
    "GatherFromSequence", lambda x, grp: all_gather_along(x, grp, SEQ_DIM), lambda g, grp: _reduce_scatter(g, grp, SEQ_DIM)
)
reduce_scatter_sequence = _conjugate_pair(
    "ReduceScatterSequence", lambda x, grp: _reduce_scatter(x, grp, SEQ_DIM), lambda g, grp: all_gather_along(g, grp, SEQ_DIM)
)
gather_from_last_dim = _conjugate_pair(
    "GatherFromLastDim", lambda x, grp: all_gather_along(x, grp, -1), lambda g, grp: _split(g, grp, -1)
)


def all_reduce_(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Plain in-place all-reduce outside autograd (gradients, statistics), counted like the rest."""
    if _size(group) > 1:
        record_communication("all_reduce", x)
        dist.all_reduce(x, op=op, group=group)
    return x
