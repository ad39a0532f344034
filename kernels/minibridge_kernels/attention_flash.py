"""flash-attn (Dao-AILab) when installed: dense and varlen kernels with a causal sliding window.

Our window W (keys p - W + 1 .. p) is flash-attn's window_size=(W - 1, 0); packed documents become the
varlen call with cumulative sequence lengths over the flattened batch. flash-attn aligns a shorter
query block to the bottom right of the keys (flash-attn >= 2.1), as our convention does.
"""

from __future__ import annotations

import torch

from .attention_mask import cu_seqlens_from_document_ids

try:
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    HAS_FLASH_ATTN = True
except ImportError:
    HAS_FLASH_ATTN = False


def flash_able(q: torch.Tensor, k: torch.Tensor, causal: bool, document_ids: torch.Tensor | None) -> bool:
    """Whether flash-attn can run this call: installed, CUDA, fp16/bf16, head_dim <= 256."""
    packed_ok = document_ids is None or q.shape[1] == k.shape[1]
    return (HAS_FLASH_ATTN and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] <= 256 and packed_ok)


def flash_window(window: int | None) -> tuple[int, int]:
    return (-1, -1) if window is None else (window - 1, 0)


def attention_flash(q, k, v, causal: bool, window: int | None, scale: float, document_ids=None) -> torch.Tensor:
    if not HAS_FLASH_ATTN:
        raise RuntimeError("flash-attn is not installed (pip install flash-attn on a CUDA machine)")
    if document_ids is None:
        return flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, window_size=flash_window(window))
    B, T, H, D = q.shape
    cu, longest = cu_seqlens_from_document_ids(document_ids)
    flat = [t.reshape(B * T, t.shape[2], D) for t in (q, k, v)]
    out = flash_attn_varlen_func(*flat, cu, cu, longest, longest, softmax_scale=scale, causal=causal,
                                 window_size=flash_window(window))
    return out.view(B, T, H, D)
