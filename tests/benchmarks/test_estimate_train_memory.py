"""estimate_train_memory at toy size: LiveBytes counts each storage once from the op that makes it to its
last reference, the peak of a training step under FakeTensorMode is the peak of the same step run for
real (the tensors are the same, only their data is missing), and a bench_train_step report's rows read back."""

import sys
from pathlib import Path

import pytest
import torch
from hf_checkpoints import real_config, shrink

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train_step as bench  # noqa: E402
import estimate_train_memory as estimator  # noqa: E402
from report import train_step  # noqa: E402


def test_live_bytes_counts_storages_not_views_and_forgets_the_freed():
    with estimator.fake_mode(), estimator.LiveBytes() as live:
        a = torch.empty(1000)  # 4000 bytes
        view = a[:10].view(2, 5)
        assert live.live == 4000
        b = a * 2
        assert live.live == 8000
        del a
        assert live.live == 8000  # the view holds a's storage
        del view
        assert live.live == 4000
        b.resize_(3000)  # grown in place
        assert live.live == 12000
        del b
        assert live.live == 0 and live.peak == 12000
        assert torch.ones(3, dtype=torch.bool).all().item() is True  # a value a fake tensor lacks: assumed
    assert sum(live.assumed.values()) == 1


def test_live_bytes_snapshot_names_what_the_peak_holds():
    live = estimator.LiveBytes()
    with estimator.fake_mode(), live:
        keep = torch.empty(1 << 19)  # 2 MiB
        live.kinds = lambda: {id(keep.untyped_storage()): "parameters"}
        live.mark("forward")
        transient = torch.zeros(1 << 20, dtype=torch.float64)  # 8 MiB
        del transient
    assert live.peak == 10 * 2**20 and live.peak_phase == "step 1 forward"
    assert live.at_peak == {"parameters": 2 * 2**20, "forward: zeros.default (float64)": 8 * 2**20}


def tiny_llama() -> dict:
    hf = shrink(real_config("Llama-3.2-1B"), num_hidden_layers=2)
    hf.pop("layer_types", None)
    return hf


def real_peak(side: str, mode: str, hf: dict, seq: int) -> int:
    """The same step on real tensors (their arithmetic done), counted by the same LiveBytes."""
    with estimator.LiveBytes() as live:
        step_fn, optimizer, ids = bench.build(side, mode, hf, seq, "fp32", "none", device="cpu")
        for _ in range(2):
            train_step(step_fn, optimizer, ids, mark=live.mark)
    return live.peak


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("side,mode", [("minibridge", "research"), ("minibridge", "research-in-backward"),
                                       ("hf", "research")])
def test_the_fake_step_peaks_where_the_real_step_does(side, mode):
    hf = tiny_llama()
    est = estimator.estimate(side, mode, hf, 16, "fp32", steps=1)
    assert est["peak_gib"] * estimator.GiB == real_peak(side, mode, hf, 16)
    held = dict(est["at_peak"])
    assert held["parameters"] > 0 and held["optimizer state"] > 0


def test_measured_rows_read_a_bench_train_step_report(tmp_path):
    report = tmp_path / "bench.md"
    report.write_text("# bench_train_step (...)\n\n| mode | case | side | seq | tokens/s | step (s) | MFU | peak RSS (GB) |\n"
                      "|---|---|---|---|---|---|---|---|\n"
                      "| research-in-backward | llama-2048 | minibridge | 32 | 0.1 | 231.162 | 32.3% | 4.31 |\n"
                      "| research | llama-2048 | hf | - | killed (out of memory) | - | - | - |\n")
    assert estimator.measured_rows(report) == {("research-in-backward", "llama-2048", "minibridge", 32): 4.31}
