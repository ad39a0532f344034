"""Flash-attention 2 in Triton: forward here, backward in `attention_triton_bwd.py`, the tile helpers
and launch choices both use in `attention_triton_shared.py`.

Layout: q (B, Tq, H, D), k and v (B, Tk, Hkv, D), any strides (views of fused projections and
transposes are fine); the output is (B, Tq, H, D), contiguous, in q's dtype. Grouped-query attention
never repeats K/V in memory: the program of query head h reads KV head h // (H // Hkv).

Masking rules (the same as `attention_mask.allowed_mask`). Queries are the last Tq of the Tk
positions, query i sits at position p = Tk - Tq + i (bottom-right alignment: a KV-cache step or a
prefill chunk). Key j is allowed for query i iff
  - causal:     j <= p, and with a window W also j > p - W (keys p - W + 1 .. p, HF semantics,
                flash-attn's window_size=(W - 1, 0)); a window >= Tk is no window;
  - documents:  document_ids[b, j] == document_ids[b, p] (packed sequences), combined with the above;
  - causal=False allows every key (up to the documents), and takes no window.
A query with no allowed key (impossible for causal self-attention) outputs 0 and has lse = -inf.

Forward (one program per BLOCK_M queries of one (batch, head)): the program walks the key blocks
in order with the online softmax: for each block, s = q k^T * scale (fp32 accumulation), masked
entries set to -inf, running row max m and row sum l rescaled by exp(m_old - m_new), and the output
accumulator acc rescaled likewise plus p v. Exponentials are exp2 of scores pre-multiplied by
log2(e). At the end out = acc / l and the log-sum-exp lse = m + log l (natural log, fp32, (B, H, Tq))
is kept for the backward. Only the key blocks that can hold an allowed key are visited: from the
block holding key p_first - W + 1 (the window's left edge of the block's first query) up to the
causal diagonal of its last query, so a local layer costs O(Tq x W), not O(Tq x Tk).

Precision: fp32 inputs take IEEE fp32 dots (no TF32), bf16/fp16 inputs bf16/fp16 dots with fp32
accumulation. Triton 3.9's interpreter computes `tl.dot` on bf16 operands wrongly, so under
TRITON_INTERPRET=1 bf16 operands are upcast to fp32 first (DOT_FP32, see `_triton.py`).
"""

from __future__ import annotations

import torch

from ._triton import tl, triton
from .attention_mask import check_attention_args
from .attention_triton_bwd import attention_triton_backward, backward_outputs
from .attention_triton_shared import (
    LOG2E, block_sizes, document_args, dot_config, head_dim_block, key_range, load_document_ids, program_tile,
    tile_allowed, tile_dot, tile_offsets,
)
from .custom_ops import kernel_op
from .launch import check_grid, target_arch


# ----------------------------------------------------------------------------- forward kernel
@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, DOC,
    sqb, sqt, sqh, sqd, skb, skt, skh, skd, svb, svt, svh, svd, sob, sot, soh, sod, sdb, sdt,
    H, GROUP, Tq, Tk, D, window, qk_scale,
    IS_CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh, tile = program_tile(tl.cdiv(Tq, BLOCK_M))
    start_m = tile * BLOCK_M
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Tq
    d_ok = offs_d < D
    q_pos = Tk - Tq + offs_m
    q = tl.load(Q + b * sqb + h * sqh + tile_offsets(offs_m, offs_d, sqt, sqd),
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    doc_q = load_document_ids(DOC, b, q_pos, row_ok, sdb, sdt, HAS_DOCS)
    K += b * skb + hk * skh
    V += b * svb + hk * svh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max of the log2-scaled scores
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running row sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, hi = key_range(start_m, Tq, Tk, window, IS_CAUSAL, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k_pos = start_n + offs_n
        col_ok = k_pos < Tk
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + tile_offsets(k_pos, offs_d, skt, skd), mask=kv_mask, other=0.0)
        s = tile_dot(q, tl.trans(k), DOT_FP32, PRECISION) * qk_scale
        doc_k = load_document_ids(DOC, b, k_pos, col_ok, sdb, sdt, HAS_DOCS)
        ok = tile_allowed(q_pos, k_pos, row_ok, col_ok, window, doc_q, doc_k, IS_CAUSAL, HAS_DOCS)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet: no NaN
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + tile_offsets(k_pos, offs_d, svt, svd), mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tile_dot(p.to(v.dtype), v, DOT_FP32, PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) / 1.4426950408889634)  # / LOG2E
    tl.store(O + b * sob + h * soh + tile_offsets(offs_m, offs_d, sot, sod),
             out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + (b * H + h) * Tq + offs_m, lse, mask=row_ok)


# ----------------------------------------------------------------------------- host side
def _check(q, k, v, causal, window, document_ids) -> None:
    check_attention_args("attention_triton", q, k, v, causal, window, document_ids)
    if q.shape[-1] > 256:
        raise ValueError(f"attention_triton: head_dim {q.shape[-1]} > 256 is not supported")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention_triton: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")


def _forward_outputs(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty out (q's shape and dtype, contiguous) and lse (B, H, Tq) fp32."""
    B, Tq, H, _ = q.shape
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(B, H, Tq, dtype=torch.float32,
                                                                             device=q.device)


def attention_triton_forward(q, k, v, causal: bool, window: int | None, scale: float,
                             document_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel alone: (out (B, Tq, H, D) in q's dtype, lse (B, H, Tq) fp32, natural log)."""
    (B, Tq, H, D), Tk, Hkv = q.shape, k.shape[1], k.shape[2]
    out, lse = _forward_outputs(q)
    if out.numel() == 0:
        return out, lse
    BLOCK_M, BLOCK_N, warps, stages = block_sizes(D, "fwd", q.dtype, target_arch(q.device))
    dot_fp32, precision = dot_config(q.dtype)
    doc, sdb, sdt, has_docs = document_args(document_ids, q)
    grid = (triton.cdiv(Tq, BLOCK_M) * B * H,)
    check_grid(grid, "attention_triton_forward")
    _fwd_kernel[grid](
        q, k, v, out, lse, doc, *q.stride(), *k.stride(), *v.stride(), *out.stride(), sdb, sdt,
        H, H // Hkv, Tq, Tk, D, Tk if window is None else window, scale * LOG2E,
        IS_CAUSAL=causal, HAS_DOCS=has_docs, DOT_FP32=dot_fp32, PRECISION=precision,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=head_dim_block(D), num_warps=warps, num_stages=stages,
    )
    return out, lse


# ----------------------------------------------------------------------------- custom ops
# torch.ops.minibridge.attention_triton(_backward) (custom_ops.py): one graph node each under torch.compile.
@kernel_op("attention_triton")
def attention_triton_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: int | None,
                        scale: float, document_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of the forward kernel; the backward recomputes probabilities from lse."""
    return attention_triton_forward(q, k, v, causal, window, scale, document_ids)


@attention_triton_op.register_fake
def _(q, k, v, causal, window, scale, document_ids):
    return _forward_outputs(q)


@kernel_op("attention_triton_backward")
def attention_triton_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 out: torch.Tensor, lse: torch.Tensor, causal: bool, window: int | None, scale: float,
                                 document_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), contiguous, from the forward's out and lse."""
    return attention_triton_backward(grad_out, q, k, v, out, lse, causal, window, scale, document_ids)


@attention_triton_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, causal, window, scale, document_ids):
    return backward_outputs(q, k, v)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, window, scale, document_ids = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, document_ids)
    ctx.mark_non_differentiable(lse)
    ctx.causal, ctx.window, ctx.scale = causal, window, scale


def _backward(ctx, grad_out, _):
    q, k, v, out, lse, document_ids = ctx.saved_tensors
    dq, dk, dv = attention_triton_backward_op(grad_out, q, k, v, out, lse, ctx.causal, ctx.window, ctx.scale,
                                              document_ids)
    return dq, dk, dv, None, None, None, None


attention_triton_op.register_autograd(_backward, setup_context=_setup_context)


def attention_triton(q, k, v, causal: bool = True, window: int | None = None, scale: float | None = None,
                     document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with the masking rules of the module docstring; differentiable
    in q, k and v. q (B, Tq, H, D), k and v (B, Tk, Hkv, D); returns (B, Tq, H, D) in q's dtype."""
    _check(q, k, v, causal, window, document_ids)
    if window is not None and window >= k.shape[1]:
        window = None  # every key is inside the window
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return attention_triton_op(q, k, v, causal, window, scale, document_ids)[0]
