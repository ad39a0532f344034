"""RMSNorm for Llama 3 and Gemma 3: a Triton forward and backward, and the plain PyTorch reference.

Numerics (those of transformers' `LlamaRMSNorm` and `Gemma3RMSNorm`, which the reference reproduces bit
for bit; `minibridge.models.common.RMSNorm` runs this op):

- Both flavours normalise in fp32: rstd = 1 / sqrt(mean(x^2) + eps), normed = x * rstd.
- Llama: normed is rounded to x.dtype first, then multiplied by the weight. The kernel multiplies the
  two rounded values in fp32 and rounds once to promote_types(weight, x), which is what torch's
  `weight * normed.to(x.dtype)` does (the product of two bf16 values is exact in fp32).
- Gemma: normed * (1 + weight), all in fp32, one cast to x.dtype at the end.

Backward, with r = rstd, n = x * r and g = dL/dn:   dx = r * (g - n * mean(g * n))   (per row)
- Llama: g = dy * w (the rounding of n passes gradients through as the identity, as in autograd),
  dw = sum over rows of dy * round(n) (the value the forward really multiplied).
- Gemma: g = dy * (1 + w), dw = sum over rows of dy * n.
Everything is fp32 with one cast per output; the reference's autograd in bf16 also rounds g and the
dw products to bf16, so the kernel is at least as accurate. dw is deterministic: each program sums
its rows into one row of an fp32 (programs, D) buffer, and torch sums that buffer.

Interpreted (TRITON_INTERPRET=1), triton 3.9 truncates fp32 -> bf16 casts instead of rounding to
nearest even; `round_to` does that rounding with integer ops there, so interpreted tests see the
numerics of the GPU (where a plain cast is already round-to-nearest-even).

One program normalises BLOCK_M whole rows (a row is one tile of next_power_of_2(D) columns: fine up
to D = 16k, wider rows start spilling registers); rows may be strided (a last-dim-contiguous view
needs no copy).
"""

from __future__ import annotations

import torch

from ._triton import interpreting, round_to, tl, triton, triton_runs_on
from .backend import resolve_backend
from .custom_ops import kernel_op

# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _rms_norm_fwd_kernel(X, W, Y, RSTD, stride_x, stride_y, N, D, eps,
                         GEMMA: tl.constexpr, RNE_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    mask = row_ok[:, None] & (cols < D)[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)  # masked columns are 0: they add nothing
    normed = x * rstd[:, None]
    if GEMMA:
        y = normed * (1.0 + w[None, :])
    else:  # round normed to x's dtype, then one fp32 product of the two rounded values
        y = round_to(normed, X.dtype.element_ty, RNE_BF16).to(tl.float32) * w[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], round_to(y, Y.dtype.element_ty, RNE_BF16), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DX, DW_PART, stride_dy, stride_x, stride_dx, N, D, rows_per_program,
                         GEMMA: tl.constexpr, RNE_BF16: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    if GEMMA:
        w = 1.0 + w
    dw = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    first = pid * rows_per_program  # rows_per_program is a multiple of BLOCK_M: programs never overlap
    for start in range(first, first + rows_per_program, BLOCK_M):
        rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = rows < N
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)  # rows past N: x = dy = rstd = 0, no effect
        n = x * rstd[:, None]
        if GEMMA:
            dw += dy * n
        else:
            dw += dy * round_to(n, X.dtype.element_ty, RNE_BF16).to(tl.float32)
        g = dy * w[None, :]
        dx = rstd[:, None] * (g - n * (tl.sum(g * n, axis=1) / D)[:, None])
        dx = round_to(dx, DX.dtype.element_ty, RNE_BF16)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx, mask=mask)
    tl.store(DW_PART + pid * D + cols, tl.sum(dw, axis=0), mask=col_ok)


# ----------------------------------------------------------------------------------- host functions


def _as_rows(t: torch.Tensor, D: int) -> torch.Tensor:
    """(N, D) with unit column stride; a view when the leading dims merge, else a copy."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, D)


def _forward_outputs(x: torch.Tensor, weight: torch.Tensor, gemma: bool):
    """Empty y (x's shape, contiguous) and rstd (one fp32 per row); y's dtype is that of the reference."""
    out_dtype = x.dtype if gemma else torch.promote_types(weight.dtype, x.dtype)
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    return y, torch.empty(x.shape[:-1].numel(), dtype=torch.float32, device=x.device)


def _launch_config(D: int) -> tuple[int, int, int]:
    """BLOCK_M rows of BLOCK_D columns per program: short rows are batched, ~4k elements a tile."""
    block_d = triton.next_power_of_2(D)
    block_m = max(1, min(16, 4096 // block_d))
    num_warps = min(16, max(4, block_m * block_d // 512))
    return block_m, block_d, num_warps


def rms_norm_triton_forward(x2: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool):
    """x2 (N, D) rows -> (y (N, D), rstd (N,) fp32)."""
    N, D = x2.shape
    y, rstd = _forward_outputs(x2, weight, gemma)
    block_m, block_d, num_warps = _launch_config(D)
    grid = (triton.cdiv(N, block_m),)
    _rms_norm_fwd_kernel[grid](x2, weight, y, rstd, x2.stride(0), y.stride(0), N, D, eps, GEMMA=gemma,
                               RNE_BF16=interpreting(), BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps)
    return y, rstd


def _num_programs(device: torch.device) -> int:
    """Backward programs: enough to fill the GPU, few under the interpreter (each one is Python)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def rms_norm_triton_backward(dy2: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                             gemma: bool):
    """dy2, x2 (N, D) -> (dx (N, D) in x's dtype, dweight (D,) in the weight's dtype)."""
    N, D = x2.shape
    block_m, block_d, num_warps = _launch_config(D)
    tiles = triton.cdiv(N, block_m)
    rows_per_program = triton.cdiv(tiles, min(tiles, _num_programs(x2.device))) * block_m
    programs = triton.cdiv(N, rows_per_program)
    dx = torch.empty((N, D), dtype=x2.dtype, device=x2.device)
    dw_part = torch.empty((programs, D), dtype=torch.float32, device=x2.device)
    _rms_norm_bwd_kernel[(programs,)](dy2, x2, weight, rstd, dx, dw_part, dy2.stride(0), x2.stride(0),
                                      dx.stride(0), N, D, rows_per_program, GEMMA=gemma, RNE_BF16=interpreting(),
                                      BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps)
    return dx, dw_part.sum(0).to(weight.dtype)


# --------------------------------------------------------------------------------------- custom ops
# torch.ops.minibridge.rms_norm_triton(_backward) (custom_ops.py): one graph node each under torch.compile.


@kernel_op("rms_norm_triton")
def rms_norm_triton_op(x: torch.Tensor, weight: torch.Tensor, eps: float,
                       gemma: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y like x, rstd (rows,) fp32): the forward kernel over the rows of x (any leading shape)."""
    D = x.shape[-1]
    y, rstd = rms_norm_triton_forward(_as_rows(x, D), weight.contiguous(), eps, gemma)
    return y.view(x.shape), rstd


@rms_norm_triton_op.register_fake
def _(x, weight, eps, gemma):
    return _forward_outputs(x, weight, gemma)


@kernel_op("rms_norm_triton_backward")
def rms_norm_triton_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                                gemma: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx like x, dweight (D,)) from the forward's input and rstd."""
    D = x.shape[-1]
    dx, dw = rms_norm_triton_backward(_as_rows(dy, D), _as_rows(x, D), weight.contiguous(), rstd, gemma)
    return dx.view(x.shape), dw


@rms_norm_triton_backward_op.register_fake
def _(dy, x, weight, rstd, gemma):  # as rms_norm_triton_backward allocates them: contiguous, x's and w's dtypes
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    x, weight, _, gemma = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.gemma = gemma


def _backward(ctx, dy, _):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_triton_backward_op(dy, x, weight, rstd, ctx.gemma)
    return dx, dw, None, None


rms_norm_triton_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------- reference


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False) -> torch.Tensor:
    """Plain PyTorch, bit-identical to transformers' LlamaRMSNorm / Gemma3RMSNorm for fp32/bf16/fp16 inputs.

    The normalisation runs in fp32 (x.float()), or in fp64 when x is fp64, so that running this on
    upcast inputs gives the tests a true high-precision oracle.
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(compute)
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if gemma:
        return (normed * (1.0 + weight.to(compute))).type_as(x)
    return weight * normed.to(x.dtype)


# ---------------------------------------------------------------------------------------- CPU path


class _RMSNormCPU(torch.autograd.Function):
    """The CPU path: the reference's forward (bit-identical), the closed-form backward of the module
    docstring in eager PyTorch. Autograd of the reference keeps the fp32 copy of x, its square and the
    normed rows for backward and runs a dozen elementwise ops; this keeps x and one rstd per row."""

    @staticmethod
    def forward(ctx, x, weight, eps, gemma):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        normed = xf * rstd
        ctx.save_for_backward(x, weight, rstd)
        ctx.gemma = gemma
        if gemma:
            return (normed * (1.0 + weight.to(xf.dtype))).type_as(x)
        return weight * normed.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        # In place wherever a buffer is dead: four full-size fp32 temporaries instead of ten (each one a
        # fresh mmap, and on CPU page faults, at Llama's 4096 x 2048 rows). The values are those of
        # dx = rstd * (g - normed * mean(g * normed)), dw = sum(dy * normed) exactly: g + -(a) == g - a.
        x, weight, rstd = ctx.saved_tensors
        compute = rstd.dtype
        normed = x.to(compute, copy=True).mul_(rstd)
        dyf = dy.to(compute, copy=True)
        rows = dyf * (normed if ctx.gemma else normed.to(x.dtype).to(compute))
        dw = rows.reshape(-1, x.shape[-1]).sum(0)
        g = dyf.mul_((1.0 + weight.to(compute)) if ctx.gemma else weight.to(compute))
        mean = torch.mul(g, normed, out=rows).mean(-1, keepdim=True)  # rows' buffer is free again
        dx = normed.mul_(mean).neg_().add_(g).mul_(rstd)
        return dx.to(x.dtype), dw.to(weight.dtype), None, None


# ---------------------------------------------------------------------------------------- public op


def _resolve(backend: str, x: torch.Tensor, op: str) -> str:
    """resolve_backend, where "flash" (no flash-attn kernel exists for this op) means Triton."""
    chosen = resolve_backend(backend, x, op, flash_able=triton_runs_on(x))
    return "triton" if chosen == "flash" else chosen


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False,
             backend: str = "auto") -> torch.Tensor:
    """RMSNorm over the last dim of x (any leading shape); weight (D,). Llama or Gemma (`gemma=True`,
    weight stored as an offset from one) flavour. "cpu": the reference's forward with a closed-form
    backward (_RMSNormCPU); "ref": `rms_norm_ref` under autograd."""
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"rms_norm: weight of shape {tuple(weight.shape)} for rows of size {x.shape[-1]}")
    chosen = _resolve(backend, x, "rms_norm")
    if chosen == "triton" and x.numel() > 0:
        return rms_norm_triton_op(x, weight, eps, gemma)[0]
    if chosen == "cpu" and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _RMSNormCPU.apply(x, weight, eps, gemma)
    return rms_norm_ref(x, weight, eps, gemma)
