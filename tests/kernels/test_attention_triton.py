"""The Triton flash-attention kernels (forward and backward) against a float64 oracle.

On CPU they run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so the shapes
stay small; the `gpu` tests run full sizes in bf16 on a CUDA device.
"""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_flash_rule

from minibridge.kernels import attention_triton as fwd_module
from minibridge.kernels import attention_triton_bwd as bwd_module
from minibridge.kernels._triton import HAS_TRITON, triton_runs_on
from minibridge.kernels.attention_triton import attention_triton
from minibridge.kernels.attention_triton_shared import block_sizes

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not (HAS_TRITON and triton_runs_on(torch.empty(0, device=DEVICE))),
                                reason="needs Triton (CUDA, or TRITON_INTERPRET=1)")


def oracle(q, k, v, causal=True, window=None, scale=None, document_ids=None, dtype=torch.float64):
    """Explicit masked softmax; scores and products in `dtype`, the softmax in at least fp32."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
    (B, Tq, H, D), Tk, Hkv = q.shape, k.shape[1], k.shape[2]
    k, v = k.repeat_interleave(H // Hkv, dim=2), v.repeat_interleave(H // Hkv, dim=2)
    scale = D ** -0.5 if scale is None else scale
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    q_pos = torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
    k_pos = torch.arange(Tk, device=q.device)[None, :]
    allowed = torch.ones(B, 1, Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed & (k_pos <= q_pos)
        if window is not None:
            allowed = allowed & (k_pos > q_pos - window)
    if document_ids is not None:
        allowed = allowed & (document_ids[:, Tk - Tq:, None] == document_ids[:, None, :])[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores.to(torch.promote_types(dtype, torch.float32)), dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", probs.to(dtype), v)


def forward_backward(fn, q, k, v, grad, **kwargs):
    """(out, dq, dk, dv) of fn on fresh leaf copies of q, k, v."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, **kwargs)
    out.backward(grad.to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves]


def check(q, k, v, names=("out", "dq", "dk", "dv"), floor=1e-6, **kwargs):
    """Kernel and low-precision oracle (the inputs' dtype) against the float64 oracle: the flash rule."""
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q.device)
    got = forward_backward(attention_triton, q, k, v, grad, **kwargs)
    low = forward_backward(oracle, q, k, v, grad, dtype=q.dtype, **kwargs)
    exact = forward_backward(oracle, q, k, v, grad, dtype=torch.float64, **kwargs)
    assert got[0].dtype == q.dtype and got[0].shape == q.shape
    for name, a, b, c in zip(names, got, low, exact):
        assert torch.isfinite(a).all(), f"{name}: not finite"
        assert_flash_rule(name, a.float(), b.float(), c, floor=floor)


def qkv(B, Tq, Tk, H, Hkv, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, h, D, generator=g).to(DEVICE, dtype) for T, h in ((Tq, H), (Tk, Hkv), (Tk, Hkv))]


def three_documents(B, T, seed=0):
    """(B, T) ids of 3 packed documents per row, with boundaries that differ between rows."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        cuts = sorted(torch.randperm(T - 2, generator=g)[:2].add(1).tolist())
        ids[b, cuts[0]:] = 1
        ids[b, cuts[1]:] = 2
    return ids.to(DEVICE)


# ------------------------------------------------------------------------------------------ coverage
@pytest.mark.parametrize("Hkv", [8, 4, 2, 1])
def test_gqa_ratios(Hkv):
    check(*qkv(1, 20, 20, 8, Hkv, 32))


@pytest.mark.parametrize("D, T, window", [(64, 70, 24), (128, 37, None), (256, 21, 9), (40, 37, 8), (72, 37, None)])
def test_head_dims_and_windows(D, T, window):
    """Powers of two up to 256 and odd sizes (padded blocks), lengths not multiples of the block."""
    check(*qkv(1, T, T, 2, 1, D), window=window)


@pytest.mark.parametrize("window", [1, 5, 16, 36, 100])
def test_window_sizes(window):
    """Windows of one key, below, at and above the block size, and above the length (no window).

    W = 1: out = v and dq = 0 exactly in the oracle, the kernel's P = exp(s - lse) is 1 only up to
    rounding, so dq gets an absolute floor of a few fp32 ulps."""
    check(*qkv(1, 37, 37, 2, 1, 32), window=window, floor=1e-5 if window == 1 else 1e-6)


@pytest.mark.parametrize("Tq, Tk, window", [(5, 40, None), (5, 40, 7), (1, 40, None), (1, 40, 3), (20, 37, 10)])
def test_queries_are_the_last_positions(Tq, Tk, window):
    check(*qkv(1, Tq, Tk, 4, 2, 32), window=window)


@pytest.mark.parametrize("causal, window, Tq", [(True, None, 45), (True, 12, 45), (False, None, 45), (True, 6, 7)])
def test_packed_documents(causal, window, Tq):
    check(*qkv(2, Tq, 45, 2, 1, 32), causal=causal, window=window, document_ids=three_documents(2, 45))


@pytest.mark.parametrize("Tq", [37, 9])
def test_not_causal(Tq):
    check(*qkv(2, Tq, 37, 2, 1, 32), causal=False)


def test_scale():
    check(*qkv(1, 30, 30, 2, 2, 32), scale=0.3, window=11)


@pytest.mark.parametrize("blocks", [(32, 16), (16, 32)])
def test_unequal_blocks(monkeypatch, blocks):
    """BLOCK_M != BLOCK_N: the key range is aligned to BLOCK_N, the dK/dV query range to BLOCK_M."""
    sizes = lambda D, kernel, *target: (*blocks, 4, 1)  # noqa: E731
    monkeypatch.setattr(fwd_module, "block_sizes", sizes)
    monkeypatch.setattr(bwd_module, "block_sizes", sizes)
    check(*qkv(2, 50, 70, 2, 1, 32), window=21, document_ids=three_documents(2, 70))


def test_strided_inputs():
    """Views of a fused projection (B, T, (H + 2 Hkv) D) and of (B, H, T, D) tensors, a strided grad."""
    B, T, H, Hkv, D = 2, 29, 4, 2, 32
    g = torch.Generator().manual_seed(3)
    fused = torch.randn(B, T, (H + 2 * Hkv) * D, generator=g).to(DEVICE)
    k_t = torch.randn(B, Hkv, T, D, generator=g).to(DEVICE)
    grad = torch.randn(B, H, T, D, generator=g).to(DEVICE).transpose(1, 2)

    def run(fn, **kwargs):
        leaves = [fused.clone().requires_grad_(), k_t.clone().requires_grad_()]
        q = leaves[0][..., : H * D].view(B, T, H, D)
        v = leaves[0][..., (H + Hkv) * D:].view(B, T, Hkv, D)
        k = leaves[1].transpose(1, 2)
        assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
        out = fn(q, k, v, window=9, **kwargs)
        out.backward(grad.to(out.dtype))
        return [out.detach()] + [t.grad for t in leaves]

    for name, a, b, c in zip(("out", "d_fused", "dk"), run(attention_triton), run(oracle, dtype=torch.float32),
                             run(oracle)):
        assert_flash_rule(name, a, b, c)


def test_window_skips_blocks_outside():
    """NaN-poisoned K/V far left of every checked query's window, and NaN queries far right of the
    checked keys: a kernel that loaded those blocks would turn NaN (0 * NaN in p @ v, dS^T q)."""
    D, W = 32, 8
    blk = max(max(block_sizes(D, kernel)[:2]) for kernel in ("fwd", "dkdv", "dq"))
    T, P = 10 * blk, 2 * blk  # poison keys [0, P) and queries [T - P, T)
    q, k, v = qkv(1, T, T, 2, 1, D)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    bad_q, bad_k, bad_v = q.clone(), k.clone(), v.clone()
    bad_k[:, :P] = bad_v[:, :P] = float("nan")
    bad_q[:, T - P:] = float("nan")
    got = forward_backward(attention_triton, bad_q, bad_k, bad_v, grad, window=W)
    low = forward_backward(oracle, q, k, v, grad, window=W, dtype=torch.float32)
    exact = forward_backward(oracle, q, k, v, grad, window=W)
    rows = slice(4 * blk, T - P)  # their query blocks start past key P + W + blk
    keys = slice(4 * blk, T - P - W - 2 * blk)  # the query blocks that see them end before T - P
    for name, i, idx in (("out", 0, rows), ("dq", 1, rows), ("dk", 2, keys), ("dv", 3, keys)):
        assert torch.isfinite(got[i][:, idx]).all(), f"{name}: a block outside the window was loaded"
        assert_flash_rule(name, got[i][:, idx], low[i][:, idx], exact[i][:, idx])


def test_bf16():
    """bf16 in, bf16 out (the interpreter upcasts dot operands), within the flash rule of a bf16 reference."""
    q, k, v = qkv(2, 37, 37, 2, 1, 64, dtype=torch.bfloat16)
    check(q, k, v, window=13, document_ids=three_documents(2, 37))


def test_invalid_arguments():
    q, k, v = qkv(1, 8, 8, 2, 1, 16)
    with pytest.raises(ValueError, match="causal"):
        attention_triton(q, k, v, causal=False, window=4)
    with pytest.raises(ValueError, match="queries"):
        attention_triton(*qkv(1, 9, 8, 2, 1, 16))
    with pytest.raises(ValueError, match="multiple"):
        attention_triton(*qkv(1, 8, 8, 3, 2, 16))
    with pytest.raises(ValueError, match="document_ids"):
        attention_triton(q, k, v, document_ids=torch.zeros(1, 7, dtype=torch.long, device=DEVICE))


# ------------------------------------------------------------------------------------------ full sizes
@pytest.mark.gpu
@pytest.mark.parametrize("D, window, docs", [(128, None, False), (128, 512, False), (256, 512, False),
                                             (128, 512, True), (256, None, True)])
def test_full_size_bf16(D, window, docs):
    B, T, H, Hkv = 2, 2048, 8, 2
    ids = three_documents(B, T) if docs else None
    check(*qkv(B, T, T, H, Hkv, D, dtype=torch.bfloat16), window=window, document_ids=ids)


@pytest.mark.gpu
def test_full_size_fp32_odd_head_dim():
    check(*qkv(1, 1000, 1000, 4, 1, 72), window=300)


@pytest.mark.gpu
def test_decode_chunk_bf16():
    check(*qkv(2, 64, 2048, 8, 1, 128, dtype=torch.bfloat16), window=512)
