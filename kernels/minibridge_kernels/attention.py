"""Causal attention with GQA, sliding windows and packed documents: the one entry point the models call.

Tensors are (batch, seq, heads, head_dim); K and V may have fewer heads than Q (grouped-query
attention: query head h reads KV head h // (H // Hkv)). Backends (see `backend.py`):

- "triton" (`attention_triton.py`): flash-attention 2 forward and backward, visiting only the key
  blocks inside the causal window, so a local layer costs O(T x W).
- "flash": flash-attn's kernels when installed (`attention_flash.py`).
- "cpu" (`attention_cpu.py`): PyTorch SDPA; sliding-window layers run blockwise over the window, O(T x W).
- "ref": `attention_ref` below, plain PyTorch, the tests' oracle.
"""

from __future__ import annotations

import torch

from .attention_cpu import attention_cpu
from .attention_flash import attention_flash, flash_able
from .attention_mask import allowed_mask, check_attention_args, document_ids_from_cu_seqlens
from .attention_triton import attention_triton
from .backend import resolve_backend


def attention_ref(q, k, v, causal: bool = True, window: int | None = None, scale: float | None = None,
                  document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch: scores in the inputs' dtype, softmax in fp32, KV heads repeated for GQA."""
    group = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    mask = allowed_mask(q.shape[1], k.shape[1], causal, window, document_ids, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    softmax_dtype = torch.promote_types(scores.dtype, torch.float32)  # fp32 at least, fp64 for an oracle
    probs = torch.softmax(scores.to(softmax_dtype), dim=-1).nan_to_num(0.0)  # a row with no key gives 0
    return torch.einsum("bhqk,bkhd->bqhd", probs.to(v.dtype), v)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, window: int | None = None,
    scale: float | None = None, *, document_ids: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None, backend: str = "auto",
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v over (B, T, H, D) tensors; returns (B, Tq, H, D).

    causal: query i (at position Tk - Tq + i) sees keys up to its own position. window=W keeps keys
    p - W + 1 .. p (HF semantics); a window >= Tk is no window. document_ids (B, Tk) or cu_seqlens
    (cumulative document lengths of a single packed row, flash-attn's convention) keep attention
    inside each document.
    """
    _check_shapes(q, k, v, causal, window, document_ids, cu_seqlens)
    if cu_seqlens is not None:
        document_ids = document_ids_from_cu_seqlens(cu_seqlens, k.shape[1])
    if window is not None and window >= k.shape[1]:
        window = None  # every key is inside the window: plain causal attention
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    chosen = resolve_backend(backend, q, "attention", flash_able(q, k, causal, document_ids))
    if chosen == "triton":
        return attention_triton(q, k, v, causal, window, scale, document_ids)
    if chosen == "flash":
        return attention_flash(q, k, v, causal, window, scale, document_ids)
    if chosen == "cpu":
        return attention_cpu(q, k, v, causal, window, scale, document_ids)
    return attention_ref(q, k, v, causal, window, scale, document_ids)


def _check_shapes(q, k, v, causal, window, document_ids, cu_seqlens) -> None:
    check_attention_args("attention", q, k, v, causal, window, document_ids)
    if document_ids is not None and cu_seqlens is not None:
        raise ValueError("attention: give document_ids or cu_seqlens, not both")
    if cu_seqlens is not None and q.shape[0] != 1:
        raise ValueError(f"attention: cu_seqlens describes one packed row, but the batch has {q.shape[0]}; use document_ids")
