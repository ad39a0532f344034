"""Zigzag ring attention: causal attention over a sequence split across the ranks of a CP group.

Layout (see `context.py`): the sequence of length T is cut into 2*cp chunks of C = T / (2*cp) tokens
and rank r holds chunks r and 2*cp-1-r, in that order, as its local (B, 2C, H, D) tensors.

Forward: KV blocks travel one hop per step around the ring (rank r sends to r+1, receives from r-1),
so at step s rank r holds the keys/values of rank (r - s) mod cp. Each step attends the local queries
to the visiting block chunk by chunk; a (query chunk i, key chunk j) pair is

    j < i   fully visible       (no mask)
    j == i  the causal diagonal (triangular mask)
    j > i   invisible           (skipped: with zigzag every step does the same work on every rank)

(with a sliding window the pair mask is computed from global positions and pairs that fall out of
the window are skipped too). Partial results merge with the online-softmax rule in fp32:

    lse = logaddexp(lse_a, lse_b),  out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)

Backward (as in the RingAttention / zigzag_ring_flash_attn references): with the final output O and
log-sum-exp L saved, each block's softmax is recomputed exactly as P = exp(S - L), so

    delta = rowsum(dO * O),  dV = P^T dO,  dS = P * (dO V^T - delta),  dQ = dS K * scale,  dK = dS^T Q * scale.

dQ accumulates locally. The dK/dV accumulator of a block travels with it: at step s rank r adds its
share to the accumulator of rank (r - s)'s block and passes it on; after cp hops (one more than the
KV blocks made) every accumulator is back at its owner, holding the contributions of all ranks.

GQA: query heads are viewed as (Hkv, G) and keys as (Hkv, 1), so the matmuls broadcast over the group
without materialising repeated K/V; dK/dV sum over G. Query head h uses KV head h // G, as SDPA's
`enable_gqa` does.

The block math (`_block_forward` / `_block_backward`) is plain fp32 torch and materialises one
(C, C) score tile per head: a flash kernel returning the log-sum-exp can replace it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..kernels import allowed_mask_from_positions
from .collectives import record_communication

KV_TAG, GRAD_TAG = 0, 1


def chunk_ids(cp: int, rank: int) -> tuple[int, int]:
    """The two zigzag chunks of `rank` (Megatron's / Llama 3's load-balanced split)."""
    return rank, 2 * cp - 1 - rank


def post_p2p(sends, recvs, group) -> list:
    """Post point-to-point sends [(group_rank, tensor, tag)] and receives [(group_rank, buffer, tag)];
    returns the work handles (wait on all of them before reading a buffer or reusing a send)."""
    works = []
    for peer, tensor, tag in recvs:
        works.append(dist.irecv(tensor, group=group, group_src=peer, tag=tag))
    for peer, tensor, tag in sends:
        record_communication("p2p", tensor)
        works.append(dist.isend(tensor, group=group, group_dst=peer, tag=tag))
    return works


def wait_all(works):
    for w in works:
        w.wait()


# ---- block math (fp32); q: (B, Hkv, G, Tq, D), k and v: (B, Hkv, 1, Tk, D) ----------------------------


def _scores(q, k, scale, mask):
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    return s if mask is None else s.masked_fill(~mask, float("-inf"))


def _block_forward(q, k, v, scale, mask):
    """Partial attention of q on one KV block: (out (B,Hkv,G,Tq,D), lse (B,Hkv,G,Tq)). Rows with no
    visible key get lse = -inf and out = 0, so merging them changes nothing."""
    s = _scores(q, k, scale, mask)
    lse = torch.logsumexp(s, dim=-1)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    return torch.matmul(torch.exp(s - safe[..., None]), v), lse


def _merge(out, lse, blk_out, blk_lse):
    """Online-softmax merge of two partial results (all fp32)."""
    new = torch.logaddexp(lse, blk_lse)
    safe = torch.where(torch.isinf(new), torch.zeros_like(new), new)
    out = out * torch.exp(lse - safe)[..., None] + blk_out * torch.exp(blk_lse - safe)[..., None]
    return out, new


def _block_backward(q, k, v, dout, lse, delta, scale, mask):
    """Gradients of one block given the final lse and delta = rowsum(dO * O); returns dq, dk, dv."""
    p = torch.exp(_scores(q, k, scale, mask) - lse[..., None])  # masked entries: exp(-inf) = 0
    dv = torch.matmul(p.transpose(-1, -2), dout).sum(2, keepdim=True)
    ds = p * (torch.matmul(dout, v.transpose(-1, -2)) - delta[..., None])
    dq = torch.matmul(ds, k) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q).sum(2, keepdim=True) * scale
    return dq, dk, dv


def _pairs(cp, rank, src, chunk, window, device):
    """(query slice, key slice, mask or None) for every visible (local chunk, visiting chunk) pair."""
    pairs = []
    for qi, qc in enumerate(chunk_ids(cp, rank)):
        q_pos = torch.arange(qc * chunk, (qc + 1) * chunk, device=device)
        for ki, kc in enumerate(chunk_ids(cp, src)):
            if kc > qc:
                continue  # entirely in the future
            k_pos = torch.arange(kc * chunk, (kc + 1) * chunk, device=device)
            mask = allowed_mask_from_positions(q_pos, k_pos, window=window)
            if not mask.any():
                continue  # entirely outside the window
            rows, cols = slice(qi * chunk, (qi + 1) * chunk), slice(ki * chunk, (ki + 1) * chunk)
            pairs.append((rows, cols, None if mask.all() else mask))
    return pairs


def _to_blocks(q, k, v):
    """(B, T, H, D) -> (B, Hkv, G, T, D) for q and (B, Hkv, 1, T, D) for k, v, all fp32."""
    B, T, H, D = q.shape
    hkv = k.shape[2]
    qb = q.float().permute(0, 2, 1, 3).reshape(B, hkv, H // hkv, T, D)
    return qb, k.float().permute(0, 2, 1, 3).unsqueeze(2), v.float().permute(0, 2, 1, 3).unsqueeze(2)


def _from_q_blocks(x):  # (B, Hkv, G, T, D) -> (B, T, H, D)
    B, hkv, g, T, D = x.shape
    return x.reshape(B, hkv * g, T, D).permute(0, 2, 1, 3)


def _from_kv_blocks(x):  # (B, Hkv, 1, T, D) -> (B, T, Hkv, D)
    return x.squeeze(2).permute(0, 2, 1, 3)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, window, group):
        cp, rank = dist.get_world_size(group), dist.get_rank(group)
        chunk = q.shape[1] // 2
        qb, kb, vb = _to_blocks(q, k, v)
        out = torch.zeros_like(qb)
        lse = torch.full(qb.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        kv = torch.cat([kb, vb], dim=2).contiguous()  # (B, Hkv, 2, T, D): one message per hop
        nxt, prv = (rank + 1) % cp, (rank - 1) % cp
        for step in range(cp):
            works, incoming = [], None
            if step + 1 < cp:  # start the next hop before computing, so it overlaps the compute
                incoming = torch.empty_like(kv)
                works = post_p2p([(nxt, kv, KV_TAG)], [(prv, incoming, KV_TAG)], group)
            src = (rank - step) % cp
            for rows, cols, mask in _pairs(cp, rank, src, chunk, window, q.device):
                o, l = _block_forward(qb[..., rows, :], kv[:, :, 0:1, cols], kv[:, :, 1:2, cols], scale, mask)
                out[..., rows, :], lse[..., rows] = _merge(out[..., rows, :], lse[..., rows], o, l)
            wait_all(works)
            kv = incoming
        result = _from_q_blocks(out).to(q.dtype)
        ctx.save_for_backward(q, k, v, result, lse)
        ctx.scale, ctx.window, ctx.group = scale, window, group
        return result

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        group, scale, window = ctx.group, ctx.scale, ctx.window
        cp, rank = dist.get_world_size(group), dist.get_rank(group)
        chunk = q.shape[1] // 2
        qb, kb, vb = _to_blocks(q, k, v)
        dob = _to_blocks(dout, k, v)[0]
        delta = (dob * _to_blocks(out, k, v)[0]).sum(-1)  # rowsum(dO * O), (B, Hkv, G, T)
        dq = torch.zeros_like(qb)
        kv = torch.cat([kb, vb], dim=2).contiguous()
        nxt, prv = (rank + 1) % cp, (rank - 1) % cp
        grad_works, grad_in = [], None
        for step in range(cp):
            kv_works, incoming = [], None
            if step + 1 < cp:
                incoming = torch.empty_like(kv)
                kv_works = post_p2p([(nxt, kv, KV_TAG)], [(prv, incoming, KV_TAG)], group)
            src = (rank - step) % cp
            dkv = torch.zeros_like(kv)  # this rank's share of the visiting block's dK, dV
            for rows, cols, mask in _pairs(cp, rank, src, chunk, window, q.device):
                dq_b, dk_b, dv_b = _block_backward(
                    qb[..., rows, :], kv[:, :, 0:1, cols], kv[:, :, 1:2, cols],
                    dob[..., rows, :], lse[..., rows], delta[..., rows], scale, mask,
                )
                dq[..., rows, :] += dq_b
                dkv[:, :, 0:1, cols] += dk_b
                dkv[:, :, 1:2, cols] += dv_b
            if step > 0:  # add the accumulator that arrived with this block's previous visit
                wait_all(grad_works)
                dkv += grad_in
            if cp == 1:
                grad_in = dkv
            else:
                grad_in = torch.empty_like(dkv)
                grad_works = post_p2p([(nxt, dkv, GRAD_TAG)], [(prv, grad_in, GRAD_TAG)], group)
            wait_all(kv_works)
            kv = incoming
        wait_all(grad_works)  # the last hop brings every rank the finished gradient of its own block
        dk, dv = _from_kv_blocks(grad_in[:, :, 0:1]), _from_kv_blocks(grad_in[:, :, 1:2])
        return _from_q_blocks(dq).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def ring_attention(q, k, v, scale: float, group, window: int | None = None) -> torch.Tensor:
    """Causal attention of this rank's zigzag-local q (B, T_local, H, D) on the whole sequence, whose
    k, v (B, T_local, Hkv, D) are spread over `group`; returns this rank's (B, T_local, H, D) output.

    `window` restricts each query to the W most recent keys (positions i - W + 1 .. i); blocks outside
    the window are skipped but every block still travels the whole ring: for sliding-window layers
    `context.window_attention_cp` moves only the halos it needs.
    """
    check_local_shapes(q, k, v)
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    if group is None:
        group = dist.group.WORLD
    return _RingAttention.apply(q, k, v, scale, window, group)


def check_local_shapes(q, k, v):
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"expected q (B, T, H, D) and k, v (B, T, Hkv, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} KV heads")
    if q.shape[1] % 2:
        raise ValueError(f"a zigzag-local sequence holds two equal chunks; got odd length {q.shape[1]}")
