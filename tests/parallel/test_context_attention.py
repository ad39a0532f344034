"""Context-parallel attention (zigzag ring for global layers, halo exchange for sliding-window layers)
against single-process `models.common.attention` on CPU gloo ranks, fp32, outputs and dq, dk, dv.

Each test spawns one world and runs many cases inside it (spawning dominates the cost)."""

import pytest
import torch

from spawn import run_distributed
from cp_workers import run_checks

from minibridge.parallel.context import split_for_context_parallel, zigzag_indices


def _cases(seqs, windows_of):
    cases = []
    for seq, heads, kv_heads, head_dim in seqs:
        cases.append(dict(kind="ring", seq=seq, heads=heads, kv_heads=kv_heads, head_dim=head_dim))
        for window in windows_of(seq):
            cases.append(dict(kind="window", seq=seq, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                              window=window))
    return cases


def _windows(seq):
    return [1, 3, 8, seq // 2, seq + 5]


SHAPES = [(32, 4, 1, 8), (48, 4, 2, 16), (32, 4, 4, 16)]  # MQA, GQA, MHA


def _extra(seq):
    return [
        dict(kind="ring", seq=seq, heads=4, kv_heads=2, head_dim=8, window=5),  # ring with a window
        dict(kind="dispatch", seq=seq, heads=4, kv_heads=2, head_dim=8, window=None),
        dict(kind="dispatch", seq=seq, heads=4, kv_heads=2, head_dim=8, window=7),
        dict(kind="dispatch", seq=seq, heads=4, kv_heads=2, head_dim=8, window=seq),
    ]


def test_cp2_matches_single_process_and_zigzag_helpers():
    checks = [("check_zigzag_and_errors", ()), ("check_attention", (_cases(SHAPES, _windows) + _extra(32),))]
    run_distributed(run_checks, 2, checks)


def test_cp4_matches_single_process_and_window_traffic_is_flat_in_seq_len():
    # chunk length 4 (T=32) and 6 (T=48): windows 8, T/2 and > T span several chunks and ranks.
    # Then p2p bytes per rank of the window path at T = 32, 64, 128 (W = 5) must be equal, and two
    # CP groups of 2 inside the world of 4 must work with group-relative peers.
    checks = [
        ("check_attention", (_cases(SHAPES, _windows) + _extra(48),)),
        ("check_communication", (5, (32, 64, 128))),
        ("check_subgroups", ()),
    ]
    run_distributed(run_checks, 4, checks)


def test_bad_lengths_name_both_numbers():
    assert zigzag_indices(8, 2, 0).tolist() == [0, 1, 6, 7]
    assert zigzag_indices(8, 2, 1).tolist() == [2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"seq_len 30 .* 2 \* 4 = 8"):
        zigzag_indices(30, 4, 0)
    with pytest.raises(ValueError, match="seq_len 30"):
        split_for_context_parallel(torch.zeros(1, 30), 4, 1)
