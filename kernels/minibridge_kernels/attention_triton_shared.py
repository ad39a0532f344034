"""What the Triton attention forward (`attention_triton.py`) and backward (`attention_triton_bwd.py`)
share: the `@triton.jit` tile helpers both kernels inline, and the host-side launch choices.

The masking rules, the key ranges visited and the dot precisions are described in the docstring of
`attention_triton.py`.
"""

from __future__ import annotations

import torch

from ._triton import dot_in_fp32, interpreting, tl, triton

# log2(e): the kernels take exp2 of scores pre-multiplied by it. Jitted code may read only constexpr
# globals, so the kernels spell this value out where they convert the lse between natural log and log2.
LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------- device helpers
@triton.jit
def tile_dot(a, b, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b with fp32 accumulation; operands upcast to fp32 first under the interpreter for bf16."""
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def key_range(start_m, Tq, Tk, window, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi) of the keys that queries start_m .. start_m + BLOCK_M - 1 may see; lo is block-aligned.

    Causal: from the window's left edge of the first query (`window` is Tk when there is none, and
    the edge first - Tk + 1 <= 0 is clamped to 0) to the diagonal of the last query.
    """
    if IS_CAUSAL:
        first = Tk - Tq + start_m  # position of the block's first query
        lo = tl.maximum(first - window + 1, 0) // BLOCK_N * BLOCK_N
        hi = tl.minimum(first + BLOCK_M, Tk)
    else:
        lo = 0
        hi = Tk
    return lo, hi


@triton.jit
def tile_allowed(q_pos, k_pos, row_ok, col_ok, window, doc_q, doc_k, IS_CAUSAL: tl.constexpr,
                 HAS_DOCS: tl.constexpr):
    """(BLOCK_M, BLOCK_N) mask: inside the tensors, causal and in the window, same document."""
    ok = row_ok[:, None] & col_ok[None, :]
    if IS_CAUSAL:
        ok = ok & (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] > q_pos[:, None] - window)
    if HAS_DOCS:
        ok = ok & (doc_q[:, None] == doc_k[None, :])
    return ok


@triton.jit
def load_document_ids(DOC, b, pos, ok, sdb, sdt, HAS_DOCS: tl.constexpr):
    """document_ids[b, pos] (or the positions themselves when there are no documents: unused then)."""
    if HAS_DOCS:
        doc = tl.load(DOC + b * sdb + pos * sdt, mask=ok, other=-1)
    else:
        doc = pos
    return doc


# ----------------------------------------------------------------------------- launch choices
def block_sizes(D: int, kernel: str) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for kernel "fwd", "dkdv" or "dq".

    BLOCK_M counts queries, BLOCK_N keys. The interpreter runs each program in Python: small blocks
    waste the least work on the short sequences of the tests.
    """
    if interpreting():
        return 16, 16, 4, 1
    warps = 4 if D <= 64 else 8
    if kernel == "fwd":
        return (128, 64, warps, 3) if D <= 128 else (64, 32, 8, 2)
    if kernel == "dkdv":  # a program holds BLOCK_N keys and their fp32 dK, dV accumulators
        return (32, 64, warps, 2) if D <= 128 else (32, 32, 8, 1)
    return (64, 32, warps, 2) if D <= 128 else (32, 32, 8, 1)  # dq


def head_dim_block(D: int) -> int:
    """BLOCK_D: head_dim padded to a power of two, at least 16 (tl.dot's smallest tile side)."""
    return max(16, triton.next_power_of_2(D))


def dot_config(dtype: torch.dtype) -> tuple[bool, str]:
    """(DOT_FP32, PRECISION): fp32 operands take IEEE dots, never TF32."""
    upcast = dot_in_fp32(dtype)
    return upcast, "ieee" if upcast or dtype == torch.float32 else "tf32"


def document_args(document_ids: torch.Tensor | None, like: torch.Tensor):
    """(tensor, stride_b, stride_t, HAS_DOCS): a dummy pointer when there are no documents."""
    if document_ids is None:
        return like, 0, 0, False
    return document_ids, document_ids.stride(0), document_ids.stride(1), True
