"""RMSNorm kernel: Triton forward and gradients against the reference (flash-attn's error rule), and
the reference and the model's RMSNorm against transformers' RMSNorm modules bit for bit. On CPU the
Triton kernels run interpreted."""

import pytest
import torch
from tolerance import assert_flash_rule

from minibridge.kernels.rms_norm import rms_norm, rms_norm_ref
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from minibridge.models.common import RMSNorm

EPS = 1e-6


def make_inputs(lead, D, dtype, gemma, layout="contiguous", seed=0, device="cpu"):
    """x (*lead, D), weight (D,), dy; `layout` "sliced" = rows strided in a wider buffer, "transposed"
    = a view whose leading dims do not merge (the op copies), for x and dy."""
    g = torch.Generator().manual_seed(seed)
    width = D + 7 if layout == "sliced" else D
    x = (torch.randn(*lead, width, generator=g) * 2 + 0.3).to(device, dtype)
    if layout == "sliced":
        x = x[..., :D]
    elif layout == "transposed":
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    w = torch.randn(D, generator=g) * 0.5 + (0.0 if gemma else 1.0)
    dy = torch.randn(*lead, D, generator=g).to(device, dtype)
    if layout == "transposed":  # the upstream gradient too
        dy = dy.transpose(0, 1).contiguous().transpose(0, 1)
    return x, w.to(device, dtype), dy


def run(fn, x, w, dy, gemma):
    """(y, dx, dweight) of fn(x, w) with upstream gradient dy."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    y = fn(x, w, EPS, gemma)
    y.backward(dy.to(y.dtype))
    return y.detach(), x.grad, w.grad


def check_against_ref(lead, D, dtype, gemma, layout="contiguous", device="cpu", backend="triton"):
    x, w, dy = make_inputs(lead, D, dtype, gemma, layout, device=device)
    if layout != "contiguous":
        assert not x.is_contiguous()
    out = run(lambda *a: rms_norm(*a, backend=backend), x, w, dy, gemma)
    ref = run(rms_norm_ref, x, w, dy, gemma)
    oracle = run(rms_norm_ref, x.double(), w.double(), dy.double(), gemma)
    for name, o, r, orc in zip(("y", "dx", "dweight"), out, ref, oracle):
        assert o.dtype == r.dtype, f"{name}: dtype {o.dtype} != {r.dtype}"
        assert_flash_rule(f"{name} D={D} {dtype} gemma={gemma}", o, r, orc)


CASES = [  # (leading shape, D, layout): rows not a multiple of the kernel's row block
    ((3, 5), 64, "contiguous"),
    ((2, 11), 128, "sliced"),
    ((2, 3, 3), 256, "transposed"),
    ((2, 5), 1152, "contiguous"),
    ((13,), 100, "sliced"),
    ((2, 9), 72, "contiguous"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("lead,D,layout", CASES, ids=[f"D{c[1]}-{c[2]}" for c in CASES])
def test_triton_matches_ref(lead, D, layout, gemma, dtype):
    check_against_ref(lead, D, dtype, gemma, layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("lead,D,layout", CASES, ids=[f"D{c[1]}-{c[2]}" for c in CASES])
def test_cpu_path_matches_ref(lead, D, layout, gemma, dtype):
    """The CPU path's closed-form backward (the forward is the reference itself, bit for bit)."""
    check_against_ref(lead, D, dtype, gemma, layout, backend="cpu")
    x, w, _ = make_inputs(lead, D, dtype, gemma, layout)
    x.requires_grad_()
    assert torch.equal(rms_norm(x, w, EPS, gemma, backend="cpu"), rms_norm_ref(x, w, EPS, gemma))


def test_llama_fp32_weight_bf16_input():
    """Mixed precision (fp32 master weight, bf16 activations): the output is fp32, as in torch."""
    x, _, dy = make_inputs((4, 3), 64, torch.bfloat16, gemma=False)
    w = torch.randn(64) * 0.5 + 1.0
    out = run(lambda *a: rms_norm(*a, backend="triton"), x, w, dy.float(), False)
    ref = run(rms_norm_ref, x, w, dy.float(), False)
    oracle = run(rms_norm_ref, x.double(), w.double(), dy.double(), False)
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.bfloat16 and out[2].dtype == torch.float32
    for name, o, r, orc in zip(("y", "dx", "dweight"), out, ref, oracle):
        assert_flash_rule(name, o, r, orc)


def test_many_rows_dweight_partials():
    """More row blocks than backward programs: every program sums several blocks into its partial."""
    check_against_ref((150,), 64, torch.float32, gemma=False)


def test_weight_without_grad():
    x, w, dy = make_inputs((5,), 64, torch.float32, gemma=True)
    x.requires_grad_()
    y = rms_norm(x, w, EPS, True, backend="triton")
    y.backward(dy)
    xr = x.detach().requires_grad_()
    rms_norm_ref(xr, w, EPS, True).backward(dy)
    assert_flash_rule("dx", x.grad, xr.grad, xr.grad.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_ref_is_bit_identical_to_transformers_rmsnorm(gemma, dtype):
    """The reference, the CPU path and the model's RMSNorm all give transformers' bits."""
    torch.manual_seed(0)
    module = (Gemma3RMSNorm(96, eps=EPS) if gemma else LlamaRMSNorm(96, eps=EPS)).to(dtype)
    with torch.no_grad():
        module.weight.add_(torch.randn(96).to(dtype) * 0.3)
    x = (torch.randn(3, 7, 96) * 2).to(dtype)
    expected = module(x)
    assert torch.equal(rms_norm_ref(x, module.weight, EPS, gemma), expected)
    assert torch.equal(rms_norm(x, module.weight, EPS, gemma, backend="cpu"), expected)  # auto on CPU
    assert torch.equal(rms_norm(x, module.weight, EPS, gemma), expected)
    ours = RMSNorm(96, EPS, gemma=gemma).to(dtype)
    ours.load_state_dict(module.state_dict())
    assert torch.equal(ours(x), expected)


def test_backends_and_errors():
    x, w, _ = make_inputs((4,), 64, torch.float32, gemma=False)
    expected = rms_norm_ref(x, w, EPS)
    for backend in ("cpu", "ref"):
        assert torch.equal(rms_norm(x, w, EPS, backend=backend), expected)
    torch.testing.assert_close(rms_norm(x, w, EPS, backend="flash"), expected)  # "flash" means Triton here
    with pytest.raises(ValueError, match="bogus"):
        rms_norm(x, w, EPS, backend="bogus")
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, w[:10], EPS)


@pytest.mark.gpu
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("lead,D", [((4, 2048), 4096), ((2, 1024), 5376), ((1, 512), 16384), ((8, 1024, 4), 256)])
def test_cuda_bf16_full_size(lead, D, gemma):
    check_against_ref(lead, D, torch.bfloat16, gemma, device="cuda")
    check_against_ref(lead, D, torch.bfloat16, gemma, layout="sliced", device="cuda")
