"""What the Triton attention forward (`attention_triton.py`) and backward (`attention_triton_bwd.py`)
share: the `@triton.jit` tile helpers both kernels inline, and the host-side launch choices.

The masking rules, the key ranges visited and the dot precisions are described in the docstring of
`attention_triton.py`.
"""

from __future__ import annotations

import torch

from ._triton import dot_in_fp32, interpreting, tl, triton
from .launch import shared_memory_limit

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
def tile_offsets(rows, cols, stride_row, stride_col):
    """(len(rows), len(cols)) element offsets, in int64: rows x stride_row passes 2^31 as soon as
    T x H x D does (Llama 405B, 128 heads x 128 dims, beyond 128k tokens on one rank), and int32
    products would wrap to addresses outside the tensor."""
    return rows.to(tl.int64)[:, None] * stride_row + cols.to(tl.int64)[None, :] * stride_col


@triton.jit
def program_tile(n_tiles):
    """(head index of batch x heads, first row of the tile) of this program. The grid is one axis of
    n_tiles x B x heads programs (CUDA allows 2^31 - 1 on x but 65,535 on y: B x H passes that with
    large decode batches); consecutive programs share a head, so its K/V stays in L2."""
    pid = tl.program_id(0)
    return pid // n_tiles, pid % n_tiles


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
def block_sizes(D: int, kernel: str, dtype: torch.dtype = torch.bfloat16,
                arch: int | None = None) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for kernel "fwd", "dkdv" or "dq", head_dim D, inputs of
    `dtype`, on compute capability `arch` (`launch.target_arch`; None: the smallest shared memory).

    BLOCK_M counts queries, BLOCK_N keys. The first choice whose shared memory fits the target's
    per-block limit is taken (`shared_memory_bytes`; the AOT check compiles every choice made for
    sm_80, sm_90 and sm_100 and fails if one does not fit). fp32 tiles take twice the bytes of bf16
    ones and their IEEE dots more registers, so fp32 starts from smaller tiles. The interpreter runs
    each program in Python: small blocks waste the least work on the short sequences of the tests.
    """
    if interpreting():
        return 16, 16, 4, 1
    limit = shared_memory_limit(arch)
    for choice in _choices(D, kernel, dtype.itemsize):
        if shared_memory_bytes(kernel, D, dtype.itemsize, *choice) <= limit:
            return choice
    return choice  # the smallest: fits every listed target (the AOT check says so)


# Candidate (BLOCK_M, BLOCK_N, num_warps, num_stages), best first, by (kernel, bytes per element, head_dim
# block 64 / 128 / 256). dkdv: a program holds BLOCK_N keys and their fp32 dK, dV accumulators. fp32 takes
# half the tiles of the 16-bit dtypes (4-byte tiles, IEEE dots). Warps and stages where the AOT check
# measured spills otherwise: the 16-bit forward and dkdv at D = 64 take 8 warps (with 4, 255 registers
# and spills: forward 844 B on sm_100, dkdv 52 B on sm_80), dkdv at D = 64 one stage (two: 28 B on sm_80).
_CHOICES = {
    ("fwd", 2, 64): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
    ("fwd", 2, 128): [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2)],
    ("fwd", 2, 256): [(64, 32, 8, 2), (64, 32, 8, 1)],
    ("dkdv", 2, 64): [(32, 64, 8, 1)],
    ("dkdv", 2, 128): [(32, 64, 8, 2), (32, 64, 8, 1)],
    ("dkdv", 2, 256): [(32, 32, 8, 1)],
    ("dq", 2, 64): [(64, 32, 4, 2), (64, 32, 4, 1)],
    ("dq", 2, 128): [(64, 32, 8, 2), (64, 32, 8, 1)],
    ("dq", 2, 256): [(32, 32, 8, 1)],
    ("fwd", 4, 64): [(64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 1)],
    ("fwd", 4, 128): [(64, 64, 8, 2), (64, 32, 8, 2), (32, 32, 4, 1)],
    ("fwd", 4, 256): [(32, 32, 8, 1), (16, 32, 4, 1)],
    ("dkdv", 4, 64): [(32, 32, 4, 1), (16, 32, 4, 1)],
    ("dkdv", 4, 128): [(32, 32, 8, 1), (16, 32, 4, 1)],
    ("dkdv", 4, 256): [(16, 32, 8, 1), (16, 16, 4, 1)],
    ("dq", 4, 64): [(32, 32, 4, 1), (16, 32, 4, 1)],
    ("dq", 4, 128): [(32, 32, 8, 1), (16, 32, 4, 1)],
    ("dq", 4, 256): [(16, 32, 8, 1), (16, 16, 4, 1)],
}


def _choices(D: int, kernel: str, itemsize: int) -> list[tuple[int, int, int, int]]:
    return _CHOICES[kernel, 4 if itemsize == 4 else 2, max(64, head_dim_block(D))]


def shared_memory_bytes(kernel: str, D: int, itemsize: int, block_m: int, block_n: int, warps: int,
                        stages: int) -> int:
    """Shared memory Triton gives a launch, an upper estimate fitted to the AOT check's measurements
    (Triton 3.9, sm_80/90/100): the tiles that are pipelined (num_stages - 1 copies in flight, at least
    one), the tile the loop keeps, and the fp32 (BLOCK_M, BLOCK_N) scores converted between layouts."""
    bd = head_dim_block(D)
    buffers = max(stages - 1, 1)
    if kernel == "fwd":  # K and V tiles pipelined; Q kept
        return buffers * 2 * block_n * bd * itemsize + block_m * bd * itemsize + block_m * block_n * 4 + 1024
    if kernel == "dkdv":  # Q and dO tiles pipelined; K, V kept
        return buffers * 2 * block_m * bd * itemsize + 2 * block_n * bd * itemsize + block_m * block_n * 4 + 1024
    return buffers * 2 * block_n * bd * itemsize + 2 * block_m * bd * itemsize + block_m * block_n * 4 + 1024


def preprocess_rows(D: int) -> int:
    """BLOCK_M of the backward's delta = rowsum(dO * O) kernel: 4k elements of each per program (64 rows
    of 128 spilled 200 B on sm_100 with 4 warps)."""
    return 16 if interpreting() else max(16, 4096 // head_dim_block(D))


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
