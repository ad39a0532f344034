"""Custom kernels, installed as `minibridge.kernels`: Triton on a GPU, fast PyTorch on CPU.

One file per op, each laid out Triton kernels -> host function -> torch custom op (`torch.ops.minibridge.*`
with a fake implementation and registered autograd, custom_ops.py) -> `*_ref` in plain PyTorch (the CPU
fallback, the tests' oracle and the benchmarks' baseline). Tensors are
(batch, seq, heads, head_dim). Every public op takes `backend="auto" | "triton" | "flash" | "cpu" | "ref"`
(see backend.py); the models reach them through their single dispatch points in models/common.py.
"""

from ._triton import HAS_TRITON
from .attention import attention, attention_ref
from .attention_flash import HAS_FLASH_ATTN
from .attention_mask import (
    allowed_mask, allowed_mask_from_positions, cu_seqlens_from_document_ids, document_ids_from_cu_seqlens,
)
from .backend import BACKENDS, resolve_backend
from .rms_norm import rms_norm, rms_norm_ref
from .rope import apply_rope, apply_rope_ref

__all__ = [
    "BACKENDS", "HAS_FLASH_ATTN", "HAS_TRITON", "allowed_mask", "allowed_mask_from_positions", "apply_rope",
    "apply_rope_ref", "attention", "attention_ref", "cu_seqlens_from_document_ids", "document_ids_from_cu_seqlens",
    "resolve_backend", "rms_norm", "rms_norm_ref",
]
