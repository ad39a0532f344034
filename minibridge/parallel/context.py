"""Context parallelism: the sequence split over the ranks of a CP group, and attention across it.

Zigzag layout (Megatron's and Llama 3's load balancing): T tokens are cut into 2*cp chunks of
C = T / (2*cp) and rank r keeps chunks r and 2*cp-1-r, concatenated in that order. Under a causal
mask an early chunk is cheap and a late one expensive, so every rank gets the same amount of work:

    cp = 2, T = 8 (C = 2):   positions  0 1 | 2 3 | 4 5 | 6 7
                             chunk        0     1     2     3
                             rank         0     1     1     0     rank 0: [0 1 6 7], rank 1: [2 3 4 5]

Global (causal) layers use `ring_attention` (ring_attention.py): K/V blocks travel around the ring.

Sliding-window layers (Gemma 3 local layers, window W: query i sees keys i-W+1 .. i) need far less:
each local chunk only needs the W-1 tokens before its start, its "halo", which other ranks own.

    cp = 2, T = 16, C = 4, W = 3            chunk:  0        1        2        3
                                            rank:   0        1        1        0
    rank 0, chunk 3 needs keys 10 11  ------------------------------- [8 9 10 11]  (chunk 2, rank 1)
    rank 1, chunk 1 needs keys  2  3  ---- [0 1 2 3]                             (chunk 0, rank 0)
    rank 1, chunk 2 needs keys  6  7  ------------- [4 5 6 7]                    (its own chunk 1)

`window_attention_cp` builds, identically on every rank, the plan "who needs which positions from
whom" (a halo longer than a chunk simply spans several owners), exchanges exactly those K/V rows with
point-to-point sends (`_HaloExchange`, whose backward returns the halo gradients to their owners and
adds them there), then runs ordinary masked SDPA of each local chunk on [its keys + halo] with the
window mask written on global positions. A rank receives at most 2*(W-1) rows, independent of T.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import LayoutError
from .collectives import all_gather_along
from ..kernels import allowed_mask_from_positions
from .ring_attention import check_local_shapes, chunk_ids, post_p2p, ring_attention, wait_all

HALO_TAG, HALO_GRAD_TAG = 2, 3

__all__ = [
    "context_parallel_attention", "gather_from_context_parallel", "ring_attention", "split_for_context_parallel",
    "window_attention_cp", "zigzag_indices",
]


def _check_divisible(seq_len: int, cp: int):
    if cp < 1 or seq_len % (2 * cp):
        raise LayoutError(f"context parallelism needs the sequence length divisible by 2 * cp: "
                         f"seq_len {seq_len} is not divisible by 2 * {cp} = {2 * cp}")


def zigzag_indices(seq_len: int, cp: int, rank: int, device=None) -> torch.Tensor:
    """Global positions held by `rank`, in local order: chunk rank, then chunk 2*cp-1-rank."""
    _check_divisible(seq_len, cp)
    if not 0 <= rank < cp:
        raise ValueError(f"rank {rank} is outside a context-parallel group of {cp}")
    c = seq_len // (2 * cp)
    return torch.cat([torch.arange(i * c, (i + 1) * c, device=device) for i in chunk_ids(cp, rank)])


def split_for_context_parallel(tensor: torch.Tensor, cp: int, rank: int, dim: int = 1) -> torch.Tensor:
    """This rank's zigzag slice of a full-sequence tensor (index_select, so autograd flows back)."""
    return tensor.index_select(dim, zigzag_indices(tensor.shape[dim], cp, rank, device=tensor.device))


class _GatherFromContextParallel(torch.autograd.Function):
    """Forward: all-gather the zigzag-local pieces and put them back in sequence order.
    Backward: this rank's zigzag slice of the gradient (every rank is assumed to use the full tensor
    the same way, e.g. the same loss, as `gather_from_last_dim` does in tensor parallelism)."""

    @staticmethod
    def forward(ctx, local, cp, group, dim):
        dim = dim % local.dim()
        seq_len = local.shape[dim] * cp
        order = torch.cat([zigzag_indices(seq_len, cp, r, local.device) for r in range(cp)])
        ctx.dim, ctx.keep = dim, zigzag_indices(seq_len, cp, dist.get_rank(group), local.device)
        return all_gather_along(local, group, dim).index_select(dim, torch.argsort(order))

    @staticmethod
    def backward(ctx, grad):
        return grad.index_select(ctx.dim, ctx.keep), None, None, None


def gather_from_context_parallel(local: torch.Tensor, cp: int, group, dim: int = 1) -> torch.Tensor:
    """Full-sequence tensor from every rank's zigzag-local piece (for tests and logits inspection)."""
    group = dist.group.WORLD if group is None else group
    if dist.get_world_size(group) != cp:
        raise ValueError(f"cp = {cp} but the group has {dist.get_world_size(group)} ranks")
    if cp == 1:
        return local
    return _GatherFromContextParallel.apply(local, cp, group, dim)


# ---- sliding-window layers: halo exchange ------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _halo_plan(seq_len: int, cp: int, window: int, me: int):
    """What rank `me` receives and sends for a window of `window` keys.

    Returns (recvs, sends, halo_positions): recvs [(owner, count)] in the order the halo is laid out,
    sends [(requester, local indices of the rows it needs)], and the global position of each halo row.
    Every rank derives the same plan, so both ends of each message agree on its size and order.
    """
    c = seq_len // (2 * cp)

    def owner(pos):  # (rank, local index) holding a global position
        j = pos // c
        return (j, pos % c) if j < cp else (2 * cp - 1 - j, c + pos % c)

    def needed(r):  # positions r lacks for the windows of its two chunks, sorted
        own = set(zigzag_indices(seq_len, cp, r).tolist())
        want = {p for j in chunk_ids(cp, r) for p in range(max(0, j * c - (window - 1)), j * c)}
        return sorted(want - own)

    recvs, halo_positions = [], []
    mine = needed(me)
    for o in range(cp):
        got = [p for p in mine if owner(p)[0] == o]
        if got:
            recvs.append((o, len(got)))
            halo_positions += got
    sends = []
    for r in range(cp):
        rows = [owner(p)[1] for p in needed(r) if r != me and owner(p)[0] == me]
        if rows:
            sends.append((r, torch.tensor(rows, dtype=torch.long)))
    return recvs, sends, torch.tensor(halo_positions, dtype=torch.long)


class _HaloExchange(torch.autograd.Function):
    """Forward: send the rows other ranks need, receive this rank's halo (B, N_halo, ...).
    Backward: send the halo's gradient back to the owners; add what comes back onto our own rows."""

    @staticmethod
    def forward(ctx, kv, plan, group):
        recvs, sends, _ = plan
        kv = kv.contiguous()
        bufs = [(o, kv.new_empty((kv.shape[0], n) + kv.shape[2:]), HALO_TAG) for o, n in recvs]
        idx = [(r, i.to(kv.device)) for r, i in sends]
        wait_all(post_p2p([(r, kv.index_select(1, i).contiguous(), HALO_TAG) for r, i in idx], bufs, group))
        ctx.plan, ctx.group, ctx.shape = idx, group, kv.shape
        ctx.counts = [(o, n) for o, n in recvs]
        if not bufs:
            return kv.new_empty((kv.shape[0], 0) + kv.shape[2:])
        return torch.cat([b for _, b, _ in bufs], dim=1)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        pieces = grad.split([n for _, n in ctx.counts], dim=1) if ctx.counts else []
        sends = [(o, p.contiguous(), HALO_GRAD_TAG) for (o, _), p in zip(ctx.counts, pieces)]
        bufs = [(r, grad.new_empty((grad.shape[0], len(i)) + grad.shape[2:]), HALO_GRAD_TAG) for r, i in ctx.plan]
        wait_all(post_p2p(sends, bufs, ctx.group))
        dkv = grad.new_zeros(ctx.shape)
        for (_, i), (_, b, _) in zip(ctx.plan, bufs):
            dkv.index_add_(1, i, b)  # several ranks may need the same row
        return dkv, None, None


def window_attention_cp(q, k, v, scale: float, window: int, group) -> torch.Tensor:
    """Sliding-window causal attention of zigzag-local q, k, v (shapes as `ring_attention`): each query
    at global position i sees keys i-W+1 .. i. Moves only the halos (at most 2*(W-1) rows per rank)."""
    check_local_shapes(q, k, v)
    if window is None or window < 1:
        raise ValueError(f"window_attention_cp needs a window >= 1, got {window}")
    group = dist.group.WORLD if group is None else group
    cp, me = dist.get_world_size(group), dist.get_rank(group)
    seq_len = q.shape[1] * cp
    _check_divisible(seq_len, cp)
    window = min(window, seq_len)  # a window past the start of the sequence changes nothing
    plan = _halo_plan(seq_len, cp, window, me)
    hkv, c = k.shape[2], q.shape[1] // 2
    kv = torch.cat([k, v], dim=2)  # (B, T_local, 2*Hkv, D): one message per peer
    halo = _HaloExchange.apply(kv, plan, group) if cp > 1 else kv[:, :0]
    keys = torch.cat([kv, halo], dim=1).transpose(1, 2)  # (B, 2*Hkv, T_local + N_halo, D)
    k_pos = torch.cat([zigzag_indices(seq_len, cp, me, q.device), plan[2].to(q.device)])
    outs = []
    for qi, j in enumerate(chunk_ids(cp, me)):
        start, end = j * c, (j + 1) * c
        sel = torch.nonzero((k_pos > start - window) & (k_pos < end)).squeeze(1)  # keys some query here sees
        mask = allowed_mask_from_positions(torch.arange(start, end, device=q.device), k_pos[sel], window=window)
        kk = keys[:, :hkv].index_select(2, sel)
        vv = keys[:, hkv:].index_select(2, sel)
        qq = q[:, qi * c:(qi + 1) * c].transpose(1, 2)
        out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=scale,
                                             enable_gqa=qq.shape[1] != hkv)
        outs.append(out.transpose(1, 2))
    return torch.cat(outs, dim=1)


def context_parallel_attention(q, k, v, scale: float, window: int | None, group) -> torch.Tensor:
    """The attention core under context parallelism: `ring_attention` for global (causal) layers,
    `window_attention_cp` for sliding-window layers. A window covering the whole sequence is causal."""
    group = dist.group.WORLD if group is None else group
    if window is None or window >= q.shape[1] * dist.get_world_size(group):
        return ring_attention(q, k, v, scale, group)
    return window_attention_cp(q, k, v, scale, window, group)


def apply_context_parallel(model, dims) -> None:
    """Point every attention layer of `model` at the context-parallel core for `dims.cp_group`."""
    if dims.config.cp == 1:
        return
    from ..models.common import Attention

    group = dims.cp_group

    def core(q, k, v, scale, window, document_ids=None):
        if document_ids is not None:
            raise NotImplementedError("packed sequences (document_ids) under context parallelism are not supported yet")
        return context_parallel_attention(q, k, v, scale, window, group)

    for module in model.modules():
        if isinstance(module, Attention):
            module.core = core


def split_batch_for_context_parallel(input_ids, targets, position_ids, cp: int, rank: int):
    """This cp rank's zigzag share of a batch. `targets` are the labels already shifted on the whole
    sequence (the target of the last token of one chunk is the first token of the next). Positions
    follow the chunks, so RoPE sees global positions."""
    seq = input_ids.shape[1]
    index = zigzag_indices(seq, cp, rank, device=input_ids.device)
    if position_ids is None:
        position_ids = torch.arange(seq, device=input_ids.device).expand_as(input_ids)
    take = lambda t: None if t is None else t.index_select(1, index)  # noqa: E731
    return take(input_ids), take(targets), take(position_ids)
