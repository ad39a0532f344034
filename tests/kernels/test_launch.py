"""Launch limits of the Triton kernels, checked without a GPU: grids recorded from the host functions
on `meta` tensors of real shapes, block sizes per target and dtype, and int64 offsets run by the
interpreter over a tensor whose row offsets pass 2^31 (virtual memory: only the rows read are touched)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from minibridge.kernels.attention_triton import attention_triton_forward
from minibridge.kernels.attention_triton_bwd import attention_triton_backward
from minibridge.kernels.attention_triton_shared import block_sizes, shared_memory_bytes
from minibridge.kernels.rms_norm import rms_norm_triton_backward, rms_norm_triton_forward
from minibridge.kernels.rope import rope_triton
from minibridge.kernels.launch import (
    MAX_GRID, SHARED_MEMORY_LIMIT, check_grid, compile_target, record_launches, shared_memory_limit,
)

META = dict(device="meta")


def test_grids_stay_within_cuda_limits_for_large_batches():
    """B x H = 4096 x 32 query heads: more than the 65,535 programs CUDA allows on grid axes y and z."""
    B, T, H, Hkv, D = 4096, 8, 32, 8, 128
    q = torch.empty(B, T, H, D, dtype=torch.bfloat16, **META)
    k = v = torch.empty(B, T, Hkv, D, dtype=torch.bfloat16, **META)
    lse = torch.empty(B, H, T, dtype=torch.float32, **META)
    x, w = torch.empty(B * T, 4096, dtype=torch.bfloat16, **META), torch.empty(4096, dtype=torch.bfloat16, **META)
    cos = torch.empty(1, T, D, dtype=torch.bfloat16, **META).expand(B, T, D)
    with record_launches() as launches:
        attention_triton_forward(q, k, v, True, None, D**-0.5, None)
        attention_triton_backward(q, q, k, v, q, lse, True, None, D**-0.5, None)
        y, rstd = rms_norm_triton_forward(x, w, 1e-6, False)
        rms_norm_triton_backward(y, x, w, rstd, False)
        rope_triton(q, k, cos, cos, False)
    assert len(launches) == 7
    for launch in launches:
        assert all(size <= limit for size, limit in zip(launch.grid, MAX_GRID)), (launch.name, launch.grid)


def test_check_grid_names_the_axis():
    check_grid((2**31 - 1, 65_535), "k")
    with pytest.raises(ValueError, match="axis 1"):
        check_grid((1, 65_536), "k")


@pytest.mark.parametrize("arch", sorted(SHARED_MEMORY_LIMIT))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("D", [64, 80, 128, 256])
def test_block_sizes_fit_each_target(monkeypatch, arch, dtype, D):
    """The chosen blocks' estimated shared memory fits the target (the AOT check measures sm_80/90/100).
    The fp32 forward at 64 < D <= 128 used 229,888 B with 128x64 blocks and 3 stages: over A100's 166,912."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the GPU choices, not the interpreter's small blocks
    for kernel in ("fwd", "dkdv", "dq"):
        choice = block_sizes(D, kernel, dtype, arch)
        assert shared_memory_bytes(kernel, D, dtype.itemsize, *choice) <= shared_memory_limit(arch), (kernel, choice)
    if dtype == torch.float32 and D == 128 and arch == 80:
        assert block_sizes(D, "fwd", dtype, arch) != (128, 64, 8, 3)


def test_compile_target_reaches_the_host_functions(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.empty(1, 256, 8, 128, dtype=torch.float32, **META)
    lse = torch.empty(1, 8, 256, dtype=torch.float32, **META)
    chosen = {}
    for arch in (80, 90):
        with compile_target(arch), record_launches() as launches:
            attention_triton_forward(q, q, q, True, None, 0.1, None)
            attention_triton_backward(q, q, q, q, q, lse, True, None, 0.1, None)
        chosen[arch] = [(launch.kwargs["BLOCK_M"], launch.kwargs.get("num_stages")) for launch in launches]
        assert launches[0].kwargs["BLOCK_M"] == block_sizes(128, "fwd", torch.float32, arch)[0]
    assert len(chosen[80]) == 4


INT64_SCRIPT = textwrap.dedent("""
    import torch
    from minibridge.kernels import attention_ref
    from minibridge.kernels.attention_triton import attention_triton

    T, H, D = 16, 1, 16
    S = (2**31 + 2**20) // (T - 1)  # row stride: the last rows sit past 2^31 elements
    buf = torch.empty((T - 1) * S + 3 * D, dtype=torch.float16)  # ~4.3 GB, virtual: only read rows touched
    g = torch.Generator().manual_seed(0)
    views = [buf.as_strided((1, T, H, D), (0, S, D, 1), i * D) for i in range(3)]
    for view in views:
        view.copy_(torch.randn(1, T, H, D, generator=g).half())
    q, k, v = (view.requires_grad_() for view in views)
    out = attention_triton(q, k, v, causal=True)
    grad = torch.randn(out.shape, generator=g).half()
    got = (out, *torch.autograd.grad(out, (q, k, v), grad))
    q2, k2, v2 = (view.detach().float().requires_grad_() for view in views)
    ref = attention_ref(q2, k2, v2, causal=True)
    want = (ref, *torch.autograd.grad(ref, (q2, k2, v2), grad.float()))
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        err = (a.float() - b).abs().max().item()
        assert err < 2e-2, (name, err)
    print("ok")
""")


def test_offsets_past_2_31_elements_are_int64():
    """Row offsets t x stride past 2^31 elements, interpreted: int32 products would wrap to addresses
    outside the tensor (a crash or garbage). In a child process so a crash fails only this test."""
    proc = subprocess.run([sys.executable, "-c", INT64_SCRIPT], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]


AOT_TOO_LARGE = textwrap.dedent("""
    import sys
    sys.path.insert(0, "benchmarks")
    import kernels_aot  # sets the environment for compiling before minibridge is imported
    from minibridge.kernels import attention_triton

    attention_triton.block_sizes = lambda D, kernel, dtype=None, arch=None: (128, 256, 8, 4)
    sys.exit(kernels_aot.main(["--arch", "80", "--only", "attention_fwd", "--shapes", "llama-3.2-1b",
                               "--no-report", "--jobs", "1"]))
""")


def test_aot_check_fails_when_a_block_is_too_large():
    """The AOT check compiles for sm_80 what the host code chooses: 128 queries and 256 keys of head_dim 64 a
    block, K and V in 4 pipeline stages (217,088 B), need more shared memory than an A100 block may have; the
    check must say so, exit 1. (Llama-3.2-1B's bf16 alone: one compile of seconds, not the fp32 one of 8B.)"""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", AOT_TOO_LARGE], capture_output=True, text=True, timeout=900, cwd=root)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "shared memory" in proc.stdout and "> sm_80 limit 166912 B" in proc.stdout, proc.stdout[-3000:]
