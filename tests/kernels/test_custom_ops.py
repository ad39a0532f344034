"""The Triton kernels as torch custom ops (kernels/minibridge_kernels/custom_ops.py).

- `torch.library.opcheck` on every registered op: schema, fake implementation (shapes, dtypes and
  strides against the real kernel), autograd registration and AOTAutograd tracing with dynamic shapes.
- The ops give bit for bit what the host functions give when called directly (the launches did not
  change by becoming ops).
- Meta tensors run through the ops' fake implementations, forward and backward.
On CPU the kernels run in Triton's interpreter, in fp32 (its bf16 dot is wrong), at tiny shapes.
Compiling whole decoder blocks: tests/models/test_compile.py.
"""

from __future__ import annotations

import pytest
import torch

from minibridge.kernels import apply_rope, attention, rms_norm
from minibridge.kernels._triton import HAS_TRITON, triton_runs_on
from minibridge.kernels.attention_triton import (
    attention_triton_backward_op, attention_triton_forward, attention_triton_op,
)
from minibridge.kernels.attention_triton_bwd import attention_triton_backward
from minibridge.kernels.custom_ops import OPS
from minibridge.kernels.rms_norm import (
    rms_norm_triton_backward, rms_norm_triton_backward_op, rms_norm_triton_forward, rms_norm_triton_op,
)
from minibridge.kernels.rope import rope_triton, rope_triton_op

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not (HAS_TRITON and triton_runs_on(torch.empty(0, device=DEVICE))),
                                reason="needs Triton (CUDA, or TRITON_INTERPRET=1)")


def randn(*shape, grad=False, seed=0):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    return t.requires_grad_(grad)


def tables(B, T, D):
    inv_freq = torch.rand(D // 2, generator=torch.Generator().manual_seed(1))
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq
    angles = torch.cat((angles, angles), -1).to(DEVICE)
    return angles.cos().expand(B, T, D), angles.sin().expand(B, T, D)  # as apply_rope hands them over


def attention_inputs(grad=False, B=2):
    """GQA (2 query heads on 1 KV head), 2 packed documents, 20 positions (two 16-row blocks)."""
    q = randn(B, 20, 2, 16, grad=grad, seed=1)
    k, v = randn(B, 20, 1, 16, grad=grad, seed=2), randn(B, 20, 1, 16, grad=grad, seed=3)
    docs = torch.tensor([[0] * 7 + [1] * 13, [0] * 20], device=DEVICE)[:B]
    return q, k, v, docs


def opcheck_cases():
    """(op name, args) covering each op with and without its options; inputs needing grad where the
    op has a backward (opcheck then runs it), plain ones for the backward ops."""
    x, w = randn(3, 5, 24, grad=True), randn(24, grad=True, seed=1)
    x_strided = randn(5, 40, grad=True)[:, :24]  # rows strided in a wider buffer
    q, k, v, docs = attention_inputs(grad=True, B=1)
    out, lse = attention_triton_forward(q.detach(), k.detach(), v.detach(), True, 6, 0.25, docs)
    qr, kr = randn(1, 3, 4, 16, grad=True), randn(1, 3, 2, 16, grad=True, seed=1)  # the interpreter runs B x T programs
    cos, sin = tables(1, 3, 16)
    plain = [t.detach() for t in (x, w)]
    return [
        ("rms_norm_triton", (x, w, 1e-6, False)),
        ("rms_norm_triton", (x_strided, w, 1e-6, True)),
        ("rms_norm_triton_backward", (randn(3, 5, 24, seed=2), *plain, torch.rand(15, device=DEVICE) + 0.5, True)),
        ("rope_triton", (qr, kr, cos, sin, False)),
        ("rope_triton", (qr.transpose(1, 2).contiguous().transpose(1, 2), kr, cos, sin, True)),
        ("attention_triton", (q, k, v, True, None, 0.25, None)),
        ("attention_triton", (q, k, v, True, 6, 0.25, docs)),
        ("attention_triton", (q[:, 12:], k, v, False, None, 0.3, None)),
        ("attention_triton_backward", (randn(*out.shape, seed=4), q.detach(), k.detach(), v.detach(), out, lse, True,
                                       6, 0.25, docs)),
    ]


def test_opcheck_every_op():
    checked = set()
    for name, args in opcheck_cases():
        torch.library.opcheck(OPS[name], args)
        checked.add(name)
    assert checked == set(OPS), f"ops without an opcheck case: {sorted(set(OPS) - checked)}"
    assert all(getattr(torch.ops.minibridge, name).default.name() == f"minibridge::{name}" for name in OPS)


def grads(out, inputs, seed=5):
    """Gradients of sum(out * g) for a fixed random g (for several outputs, all of them)."""
    outs = out if isinstance(out, tuple) else (out,)
    cotangents = [randn(*o.shape, seed=seed + i) for i, o in enumerate(outs)]
    return torch.autograd.grad(outs, inputs, cotangents)


def assert_identical(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and torch.equal(g, w)


@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_rms_norm_op_is_the_host_functions(gemma):
    x, w = randn(2, 7, 40, grad=True), randn(40, grad=True, seed=1)
    y = rms_norm(x, w, 1e-6, gemma, backend="triton")
    y_host, rstd = rms_norm_triton_forward(x.detach().view(14, 40), w.detach(), 1e-6, gemma)
    dy = randn(2, 7, 40, seed=5)
    dx, dw = rms_norm_triton_backward(dy.view(14, 40), x.detach().view(14, 40), w.detach(), rstd, gemma)
    assert_identical((y, *grads(y, (x, w))), (y_host.view(2, 7, 40), dx.view(2, 7, 40), dw))


def test_rope_op_is_the_host_function():
    q, k = randn(2, 6, 4, 16, grad=True), randn(2, 6, 2, 16, grad=True, seed=1)
    cos, sin = tables(2, 6, 16)
    qo, ko = apply_rope(q, k, cos, sin, backend="triton")
    dq, dk = randn(*q.shape, seed=5), randn(*k.shape, seed=6)
    want = (*rope_triton(q.detach(), k.detach(), cos, sin, False), *rope_triton(dq, dk, cos, sin, True))
    assert_identical((qo, ko, *grads((qo, ko), (q, k))), want)


@pytest.mark.parametrize("window", [None, 5])
def test_attention_op_is_the_host_functions(window):
    q, k, v, docs = attention_inputs(grad=True)
    out = attention(q, k, v, window=window, document_ids=docs, backend="triton")
    plain = [t.detach() for t in (q, k, v)]
    out_host, lse = attention_triton_forward(*plain, True, window, 0.25, docs)
    dout = randn(*out.shape, seed=5)
    want = (out_host, *attention_triton_backward(dout, *plain, out_host, lse, True, window, 0.25, docs))
    assert_identical((out, *grads(out, (q, k, v))), want)


def test_meta_tensors_run_through_the_fake_implementations():
    """No kernel runs on meta tensors: shapes, dtypes and strides come from register_fake, and the
    registered backward runs the backward ops' fake implementations."""
    def meta(*shape, dtype=torch.float32):
        return torch.empty(*shape, device="meta", dtype=dtype, requires_grad=True)

    x, w = meta(3, 5, 24, dtype=torch.bfloat16), meta(24)
    y, rstd = rms_norm_triton_op(x, w, 1e-6, False)
    y.sum().backward()
    assert (y.dtype, rstd.shape, x.grad.shape, w.grad.dtype) == (torch.float32, (15,), x.shape, torch.float32)
    q = meta(2, 40, 4, 16, dtype=torch.bfloat16)
    k, v = meta(2, 40, 2, 16, dtype=torch.bfloat16), meta(2, 40, 2, 16, dtype=torch.bfloat16)
    cos = torch.empty(2, 40, 16, device="meta")
    qr, kr = rope_triton_op(q.transpose(1, 2).contiguous().transpose(1, 2), k, cos, cos, False)
    out, lse = attention_triton_op(qr, kr, v, True, 8, 0.25, torch.zeros(2, 40, dtype=torch.long, device="meta"))
    out.float().sum().backward()
    assert out.shape == q.shape and out.is_contiguous() and (out.dtype, lse.shape) == (torch.bfloat16, (2, 4, 40))
    assert (q.grad.shape, k.grad.shape, v.grad.shape) == (q.shape, k.shape, v.shape)
