"""Rank-side checks of context-parallel attention against single-process `models.common.attention` (fp32).

Every rank builds the same full-sequence q, k, v and upstream gradient from a shared seed, runs the
reference on the whole sequence, and compares its zigzag slice of outputs and gradients with what the
context-parallel path computes from the zigzag-local inputs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from minibridge.models.common import attention
from minibridge.parallel.collectives import count_communication
from minibridge.parallel.context import (
    context_parallel_attention, gather_from_context_parallel, ring_attention, split_for_context_parallel,
    window_attention_cp, zigzag_indices,
)


def _inputs(seed, seq, heads, kv_heads, head_dim, batch=2):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, heads, head_dim, generator=g)
    k = torch.randn(batch, seq, kv_heads, head_dim, generator=g)
    v = torch.randn(batch, seq, kv_heads, head_dim, generator=g)
    dout = torch.randn(batch, seq, heads, head_dim, generator=g)
    return q, k, v, dout


def _check_case(fn, seq, heads, kv_heads, head_dim, window, seed):
    """fn(q, k, v, scale) on local slices vs attention(..., window) on the full sequence."""
    group = dist.group.WORLD
    cp, rank = dist.get_world_size(), dist.get_rank()
    scale = head_dim**-0.5
    q, k, v, dout = _inputs(seed, seq, heads, kv_heads, head_dim)
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = attention(*full, scale, window=window)
    ref.backward(dout)

    local = [split_for_context_parallel(t, cp, rank).detach().requires_grad_() for t in (q, k, v)]
    out = fn(*local, scale)
    out.backward(split_for_context_parallel(dout, cp, rank))
    what = f"cp={cp} T={seq} H={heads}/{kv_heads} D={head_dim} W={window} rank={rank}"
    torch.testing.assert_close(out, split_for_context_parallel(ref, cp, rank), msg=lambda m: f"out {what}: {m}")
    for name, t, r in zip("qkv", local, full):
        torch.testing.assert_close(t.grad, split_for_context_parallel(r.grad, cp, rank),
                                   msg=lambda m: f"d{name} {what}: {m}")
    # the gathered output is the reference, in sequence order, on every rank
    torch.testing.assert_close(gather_from_context_parallel(out.detach(), cp, group), ref.detach())


def run_checks(checks):
    """One process group for many checks: [(name of a check_* function here, args tuple)]."""
    dist.init_process_group("gloo")
    for name, args in checks:
        globals()[name](*args)


def check_attention(cases):
    """cases: dicts(kind in {'ring', 'window', 'dispatch'}, seq, heads, kv_heads, head_dim, window)."""
    group = dist.group.WORLD
    for i, case in enumerate(cases):
        kind, window = case["kind"], case.get("window")
        if kind == "ring":
            fn = lambda q, k, v, s: ring_attention(q, k, v, s, group, window=window)  # noqa: E731
        elif kind == "window":
            fn = lambda q, k, v, s: window_attention_cp(q, k, v, s, window, group)  # noqa: E731
        else:
            fn = lambda q, k, v, s: context_parallel_attention(q, k, v, s, window, group)  # noqa: E731
        _check_case(fn, case["seq"], case["heads"], case["kv_heads"], case["head_dim"], window, seed=100 + i)


def _p2p_bytes(fn, seq, heads, kv_heads, head_dim):
    cp, rank = dist.get_world_size(), dist.get_rank()
    q, k, v, dout = _inputs(0, seq, heads, kv_heads, head_dim)
    local = [split_for_context_parallel(t, cp, rank).requires_grad_() for t in (q, k, v)]
    with count_communication() as counter:
        out = fn(*local, head_dim**-0.5)
        out.backward(split_for_context_parallel(dout, cp, rank))
    return counter.bytes.get("p2p", 0)


def check_communication(window, seqs):
    """Per-rank p2p bytes (forward + backward) of the window and ring paths at several lengths.

    The window path sends and receives at most 2*(W-1) K/V rows per rank each way, whatever T is;
    the ring path sends (cp-1) K/V blocks forward and (cp-1) K/V blocks + cp gradient blocks backward.
    """
    group = dist.group.WORLD
    cp = dist.get_world_size()
    B, H, HKV, D, F32 = 2, 4, 2, 8, 4
    win = [_p2p_bytes(lambda q, k, v, s: window_attention_cp(q, k, v, s, window, group), t, H, HKV, D)
           for t in seqs]
    ring = [_p2p_bytes(lambda q, k, v, s: ring_attention(q, k, v, s, group), t, H, HKV, D) for t in seqs]
    row = B * 2 * HKV * D * F32  # one position of K and V
    assert len(set(win)) == 1, f"window p2p bytes grow with T: {dict(zip(seqs, win))}"
    # the halo is sent once forward and its gradient once backward; this rank sends at most what the
    # others' halos hold, which here (two chunk starts per rank, W-1 <= chunk) is 2*(W-1) rows
    assert win[0] <= 2 * 2 * (window - 1) * row, (win[0], window, row)
    for t, b in zip(seqs, ring):
        local_rows = t // cp
        assert b == ((cp - 1) * 2 + cp) * local_rows * row, (t, b)


def check_zigzag_and_errors():
    """Local checks needing a process group: index layout, gather inverse, and clear errors."""
    group = dist.group.WORLD
    cp, rank = dist.get_world_size(), dist.get_rank()
    seen = torch.cat([zigzag_indices(24, cp, r) for r in range(cp)])
    assert sorted(seen.tolist()) == list(range(24))
    x = torch.randn(3, 24, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    local = split_for_context_parallel(x, cp, rank)
    back = gather_from_context_parallel(local, cp, group)
    torch.testing.assert_close(back, x)
    back.sum().backward()  # every rank's gradient lands on its own slice only
    expected = torch.zeros_like(x)
    expected[:, zigzag_indices(24, cp, rank)] = 1
    torch.testing.assert_close(x.grad, expected)
    q = torch.randn(1, 3, 4, 8)  # local length 3: global 3*cp not divisible by 2*cp
    for call in (lambda: ring_attention(q, q, q, 1.0, group), lambda: window_attention_cp(q, q, q, 1.0, 2, group)):
        try:
            call()
        except ValueError:
            pass
        else:
            raise AssertionError("odd local length accepted")


def check_subgroups(seq=32):
    """CP groups that are not the whole world ({0, 2} and {1, 3}, as with tp = 2): group-relative peers."""
    world, me = dist.get_world_size(), dist.get_rank()
    groups = [dist.new_group([r for r in range(world) if r % 2 == parity]) for parity in (0, 1)]
    group = groups[me % 2]
    cp, rank = dist.get_world_size(group), dist.get_rank(group)
    q, k, v, dout = _inputs(7 + me % 2, seq, 4, 2, 8)
    for window in (None, 5):
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        ref = attention(*full, 8**-0.5, window=window)
        ref.backward(dout)
        local = [split_for_context_parallel(t, cp, rank).requires_grad_() for t in (q, k, v)]
        out = context_parallel_attention(*local, 8**-0.5, window, group)
        out.backward(split_for_context_parallel(dout, cp, rank))
        torch.testing.assert_close(gather_from_context_parallel(out.detach(), cp, group), ref.detach())
        for t, r in zip(local, full):
            torch.testing.assert_close(t.grad, split_for_context_parallel(r.grad, cp, rank))
