"""Rotary position embedding (rotate-half layout, HF convention): one Triton launch rotates q and k.

q (B, T, H, D) and k (B, T, Hkv, D), any strides (views of a fused projection, transposes);
cos and sin (B, T, D) or (T, D), usually the fp32 tables of `models.common.rope_tables`. The kernel
never computes an angle: it reads the table row of each (b, t), so position offsets (KV cache),
positions that restart inside a packed row and per-row positions all come for free.

With x = [x1, x2] (the two halves of a head), cos = [c1, c2], sin = [s1, s2]:
    forward   y = x * cos + rotate_half(x) * sin      y1 = x1 c1 - x2 s1,  y2 = x2 c2 + x1 s2
    backward  the transpose of that linear map:       dx1 = g1 c1 + g2 s2, dx2 = g2 c2 - g1 s1
For rope tables (c1 = c2, s1 = s2) the backward is the forward with sin negated; the kernel takes a
BACKWARD flag rather than a negated copy of the table, which keeps it exact for any table.

Numerics: the reference (HF) casts the tables to q's dtype and rounds after each product and the
sum; the kernel loads the tables as given (fp32), computes in fp32 and rounds once per output, so in
bf16 it is more accurate than the reference, by design. Outputs are new tensors (not in place).
"""

from __future__ import annotations

import torch

from ._triton import interpreting, round_to, tl, triton, triton_runs_on
from .backend import resolve_backend
from .custom_ops import kernel_op

# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _rotate_heads(X, Y, x_base, y_base, stride_xh, stride_xd, n_heads, half, c1, c2, s1, s2,
                  BACKWARD: tl.constexpr, RNE_BF16: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_HALF: tl.constexpr):
    """Rotates the n_heads heads of one (b, t) of X into Y (contiguous heads of 2 * half values)."""
    cols = tl.arange(0, BLOCK_HALF)
    col_ok = cols < half
    for h0 in range(0, n_heads, BLOCK_H):
        heads = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)
        mask = (heads < n_heads)[:, None] & col_ok[None, :]
        xp = X + x_base + heads[:, None] * stride_xh + cols[None, :] * stride_xd
        x1 = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(xp + half * stride_xd, mask=mask, other=0.0).to(tl.float32)
        if BACKWARD:
            y1 = x1 * c1 + x2 * s2
            y2 = x2 * c2 - x1 * s1
        else:
            y1 = x1 * c1 - x2 * s1
            y2 = x2 * c2 + x1 * s2
        yp = Y + y_base + heads[:, None] * (2 * half) + cols[None, :]
        tl.store(yp, round_to(y1, Y.dtype.element_ty, RNE_BF16), mask=mask)
        tl.store(yp + half, round_to(y2, Y.dtype.element_ty, RNE_BF16), mask=mask)


@triton.jit
def _rope_kernel(Q, K, COS, SIN, QO, KO, T, H, HKV, half,
                 sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d, sc_b, sc_t, sc_d, ss_b, ss_t, ss_d,
                 BACKWARD: tl.constexpr, RNE_BF16: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                 BLOCK_HALF: tl.constexpr):
    """One program per (b, t): loads that row of the tables once, then rotates all q and k heads."""
    row = tl.program_id(0).to(tl.int64)
    b = row // T
    t = row % T
    cols = tl.arange(0, BLOCK_HALF)
    ok = cols < half
    cos_row = COS + b * sc_b + t * sc_t
    sin_row = SIN + b * ss_b + t * ss_t
    c1 = tl.load(cos_row + cols * sc_d, mask=ok, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(cos_row + (cols + half) * sc_d, mask=ok, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(sin_row + cols * ss_d, mask=ok, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(sin_row + (cols + half) * ss_d, mask=ok, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(Q, QO, b * sq_b + t * sq_t, row * H * 2 * half, sq_h, sq_d, H, half, c1, c2, s1, s2,
                  BACKWARD, RNE_BF16, BLOCK_HQ, BLOCK_HALF)
    _rotate_heads(K, KO, b * sk_b + t * sk_t, row * HKV * 2 * half, sk_h, sk_d, HKV, half, c1, c2, s1, s2,
                  BACKWARD, RNE_BF16, BLOCK_HK, BLOCK_HALF)


# ----------------------------------------------------------------------------------- host functions


def _tables(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Broadcast (T, D) or (1, T, D) tables to (B, T, D) views (stride 0 over the batch)."""
    B, T, _, D = q.shape
    try:
        return cos.expand(B, T, D), sin.expand(B, T, D)
    except RuntimeError:
        raise ValueError(f"apply_rope: tables of shapes {tuple(cos.shape)}, {tuple(sin.shape)} "
                         f"for q of shape {tuple(q.shape)}; expected (B, T, D) or (T, D)") from None


def _outputs(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty contiguous tensors of q's and k's shapes and dtypes."""
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device))


def rope_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool):
    """New contiguous tensors: the rotation of q and k (or its transpose when `backward`)."""
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    qo, ko = _outputs(q, k)
    if B * T == 0:
        return qo, ko
    block_half = triton.next_power_of_2(D // 2)
    max_heads = max(1, 2048 // block_half)  # two (heads, half) tiles of at most 2k values each

    def heads_block(n):
        return min(triton.next_power_of_2(n), max_heads)

    _rope_kernel[(B * T,)](q, k, cos, sin, qo, ko, T, H, Hkv, D // 2, *q.stride(), *k.stride(),
                           *cos.stride(), *sin.stride(), BACKWARD=backward, RNE_BF16=interpreting(),
                           BLOCK_HQ=heads_block(H), BLOCK_HK=heads_block(Hkv), BLOCK_HALF=block_half, num_warps=4)
    return qo, ko


# --------------------------------------------------------------------------------------- custom op
# torch.ops.minibridge.rope_triton (custom_ops.py): one graph node under torch.compile.


@kernel_op("rope_triton")
def rope_triton_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """rope_triton as an op; cos and sin already (B, T, D) (`_tables`)."""
    return rope_triton(q, k, cos, sin, backward)


@rope_triton_op.register_fake
def _(q, k, cos, sin, backward):
    return _outputs(q, k)


def _setup_context(ctx, inputs, output):
    """No gradient for the tables: they are functions of the positions, never parameters."""
    _, _, cos, sin, backward = inputs
    ctx.save_for_backward(cos, sin)
    ctx.backward = backward


def _backward(ctx, dq, dk):
    """The transpose of the rotation is the kernel with BACKWARD flipped (and the transpose of that, the
    rotation), so a gradient of this op is the same op."""
    cos, sin = ctx.saved_tensors
    dq, dk = rope_triton_op(dq, dk, cos, sin, not ctx.backward)
    return dq, dk, None, None, None


rope_triton_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------- reference


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """transformers' `rotate_half`: [x1, x2] -> [-x2, x1] over the two halves of the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope_ref(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """HF semantics: the tables cast to each input's dtype, then x * cos + rotate_half(x) * sin.

    Bit-identical to transformers' `apply_rotary_pos_emb` (on (B, H, T, D) tensors) given the tables in
    q's dtype, as transformers' rotary embedding hands them over.
    """
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # over the head dim; (T, D) tables broadcast too
    q_tables = cos.to(q.dtype), sin.to(q.dtype)
    k_tables = q_tables if k.dtype == q.dtype else (cos.to(k.dtype), sin.to(k.dtype))  # one cast for both

    def rotate(x, cos, sin):
        return x * cos + _rotate_half(x) * sin

    return rotate(q, *q_tables), rotate(k, *k_tables)


# ---------------------------------------------------------------------------------------- public op


def _check(q, k, cos, sin) -> None:
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"apply_rope: q {tuple(q.shape)} and k {tuple(k.shape)} must be (B, T, H, D), (B, T, Hkv, D)")
    if q.shape[3] % 2:
        raise ValueError(f"apply_rope: head_dim {q.shape[3]} must be even (rotate-half layout)")
    if cos.shape != sin.shape or cos.shape[-1] != q.shape[3] or cos.dim() not in (2, 3):
        raise ValueError(f"apply_rope: tables of shapes {tuple(cos.shape)}, {tuple(sin.shape)} for q of shape "
                         f"{tuple(q.shape)}; expected (B, T, D) or (T, D)")


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q (B, T, H, D) and k (B, T, Hkv, D) with tables (B, T, D) or (T, D).

    "cpu" and "ref" both run `apply_rope_ref` (eager PyTorch is the CPU path of this memory-bound op);
    "flash" has no meaning here and runs Triton.
    """
    _check(q, k, cos, sin)
    chosen = resolve_backend(backend, q, "apply_rope", flash_able=triton_runs_on(q))
    if chosen in ("triton", "flash"):
        cos, sin = _tables(q, cos, sin)
        return rope_triton_op(q, k, cos, sin, False)
    return apply_rope_ref(q, k, cos, sin)
