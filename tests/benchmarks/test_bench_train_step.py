"""bench_train_step.py's CUDA path (`--device cuda`, gpu_check's training-step stage) as far as a CPU can
check it: the device reaches both models and their inputs, the memory statistic is chosen per device,
sides measured one after the other in one process each get a row (a failing side too), and the
arguments refuse what only a CPU run means."""

import sys
from pathlib import Path

import pytest
import torch
from hf_checkpoints import real_config, shrink

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train_step as bench  # noqa: E402


@pytest.mark.parametrize("side", bench.SIDES)
def test_the_device_reaches_the_model_and_its_inputs(side):
    """On `meta` (no memory, no GPU): every parameter the optimizer steps and the input ids are there."""
    step_fn, optimizer, ids = bench.build(side, "research", shrink(real_config("Llama-3.2-1B")), 8, "bf16", "none",
                                          device="meta")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert ids.device.type == "meta" and ids.shape == (1, 8)
    assert params and all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in params)


def test_peak_memory_reads_cuda_statistics_on_cuda_and_rss_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 5 * 2**30)
    cpu = bench.PeakMemory("cpu")
    assert calls == [] and cpu.peak_gb() >= 0.0
    cuda = bench.PeakMemory("cuda")
    assert calls == ["empty_cache", ("reset", torch.device("cuda"))]  # the previous side's peak is forgotten
    assert cuda.peak_gb() == 3.0  # above what was allocated when the side started
    assert set(bench.PeakMemory.LABELS) == {"cpu", "cuda"}


def tiny(name: str) -> dict:
    hf = shrink(real_config(name), num_hidden_layers=2)
    hf.pop("layer_types", None)
    return hf


@pytest.mark.usefixtures("one_thread")
def test_sides_in_one_process_each_report_a_row(monkeypatch):
    """The CUDA flow on CPU with toy models: both sides of both families measured in turn and reported as
    they come; a side that raises is reported as failed and the others still run."""
    configs = {"llama-2048": tiny("Llama-3.2-1B"), "gemma-4096": tiny("gemma-3-1b-it")}
    monkeypatch.setattr(bench, "case_config", lambda case, device, layers=0: (configs[case], 16))
    real_measure = bench.measure

    def measure(side, mode, hf, *rest):
        if side == "hf" and hf is configs["gemma-4096"]:
            raise RuntimeError("no kernel image is available")
        return real_measure(side, mode, hf, *rest)

    monkeypatch.setattr(bench, "measure", measure)
    args = bench.parse_args(["--device", "cuda", "--steps", "1"])
    rows = []
    pairs = [("research", "llama-2048"), ("research", "gemma-4096")]
    results = bench.in_process_results(args, pairs, "fp32", lambda *row: rows.append(row), device="cpu")
    assert [row[:3] for row in rows] == [(m, c, s) for m, c in pairs for s in bench.SIDES]
    assert results["research", "gemma-4096"]["hf"] == "failed: RuntimeError: no kernel image is available"
    for mode, case, side, result in rows[:3]:
        assert results[mode, case][side] is result and result["seq"] == 16 and result["tokens_per_sec"] > 0
        assert bench.mfu(result, case, "cpu", 0, 1e12).endswith("%")


def test_cuda_arguments(monkeypatch):
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda", "--interleaved"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--layers", "2"])  # CPU cases keep their depths
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench_train_step.py", "--device", "cuda"])
    with pytest.raises(SystemExit, match="is_available"):
        bench.main()
