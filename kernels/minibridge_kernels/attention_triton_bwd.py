"""Flash-attention 2 backward in Triton (the forward and the masking rules: `attention_triton.py`; the
tile helpers shared with it: `attention_triton_shared.py`).

With P = softmax(S), S = q k^T * scale, recomputed blockwise from the forward's log-sum-exp
(P = exp(S - lse), no normalisation pass needed):
  dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta),   dQ = dS K * scale,   dK = dS^T Q * scale,
where delta = rowsum(dO * O) (= rowsum(P * dP)) comes from a small preprocess kernel.

Three kernels, no atomics (deterministic):
- `_bwd_preprocess`: delta (B, H, Tq) in fp32.
- `_bwd_dkdv_kernel`: one program per BLOCK_N keys of one (batch, KV head). It loops over the
  H // Hkv query heads of its group and, for each, over the query blocks that can see one of its
  keys: causal queries at positions start_n .. start_n + BLOCK_N - 1 + W - 1 only, so a local layer
  costs O(Tk x W). dK and dV accumulate in fp32 in registers and are stored once.
- `_bwd_dq_kernel`: one program per BLOCK_M queries of one (batch, head), over the same key blocks
  as the forward; dQ accumulates in fp32.
"""

from __future__ import annotations

import torch

from ._triton import tl, triton
from .attention_triton_shared import (
    LOG2E, block_sizes, document_args, dot_config, head_dim_block, key_range, load_document_ids, preprocess_rows,
    program_tile, tile_allowed, tile_dot, tile_offsets,
)
from .launch import check_grid, target_arch


@triton.jit
def _bwd_preprocess(O, DO, DELTA, sob, sot, soh, sod, sgb, sgt, sgh, sgd, H, Tq, D,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bh, tile = program_tile(tl.cdiv(Tq, BLOCK_M))
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < Tq)[:, None] & (offs_d < D)[None, :]
    o = tl.load(O + b * sob + h * soh + tile_offsets(offs_m, offs_d, sot, sod), mask=mask, other=0.0)
    do = tl.load(DO + b * sgb + h * sgh + tile_offsets(offs_m, offs_d, sgt, sgd), mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + (b * H + h) * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DOC,
    sqb, sqt, sqh, sqd, skb, skt, skh, skd, svb, svt, svh, svd, sgb, sgt, sgh, sgd,
    sdkb, sdkt, sdkh, sdkd, sdvb, sdvt, sdvh, sdvd, sdb, sdt,
    H, Hkv, GROUP, Tq, Tk, D, window, scale, qk_scale,
    IS_CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bh, tile = program_tile(tl.cdiv(Tk, BLOCK_N))
    start_n = tile * BLOCK_N
    b = (pid_bh // Hkv).to(tl.int64)
    hk = (pid_bh % Hkv).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < Tk
    d_ok = offs_d < D
    kv_mask = col_ok[:, None] & d_ok[None, :]
    k = tl.load(K + b * skb + hk * skh + tile_offsets(offs_n, offs_d, skt, skd), mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + hk * svh + tile_offsets(offs_n, offs_d, svt, svd), mask=kv_mask, other=0.0)
    doc_k = load_document_ids(DOC, b, offs_n, col_ok, sdb, sdt, HAS_DOCS)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    offset = Tk - Tq  # query i sits at position offset + i
    if IS_CAUSAL:  # queries at positions start_n .. start_n + BLOCK_N - 1 + window - 1 see these keys
        lo = tl.maximum(start_n - offset, 0) // BLOCK_M * BLOCK_M
        hi = tl.minimum(start_n + BLOCK_N - 1 + window - offset, Tq)
    else:
        lo = 0
        hi = Tq
    for g in range(GROUP):
        h = hk * GROUP + g
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sgb + h * sgh
        row_base = (b * H + h) * Tq
        for start_m in range(lo, hi, BLOCK_M):
            start_m = tl.multiple_of(start_m, BLOCK_M)
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < Tq
            q_mask = row_ok[:, None] & d_ok[None, :]
            q = tl.load(q_base + tile_offsets(offs_m, offs_d, sqt, sqd), mask=q_mask, other=0.0)
            do = tl.load(do_base + tile_offsets(offs_m, offs_d, sgt, sgd), mask=q_mask, other=0.0)
            lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634  # * LOG2E
            delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
            q_pos = offset + offs_m
            doc_q = load_document_ids(DOC, b, q_pos, row_ok, sdb, sdt, HAS_DOCS)
            ok = tile_allowed(q_pos, offs_n, row_ok, col_ok, window, doc_q, doc_k, IS_CAUSAL, HAS_DOCS)
            s = tile_dot(q, tl.trans(k), DOT_FP32, PRECISION) * qk_scale
            p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)  # (BLOCK_M, BLOCK_N)
            dv += tile_dot(tl.trans(p.to(do.dtype)), do, DOT_FP32, PRECISION)
            dp = tile_dot(do, tl.trans(v), DOT_FP32, PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tile_dot(tl.trans(ds.to(q.dtype)), q, DOT_FP32, PRECISION)
    tl.store(DK + b * sdkb + hk * sdkh + tile_offsets(offs_n, offs_d, sdkt, sdkd),
             (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * sdvb + hk * sdvh + tile_offsets(offs_n, offs_d, sdvt, sdvd),
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, DOC,
    sqb, sqt, sqh, sqd, skb, skt, skh, skd, svb, svt, svh, svd, sgb, sgt, sgh, sgd,
    sdqb, sdqt, sdqh, sdqd, sdb, sdt,
    H, GROUP, Tq, Tk, D, window, scale, qk_scale,
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
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + tile_offsets(offs_m, offs_d, sqt, sqd), mask=q_mask, other=0.0)
    do = tl.load(DO + b * sgb + h * sgh + tile_offsets(offs_m, offs_d, sgt, sgd), mask=q_mask, other=0.0)
    row_base = (b * H + h) * Tq
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634  # * LOG2E
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    q_pos = Tk - Tq + offs_m
    doc_q = load_document_ids(DOC, b, q_pos, row_ok, sdb, sdt, HAS_DOCS)
    K += b * skb + hk * skh
    V += b * svb + hk * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    lo, hi = key_range(start_m, Tq, Tk, window, IS_CAUSAL, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        k_pos = start_n + offs_n
        col_ok = k_pos < Tk
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + tile_offsets(k_pos, offs_d, skt, skd), mask=kv_mask, other=0.0)
        v = tl.load(V + tile_offsets(k_pos, offs_d, svt, svd), mask=kv_mask, other=0.0)
        doc_k = load_document_ids(DOC, b, k_pos, col_ok, sdb, sdt, HAS_DOCS)
        ok = tile_allowed(q_pos, k_pos, row_ok, col_ok, window, doc_q, doc_k, IS_CAUSAL, HAS_DOCS)
        s = tile_dot(q, tl.trans(k), DOT_FP32, PRECISION) * qk_scale
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        dp = tile_dot(do, tl.trans(v), DOT_FP32, PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tile_dot(ds.to(k.dtype), k, DOT_FP32, PRECISION)
    tl.store(DQ + b * sdqb + h * sdqh + tile_offsets(offs_m, offs_d, sdqt, sdqd),
             (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


def backward_outputs(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Empty contiguous gradients of the inputs' shapes and dtypes."""
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in inputs)


def attention_triton_backward(grad_out, q, k, v, out, lse, causal: bool, window: int | None, scale: float,
                              document_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in the inputs' dtypes and shapes (contiguous), from the forward's out and lse."""
    (B, Tq, H, D), Tk, Hkv = q.shape, k.shape[1], k.shape[2]
    dq, dk, dv = backward_outputs(q, k, v)
    if Tq == 0 or B * H * D == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty(B, H, Tq, dtype=torch.float32, device=q.device)
    BLOCK_D = head_dim_block(D)
    dot_fp32, precision = dot_config(q.dtype)
    doc, sdb, sdt, has_docs = document_args(document_ids, q)
    window_arg = Tk if window is None else window
    flags = dict(IS_CAUSAL=causal, HAS_DOCS=has_docs, DOT_FP32=dot_fp32, PRECISION=precision, BLOCK_D=BLOCK_D)
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())

    arch = target_arch(q.device)
    block_m = preprocess_rows(D)
    grid = (triton.cdiv(Tq, block_m) * B * H,)
    check_grid(grid, "attention_triton_backward")
    _bwd_preprocess[grid](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), H, Tq, D, BLOCK_M=block_m, BLOCK_D=BLOCK_D)

    block_m, block_n, warps, stages = block_sizes(D, "dkdv", q.dtype, arch)
    grid = (triton.cdiv(Tk, block_n) * B * Hkv,)
    check_grid(grid, "attention_triton_backward")
    _bwd_dkdv_kernel[grid](
        q, k, v, grad_out, lse, delta, dk, dv, doc, *strides, *dk.stride(), *dv.stride(), sdb, sdt,
        H, Hkv, H // Hkv, Tq, Tk, D, window_arg, scale, scale * LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, **flags)

    block_m, block_n, warps, stages = block_sizes(D, "dq", q.dtype, arch)
    grid = (triton.cdiv(Tq, block_m) * B * H,)
    check_grid(grid, "attention_triton_backward")
    _bwd_dq_kernel[grid](
        q, k, v, grad_out, lse, delta, dq, doc, *strides, *dq.stride(), sdb, sdt,
        H, H // Hkv, Tq, Tk, D, window_arg, scale, scale * LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, **flags)
    return dq, dk, dv
