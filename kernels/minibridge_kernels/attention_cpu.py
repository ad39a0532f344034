"""The fast PyTorch attention path (CPU by default): SDPA, and blockwise SDPA for sliding windows.

transformers runs a Gemma local layer on CPU as one SDPA call with a (T, T) sliding-window mask, so it
pays O(T^2) for a layer that needs O(T x W). Here the queries are cut into blocks of `block` rows; block
n only needs the keys from its first query's position - W + 1 to its last query, `block + W - 1` keys.
Unfolding K and V into those overlapping slices (GQA folded into the query rows, so KV heads are never
repeated) makes the whole layer one batched SDPA call of cost O(T x (block + W)). Every slice shares one
band mask (key c of the slice is visible to row r iff r <= c <= r + W - 1); block 0 additionally masks
the left padding, and packed documents add a per-slice document comparison.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention_mask import allowed_mask


# Below ~1k keys one (T, T) masked SDPA call is as fast as the slices (measured here for Gemma 1B heads,
# fwd+bwd: T=512 W=128 256 ms vs 296 ms; T=1024 W=512 1.9 s vs 0.38 s, SDPA's masked backward being the
# slow part) and it keeps transformers' exact order of operations, so short sequences stay bit-identical.
SLICES_FROM_KEYS = 1024


def default_block(window: int) -> int:
    """Query rows per slice. Small blocks waste little (a slice computes block + W - 1 keys where W are
    needed), and SDPA stays efficient since GQA folds G heads of rows into each slice: W=512 gives 64,
    measured best or within noise of the best among 32..512 for Gemma 1B heads at T=8192."""
    return max(32, min(128, window // 8))


def attention_cpu(q, k, v, causal: bool = True, window: int | None = None, scale: float | None = None,
                  document_ids: torch.Tensor | None = None, block: int | None = None) -> torch.Tensor:
    """(B, Tq, H, D) attention through SDPA; sliding windows cost O(T x W) in time and memory."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    Tq, Tk = q.shape[1], k.shape[1]
    if window is None or not causal or window >= Tk:
        return _sdpa(q, k, v, causal, None, scale, document_ids)
    block = block or default_block(window)
    if Tk < SLICES_FROM_KEYS or Tk <= 2 * window:
        return _sdpa(q, k, v, causal, window, scale, document_ids)
    if Tq <= block:  # one slice: only the last Tq + W - 1 keys can be seen (a KV-cache step is O(W))
        start = max(0, Tk - Tq - window + 1)
        docs = None if document_ids is None else document_ids[:, start:]
        return _sdpa(q, k[:, start:], v[:, start:], causal, window, scale, docs)
    return _sliding_blocks(q, k, v, window, scale, document_ids, block)


def _sdpa(q, k, v, causal, window, scale, document_ids):
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    gqa = q.shape[1] != k.shape[1]
    Tq, Tk = q.shape[2], k.shape[2]
    if document_ids is None and window is None and (Tq == Tk or not causal):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
    else:
        mask = allowed_mask(Tq, Tk, causal, window, document_ids, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)


def _sliding_blocks(q, k, v, window, scale, document_ids, block):
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    group, offset = H // Hkv, Tk - Tq
    n_blocks = math.ceil(Tq / block)
    pad = n_blocks * block - Tq
    span = block + window - 1  # keys per slice

    # Queries: (B, T, Hkv * G, D) -> (B * n_blocks, Hkv, G * block, D); query head h = kv_head * G + g.
    qb = F.pad(q, (0, 0, 0, 0, 0, pad)).view(B, n_blocks, block, Hkv, group, D)
    qb = qb.permute(0, 1, 3, 4, 2, 5).reshape(B * n_blocks, Hkv, group * block, D)

    def slices(t):  # keys from position offset + n * block - W + 1, `span` of them, for every block n
        padded = F.pad(t, (0, 0, 0, 0, window - 1, pad))[:, offset:]
        return padded.unfold(1, span, block).permute(0, 1, 2, 4, 3).reshape(B * n_blocks, Hkv, span, D)

    kb, vb = slices(k), slices(v)
    mask = _slice_mask(B, n_blocks, block, span, window, offset, document_ids, q.device)
    mask = mask.repeat(1, 1, group, 1) if group > 1 else mask
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
    out = out.view(B, n_blocks, Hkv, group, block, D).permute(0, 1, 4, 2, 3, 5)
    return out.reshape(B, n_blocks * block, H, D)[:, :Tq]


def _slice_mask(B, n_blocks, block, span, window, offset, document_ids, device) -> torch.Tensor:
    """(B * n_blocks, 1, block, span) boolean mask of which slice keys each query row may see."""
    rows = torch.arange(block, device=device)[:, None]
    cols = torch.arange(span, device=device)[None, :]
    band = (cols >= rows) & (cols <= rows + window - 1)  # keys p - W + 1 .. p of the query at row r
    first_key = offset - window + 1 + block * torch.arange(n_blocks, device=device)
    real_key = (first_key[:, None] + cols) >= 0  # the left padding of the first slices
    mask = band[None] & real_key[:, None, :]  # (n_blocks, block, span)
    if document_ids is None:
        return mask.expand(B, -1, -1, -1).reshape(B * n_blocks, 1, block, span)
    pad = n_blocks * block - (document_ids.shape[1] - offset)
    # Padding gets document -1: padded query rows then see their padded selves (never a NaN row).
    doc_keys = F.pad(document_ids, (window - 1, pad), value=-1)[:, offset:].unfold(1, span, block)
    doc_queries = F.pad(document_ids[:, offset:], (0, pad), value=-1).view(B, n_blocks, block)
    same_doc = doc_queries[..., None] == doc_keys[:, :, None, :]  # (B, n_blocks, block, span)
    return (mask[None] & same_doc).reshape(B * n_blocks, 1, block, span)
