"""RoPE kernel: Triton forward and q/k gradients against the reference (flash-attn's error rule), and
the reference against transformers' apply_rotary_pos_emb bit for bit. On CPU the Triton kernel runs
interpreted."""

import pytest
import torch
from tolerance import assert_flash_rule
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from minibridge.kernels.rope import apply_rope, apply_rope_ref
from minibridge.models.common import rope_tables
from minibridge.models.config import RopeConfig

ROPES = {
    "llama3": RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192),
    "gemma_local": RopeConfig(theta=10000.0),
    "gemma_global": RopeConfig(theta=1000000.0, rope_type="linear", factor=8.0),
    "default": RopeConfig(theta=500000.0),
}


def positions(kind: str, B: int, T: int) -> torch.Tensor:
    """(B, T) position ids: "offset" = a KV cache at 1000, "packed" = documents restarting at 0 inside
    a row, "per_row" = every batch row at its own offset."""
    if kind == "offset":
        return (1000 + torch.arange(T)).expand(B, T)
    if kind == "packed":
        cut = [T // 3, T // 3 + T // 4]
        return torch.cat([torch.arange(cut[0]), torch.arange(cut[1] - cut[0]), torch.arange(T - cut[1])]).expand(B, T)
    assert kind == "per_row"
    return torch.arange(T)[None] + torch.tensor([[0], [517], [4093]])[:B]


def make_inputs(B, T, H, Hkv, D, dtype, layout, seed=0, device="cpu"):
    """q, k as leaf tensors with the given layout, and upstream gradients. "fused": views of one qkv
    projection output; "transposed": (B, H, T, D) storage seen as (B, T, H, D)."""
    g = torch.Generator().manual_seed(seed)
    if layout == "fused":
        qkv = torch.randn(B, T, H + 2 * Hkv, D, generator=g).to(device, dtype)
        q, k = qkv[:, :, :H], qkv[:, :, H:H + Hkv]
    elif layout == "transposed":
        q = torch.randn(B, H, T, D, generator=g).to(device, dtype).transpose(1, 2)
        k = torch.randn(B, Hkv, T, D, generator=g).to(device, dtype).transpose(1, 2)
    else:
        q = torch.randn(B, T, H, D, generator=g).to(device, dtype)
        k = torch.randn(B, T, Hkv, D, generator=g).to(device, dtype)
    dq = torch.randn(B, T, H, D, generator=g).to(device, dtype)
    dk = torch.randn(B, T, Hkv, D, generator=g).to(device, dtype)
    if layout == "transposed":  # gradients arriving from attention in (B, H, T, D)
        dq, dk = dq.transpose(1, 2).contiguous().transpose(1, 2), dk.transpose(1, 2).contiguous().transpose(1, 2)
    return q.detach(), k.detach(), dq, dk


def run(fn, q, k, cos, sin, dq, dk):
    """(q_out, k_out, dq, dk) of fn with upstream gradients dq, dk."""
    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    qo, ko = fn(q, k, cos, sin)
    torch.autograd.backward((qo, ko), (dq, dk))
    return qo.detach(), ko.detach(), q.grad, k.grad


def check_against_ref(B, T, H, Hkv, D, dtype, rope, pos, layout="contiguous", table_dtype=torch.float32,
                      shared_table=False, device="cpu"):
    q, k, dq, dk = make_inputs(B, T, H, Hkv, D, dtype, layout, device=device)
    if layout != "contiguous":
        assert not q.is_contiguous()  # (k with one head may still be contiguous)
    position_ids = positions(pos, 1 if shared_table else B, T).to(device)
    cos, sin = rope_tables(ROPES[rope], D, position_ids, table_dtype)
    if shared_table:  # one (T, D) table broadcast over the batch
        cos, sin = cos[0], sin[0]
    q_before = q.clone()
    out = run(lambda *a: apply_rope(*a, backend="triton"), q, k, cos, sin, dq, dk)
    assert torch.equal(q, q_before), "apply_rope must not rotate in place"
    ref = run(apply_rope_ref, q, k, cos, sin, dq, dk)
    oracle = run(apply_rope_ref, q.double(), k.double(), cos.double(), sin.double(), dq.double(), dk.double())
    for name, o, r, orc in zip(("q", "k", "dq", "dk"), out, ref, oracle):
        assert o.dtype == dtype, f"{name}: dtype {o.dtype}"
        assert_flash_rule(f"{name} D={D} {dtype} {rope} {pos}", o, r, orc)


CASES = {  # (B, T, H, Hkv, D, rope, positions, layout, shared (T, D) table)
    "llama3-gqa4-offset-fused": (2, 9, 8, 2, 128, "llama3", "offset", "fused", False),
    "gemma_local-mqa-packed": (2, 11, 8, 1, 256, "gemma_local", "packed", "contiguous", False),
    "gemma_global-per_row-transposed": (2, 6, 4, 2, 64, "gemma_global", "per_row", "transposed", False),
    "default-D72-shared_table": (2, 5, 3, 3, 72, "default", "offset", "fused", True),
    "gemma_local-D100-packed": (1, 12, 2, 1, 100, "gemma_local", "packed", "transposed", False),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_triton_matches_ref(case, dtype):
    B, T, H, Hkv, D, rope, pos, layout, shared = case
    check_against_ref(B, T, H, Hkv, D, dtype, rope, pos, layout, shared_table=shared)


def test_bf16_tables():
    """Tables already in bf16: the kernel reads the same table values as the reference."""
    check_against_ref(2, 4, 4, 2, 64, torch.bfloat16, "llama3", "per_row", table_dtype=torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ref_is_bit_identical_to_transformers_apply_rotary_pos_emb(dtype):
    """The models pass fp32 tables; the reference casts them to q's dtype first, as transformers does."""
    q, k, _, _ = make_inputs(2, 7, 8, 2, 128, dtype, "fused")
    for rope in ("llama3", "gemma_global"):
        cos, sin = rope_tables(ROPES[rope], 128, positions("per_row", 2, 7), torch.float32)
        hf = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos.to(dtype), sin.to(dtype))
        expected = [t.transpose(1, 2) for t in hf]
        for got in (apply_rope_ref(q, k, cos, sin), apply_rope(q, k, cos, sin), apply_rope(q, k, cos, sin, "cpu")):
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_backends_and_errors():
    q, k, _, _ = make_inputs(1, 3, 2, 1, 64, torch.float32, "contiguous")
    cos, sin = rope_tables(ROPES["default"], 64, positions("offset", 1, 3), torch.float32)
    expected = apply_rope_ref(q, k, cos, sin)
    for backend in ("cpu", "ref"):
        got = apply_rope(q, k, cos, sin, backend=backend)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    got = apply_rope(q, k, cos, sin, backend="flash")  # no flash-attn kernel for RoPE: runs Triton
    torch.testing.assert_close(got[0], expected[0])
    with pytest.raises(ValueError, match="bogus"):
        apply_rope(q, k, cos, sin, backend="bogus")
    with pytest.raises(ValueError, match="tables"):
        apply_rope(q, k, cos[..., :32], sin[..., :32])
    with pytest.raises(ValueError, match="even"):
        apply_rope(q[..., :63], k[..., :63], cos[..., :63], sin[..., :63])


@pytest.mark.gpu
@pytest.mark.parametrize("B,T,H,Hkv,D,rope", [
    (2, 4096, 32, 8, 128, "llama3"),         # Llama 3.1 8B
    (1, 8192, 32, 16, 128, "gemma_global"),  # Gemma 3 27B
    (4, 2048, 8, 4, 256, "gemma_local"),     # Gemma 3 4B
])
def test_cuda_bf16_full_size(B, T, H, Hkv, D, rope):
    check_against_ref(B, T, H, Hkv, D, torch.bfloat16, rope, "offset", "fused", device="cuda")
    check_against_ref(B, T, H, Hkv, D, torch.bfloat16, rope, "packed", "transposed", device="cuda")
