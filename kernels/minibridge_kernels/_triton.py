"""Triton, or a stand-in when it is not installed, so every kernel file imports on any machine.

A CPU-only torch wheel does not bring Triton. The op files still define their `@triton.jit` kernels
at import time; without Triton those definitions become stubs that explain what is missing if a
caller forces `backend="triton"`, while the `*_ref` and CPU paths keep working.

Interpreted mode: Triton reads TRITON_INTERPRET when a kernel is *decorated*, so tests set it before
`minibridge` is first imported (tests/conftest.py). In triton 3.9's interpreter `tl.dot` on bf16
operands returns garbage, so kernels take a DOT_FP32 constexpr (`dot_in_fp32(dtype)`) that upcasts
dot operands on the interpreted path only. It also truncates fp32 -> bf16 casts instead of rounding
to nearest even, so the RMSNorm and RoPE kernels store through `round_to(x, dtype, RNE_BF16)` (the
attention kernels cast plainly: interpreted bf16 outputs are truncated, within their tests' tolerance).
"""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Triton is imported only where its kernels can run: a CUDA (or ROCm) build of torch, or the CPU
# interpreter. On a CPU-only torch with triton installed the import would cost every process ~70 MB
# of resident memory and ~0.1 s for kernels that can never be launched.
# MINIBRIDGE_TRITON_COMPILE_ONLY=1 loads it anyway, uninterpreted, for compiling kernels for a GPU that is
# not here (benchmarks/kernels_aot.py: nothing is launched).
COMPILE_ONLY = os.environ.get("MINIBRIDGE_TRITON_COMPILE_ONLY", "0") == "1"
TRITON_WANTED = bool(torch.version.cuda or getattr(torch.version, "hip", None)) or interpreting() or COMPILE_ONLY
HAS_TRITON = False
if TRITON_WANTED:
    try:
        import triton
        import triton.language as tl

        HAS_TRITON = True
    except ImportError:  # pragma: no cover - exercised on machines without triton
        pass

if not HAS_TRITON:

    class _Unavailable:
        """Absorbs `triton.jit`, `tl.constexpr`, `triton.autotune(...)` and `kernel[grid](...)`."""

        def __getattr__(self, name):
            return self

        def __getitem__(self, item):
            return self

        def __call__(self, *args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return self  # used as a decorator: the kernel becomes this stub
            raise RuntimeError("Triton is not loaded (not installed, or a CPU-only torch without TRITON_INTERPRET=1): "
                               "use backend='cpu' or 'ref', or `pip install triton`")

    triton = tl = _Unavailable()


@triton.jit
def round_to(x, DTYPE: tl.constexpr, RNE_BF16: tl.constexpr):
    """fp32 x cast to DTYPE, rounding to nearest even. RNE_BF16 (interpreter only): round to bf16
    on the bits (add 0x7FFF plus the lowest kept bit, drop the low 16), as the interpreter truncates."""
    if RNE_BF16:
        if DTYPE == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(DTYPE)


def triton_runs_on(tensor: torch.Tensor) -> bool:
    """Whether a Triton kernel can take this tensor: CUDA with Triton, or any device when interpreted."""
    return HAS_TRITON and (tensor.is_cuda or interpreting())


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """Upcast tl.dot operands to fp32: needed for bf16 under the interpreter (triton 3.9 bug)."""
    return interpreting() and dtype == torch.bfloat16
