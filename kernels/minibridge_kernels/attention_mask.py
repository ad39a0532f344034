"""Who may attend to whom: the masking rules every attention backend implements.

Queries are the last Tq of Tk positions (bottom-right alignment, as a KV-cache step or a prefill
chunk sees them): query i sits at position Tk - Tq + i. With a window W a query at position p sees
keys p - W + 1 .. p (W keys, itself included): transformers' sliding-window semantics, and flash-attn's
window_size=(W - 1, 0). Packed documents are given per token as `document_ids` (B, Tk), or as
cumulative sequence lengths (flash-attn's varlen convention) converted by the helpers below.
"""

from __future__ import annotations

import torch


def allowed_mask(
    q_len: int, k_len: int, causal: bool = True, window: int | None = None,
    document_ids: torch.Tensor | None = None, device=None,
) -> torch.Tensor:
    """Boolean mask, True where attention is allowed: (q_len, k_len), or (B, 1, q_len, k_len) with documents.

    The queries are the last q_len of the k_len positions (query i at position k_len - q_len + i), the
    rule of `allowed_mask_from_positions`; `document_ids` (B, k_len) keeps each query inside its document.
    """
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    allowed = allowed_mask_from_positions(q_pos, torch.arange(k_len, device=device), causal, window)
    if document_ids is not None:
        q_doc = document_ids[:, k_len - q_len:]
        allowed = allowed & (q_doc[:, None, :, None] == document_ids[:, None, None, :])
    return allowed


def allowed_mask_from_positions(q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool = True,
                                window: int | None = None) -> torch.Tensor:
    """(len(q_pos), len(k_pos)) bool, True where a query at position q_pos[i] may see the key at k_pos[j].

    Positions are any 1-D integer tensors (a zigzag context-parallel chunk, a KV-cache step). causal:
    k <= q, and with a window W also k > q - W (keys q - W + 1 .. q). causal=False allows every key and
    ignores the window.
    """
    if not causal:
        return torch.ones(q_pos.shape[0], k_pos.shape[0], dtype=torch.bool, device=q_pos.device)
    allowed = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= k_pos[None, :] > q_pos[:, None] - window
    return allowed


def document_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """(1, T) document index of each token from cumulative lengths [0, l0, l0 + l1, ..., T]."""
    cu = cu_seqlens.to(torch.int64)
    if cu.dim() != 1 or cu.numel() < 2 or cu[0] != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must be a 1-D non-decreasing tensor starting at 0, got {cu_seqlens.tolist()}")
    total = int(cu[-1]) if total is None else total
    if int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens ends at {int(cu[-1])} but the sequence has {total} tokens")
    lengths = cu[1:] - cu[:-1]
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths)[None]


def cu_seqlens_from_document_ids(document_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative lengths (int32) of the documents of a flattened (B, T) batch, and the longest one.

    A new document starts wherever the id changes within a row and at every row start, so rows never
    merge even when the last document of one row shares an id with the first of the next.
    """
    B, T = document_ids.shape
    starts = torch.ones(B, T, dtype=torch.bool, device=document_ids.device)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    begin = starts.flatten().nonzero().flatten()
    cu = torch.cat([begin, torch.tensor([B * T], device=begin.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def check_attention_args(op: str, q, k, v, causal: bool, window: int | None, document_ids) -> None:
    """Shapes and masking arguments every backend relies on; errors name the op and the values."""
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"{op}: expected q (B, Tq, H, D) and k, v (B, Tk, Hkv, D) of one shape; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    (B, Tq, H, D), (Bk, Tk, Hkv, Dk) = q.shape, k.shape
    if B != Bk or D != Dk or H % Hkv:
        raise ValueError(f"{op}: q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim, "
                         f"or {H} query heads are not a multiple of {Hkv} KV heads")
    if Tq > Tk:
        raise ValueError(f"{op}: {Tq} queries but only {Tk} keys; queries are the last Tq positions")
    if window is not None and (not causal or window < 1):
        raise ValueError(f"{op}: window={window} needs causal=True and a window of at least 1")
    if document_ids is not None and (tuple(document_ids.shape) != (B, Tk) or document_ids.device != q.device):
        raise ValueError(f"{op}: document_ids has shape {tuple(document_ids.shape)} on {document_ids.device}, "
                         f"expected {(B, Tk)} on {q.device}")
