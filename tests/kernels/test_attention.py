"""The attention dispatcher, the CPU fast path (blockwise sliding window) and the reference.

Every case is checked with flash-attn's rule against a float64 run of `attention_ref`; the Triton
kernel has its own file (test_attention_triton.py)."""

import pytest
import torch
import torch.nn.functional as F

from minibridge.kernels import attention_cpu as cpu_module
from minibridge.kernels.attention import attention, attention_ref
from minibridge.kernels.attention_cpu import default_block
from minibridge.kernels.attention_flash import flash_window
from minibridge.kernels.attention_mask import (
    allowed_mask, allowed_mask_from_positions, cu_seqlens_from_document_ids, document_ids_from_cu_seqlens)
from tolerance import assert_flash_rule

CASES = [  # B, Tq, Tk, H, Hkv, D, window, documents
    (2, 70, 70, 8, 8, 64, 16, False),    # T not a multiple of the block, MHA
    (1, 300, 300, 4, 1, 40, 37, True),   # MQA (Gemma 1B), odd head_dim, packed documents
    (2, 130, 130, 8, 2, 128, 24, False),  # GQA 4
    (1, 100, 100, 8, 1, 256, 20, False),  # GQA 8, head_dim 256
    (2, 40, 40, 4, 2, 16, 64, False),    # window larger than T: plain causal
    (2, 5, 90, 4, 4, 32, 20, False),     # queries at positions 85..89 (a prefill chunk)
    (1, 1, 200, 4, 1, 32, 30, False),    # one decode step
    (1, 150, 220, 4, 2, 16, 12, True),   # offset queries and documents
    (2, 60, 60, 4, 2, 24, None, True),   # full causal with documents
]


def _inputs(B, Tq, Tk, H, Hkv, D, docs, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, H, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Tk, Hkv, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Tk, Hkv, D, generator=g, dtype=torch.float64)
    document_ids = torch.sort(torch.randint(0, 3, (B, Tk), generator=g), dim=1).values if docs else None
    return q, k, v, document_ids


def _run(fn, q, k, v, dout, **kwargs):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, **kwargs)
    return [out.detach(), *torch.autograd.grad(out, leaves, dout.to(out.dtype))]


@pytest.fixture
def slices_always(monkeypatch):
    """Take the blockwise path at any length (by default it starts at 1k keys) so small cases test it."""
    monkeypatch.setattr(cpu_module, "SLICES_FROM_KEYS", 0)


@pytest.mark.parametrize("sliced", [True, False], ids=["slices", "one-call"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_cpu_path_forward_and_gradients_follow_flash_rule(case, sliced, monkeypatch):
    if sliced:
        monkeypatch.setattr(cpu_module, "SLICES_FROM_KEYS", 0)
    B, Tq, Tk, H, Hkv, D, window, docs = case
    q, k, v, document_ids = _inputs(B, Tq, Tk, H, Hkv, D, docs)
    dout = torch.randn(B, Tq, H, D, dtype=torch.float64)
    kwargs = dict(window=window, document_ids=document_ids)
    oracle = _run(attention_ref, q, k, v, dout, **kwargs)
    low = [t.float() for t in (q, k, v)]
    ref32 = _run(attention_ref, *low, dout, **kwargs)
    ours = _run(attention, *low, dout, backend="cpu", **kwargs)
    for name, a, r, o in zip(("out", "dq", "dk", "dv"), ours, ref32, oracle):
        assert_flash_rule(name, a, r, o, floor=1e-5)


def test_reference_matches_explicit_softmax():
    """attention_ref against the textbook formula with a hand-built mask (window 3, Tq < Tk)."""
    q, k, v, _ = _inputs(1, 4, 6, 2, 1, 8, False)
    out = attention_ref(q, k, v, window=3)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k.expand(-1, -1, 2, -1)) / 8**0.5
    allowed = torch.tensor([[j <= i + 2 and j > i + 2 - 3 for j in range(6)] for i in range(4)])
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    torch.testing.assert_close(out, torch.einsum("bhqk,bkhd->bqhd", probs, v.expand(-1, -1, 2, -1)))


def test_non_causal_and_bf16_on_cpu():
    q, k, v, docs = _inputs(2, 33, 33, 4, 2, 16, True)
    for causal in (False, True):
        want = attention_ref(q, k, v, causal=causal, document_ids=docs)
        lowp = [t.bfloat16() for t in (q, k, v)]
        got = attention(*lowp, causal=causal, document_ids=docs, backend="cpu")
        assert got.dtype == torch.bfloat16
        assert_flash_rule(f"causal={causal}", got, attention_ref(*lowp, causal=causal, document_ids=docs), want)


def test_sliding_window_cost_is_linear_in_sequence(monkeypatch, slices_always):
    """Every SDPA call of a local layer sees block + W - 1 keys, whatever T: cost O(T x W), not O(T^2)."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.shape[0], q.shape[-2], k.shape[-2]))  # slices, query rows (2 heads per KV head), keys
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(cpu_module.F, "scaled_dot_product_attention", spy)
    window = 32
    for T in (512, 2048):
        q, k, v, _ = _inputs(1, T, T, 2, 1, 8, False)
        attention(q.float(), k.float(), v.float(), window=window, backend="cpu")
    block = default_block(window)
    assert seen == [(T // block, 2 * block, block + window - 1) for T in (512, 2048)]


def test_far_keys_are_never_read(slices_always):
    """NaN in keys beyond every query's window leaves the last queries finite (a (T, T) call would not)."""
    T, window = 600, 40
    q, k, v, _ = _inputs(1, T, T, 2, 1, 8, False)
    k, v = k.float().clone(), v.float().clone()
    k[:, : T - 200], v[:, : T - 200] = float("nan"), float("nan")
    out = attention(q.float(), k, v, window=window, backend="cpu")
    assert torch.isfinite(out[:, -100:]).all()
    assert torch.isnan(attention(q.float(), k, v, window=window, backend="ref")[:, -100:]).all()


def test_long_sequences_take_the_slices_by_default(monkeypatch):
    keys_per_call = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        keys_per_call.append(k.shape[-2])
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(cpu_module.F, "scaled_dot_product_attention", spy)
    T, window = cpu_module.SLICES_FROM_KEYS, 64
    q = torch.randn(1, T, 1, 4)
    attention(q, q, q, window=window, backend="cpu")  # slices of block + W - 1 keys
    attention(q[:, :-1], q[:, :-1], q[:, :-1], window=window, backend="cpu")  # one key short: one (T, T) call
    assert keys_per_call == [default_block(window) + window - 1, T - 1]


def test_cu_seqlens_and_document_ids_agree():
    cu = torch.tensor([0, 5, 5, 12, 20])
    ids = document_ids_from_cu_seqlens(cu)
    assert ids.tolist() == [[0] * 5 + [2] * 7 + [3] * 8]
    q, k, v, _ = _inputs(1, 20, 20, 4, 2, 8, False)
    torch.testing.assert_close(attention(q, k, v, cu_seqlens=cu, backend="cpu"),
                               attention(q, k, v, document_ids=ids, backend="ref"))
    # flash-attn's varlen form of a (B, T) batch: rows never merge even when ids repeat across rows
    cu2, longest = cu_seqlens_from_document_ids(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 2, 2]]))
    assert cu2.tolist() == [0, 2, 5, 8, 10] and longest == 3
    with pytest.raises(ValueError, match="cu_seqlens ends at 20 but the sequence has 21"):
        document_ids_from_cu_seqlens(cu, 21)


def test_mask_semantics_match_hf_sliding_window():
    """A query at position p sees keys p - W + 1 .. p, flash-attn's window_size=(W - 1, 0)."""
    mask = allowed_mask(5, 5, window=2)
    assert mask.int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]
    assert flash_window(2) == (1, 0) and flash_window(None) == (-1, -1)


def test_mask_from_positions():
    """Any positions (a zigzag chunk pair, keys out of order); the bottom-right form is a special case."""
    q_pos, k_pos = torch.tensor([2, 3, 8, 9]), torch.tensor([9, 0, 3, 7, 8])
    for causal, window in ((True, None), (True, 3), (False, None)):
        got = allowed_mask_from_positions(q_pos, k_pos, causal, window)
        expected = [[not causal or (k <= q and (window is None or k > q - window)) for k in k_pos.tolist()]
                    for q in q_pos.tolist()]
        assert got.tolist() == expected
        positions = torch.arange(10)
        assert torch.equal(allowed_mask(4, 10, causal, window), allowed_mask_from_positions(positions[6:], positions,
                                                                                            causal, window))


@pytest.mark.parametrize("bad, message", [
    (dict(backend="fast"), "unknown backend 'fast'"),
    (dict(window=0), "window=0 needs causal=True"),
    (dict(causal=False, window=4), "needs causal=True"),
    (dict(document_ids=torch.zeros(1, 7, dtype=torch.long)), r"document_ids has shape \(1, 7\) on cpu, expected \(1, 8\)"),
    (dict(backend="flash"), "backend='flash' needs flash-attn"),
])
def test_bad_arguments_are_named(bad, message):
    q, k, v, _ = _inputs(1, 8, 8, 2, 1, 8, False)
    with pytest.raises((ValueError, RuntimeError), match=message):
        attention(q, k, v, **bad)


def test_gqa_head_counts_must_divide():
    q = torch.randn(1, 4, 6, 8)
    k = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match="6 query heads are not a multiple of 4 KV heads"):
        attention(q, k, k)


def test_kernels_work_without_triton_installed():
    """A CPU-only torch brings no Triton: the package imports, CPU paths run, 'triton' explains itself."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"  # `import triton` now raises ImportError
        "import torch\n"
        "from minibridge import kernels\n"
        "assert not kernels.HAS_TRITON\n"
        "q = torch.randn(1, 8, 2, 4)\n"
        "kernels.attention(q, q, q, window=3)\n"
        "kernels.rms_norm(q, torch.ones(4), 1e-6)\n"
        "try:\n"
        "    kernels.attention(q, q, q, backend='triton')\n"
        "except RuntimeError as err:\n"
        "    assert 'Triton is not installed' in str(err) or 'Triton was not loaded' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('backend=triton ran without triton')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_a_cpu_only_torch_does_not_load_triton():
    """Triton kernels cannot launch on a CPU-only torch without the interpreter, so importing Triton
    there (~70 MB resident, ~0.1 s) is skipped; with TRITON_INTERPRET=1 it is loaded and used."""
    import importlib.util
    import os
    import subprocess
    import sys

    code = ("import sys, torch, minibridge\n"
            "from minibridge.kernels import HAS_TRITON\n"
            "print(bool(torch.version.cuda or getattr(torch.version, 'hip', None)), 'triton' in sys.modules, HAS_TRITON)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    installed = str(importlib.util.find_spec("triton") is not None)
    cuda_build, loaded, has = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                             check=True).stdout.split()
    if cuda_build == "True":
        assert loaded == has == installed
    else:
        assert loaded == has == "False"
        interpreted = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     env={**env, "TRITON_INTERPRET": "1"}).stdout.split()
        assert interpreted[1:] == [installed, installed]
