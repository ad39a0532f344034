"""Which implementation an op runs: the `backend` argument every public kernel function takes.

- "auto": on CUDA, flash-attn for attention when installed and able, else Triton; on CPU the fast
  PyTorch path. MINIBRIDGE_KERNEL_BACKEND overrides "auto" for a whole run (e.g. "ref" to debug).
- "triton": the Triton kernels (CUDA, or any device under TRITON_INTERPRET=1).
- "flash": flash-attn (attention only, CUDA, fp16/bf16).
- "cpu": the fast PyTorch path (any device; the name says where it is the default).
- "ref": the plain PyTorch reference, the oracle of the tests.
"""

from __future__ import annotations

import os

import torch

from ._triton import HAS_TRITON, TRITON_WANTED, triton_runs_on

BACKENDS = ("auto", "triton", "flash", "cpu", "ref")


def resolve_backend(backend: str, tensor: torch.Tensor, op: str, flash_able: bool = False) -> str:
    """The concrete backend for `op` on `tensor`; `flash_able` says flash-attn could run this call."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = os.environ.get("MINIBRIDGE_KERNEL_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"MINIBRIDGE_KERNEL_BACKEND={backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if not tensor.is_cuda:
            return "cpu"
        if flash_able:
            return "flash"
        return "triton" if HAS_TRITON else "cpu"
    if backend == "triton" and not triton_runs_on(tensor):
        reason = ("this torch has no CUDA and TRITON_INTERPRET is unset, so Triton was not loaded" if not TRITON_WANTED
                  else "Triton is not installed" if not HAS_TRITON else f"the tensor is on {tensor.device}")
        raise RuntimeError(f"{op}: backend='triton' cannot run: {reason} (set TRITON_INTERPRET=1 to interpret on CPU)")
    if backend == "flash" and not flash_able:
        raise RuntimeError(f"{op}: backend='flash' needs flash-attn installed, a CUDA tensor in fp16/bf16, "
                           "head_dim <= 256 and no packed documents with causal=False")
    return backend
