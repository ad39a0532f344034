"""bench_train_step.py's CUDA path (`--device cuda`, gpu_check's training-step stage) as far as a CPU can
check it: the device reaches both models and their inputs, the memory statistic is chosen per device,
sides measured one after the other in one process each get a row (a failing side too), and the
arguments refuse what only a CPU run means. Also the step's timing (its optimizer share) and the speed
ratio's ceiling."""

import sys
import time
from pathlib import Path

import pytest
import torch
from hf_checkpoints import real_config, shrink

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train_step as bench  # noqa: E402
from report import best_training_step, timed_step  # noqa: E402


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


class SlowOptimizer:
    """An optimizer whose step takes a known time (and changes nothing)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def step(self):
        time.sleep(self.seconds)

    def zero_grad(self):
        pass


def test_a_timed_step_gives_its_optimizer_share_and_the_best_step_keeps_the_last_loss():
    weight = torch.ones(4, requires_grad=True)
    losses = iter([3.0, 2.0, 1.0])
    step_fn = lambda ids: (weight * next(losses)).sum()  # noqa: E731
    timing = timed_step(step_fn, SlowOptimizer(0.05), torch.zeros(1, 4))
    assert 0.05 <= timing.optimizer_seconds <= timing.seconds and timing.loss == 12.0
    best = best_training_step(step_fn, SlowOptimizer(0.0), torch.zeros(1, 4), steps=1)
    assert best.loss == 4.0 and best.optimizer_seconds < 0.05  # losses 8 (warm-up), then 4


def test_the_speed_ceiling_is_transformers_step_over_its_products_at_the_peak_plus_its_optimizer():
    hf = {"step_s": 21.3, "optimizer_s": 1.3, "seq": 2048}
    # issue 33's machine: 3.136 GFLOP a token at 429.4 GFLOP/s is 14.96 s of products, + 1.3 s: 1.31x
    assert bench.speed_ceiling("research", hf, 3.136e9, 429.4e9) == "1.31x"
    assert bench.speed_ceiling("research", {**hf, "optimizer_s": 0.0}, 3.136e9, 429.4e9) == "1.42x"
    assert bench.speed_ceiling("trainer", hf, 3.136e9, 429.4e9) == "-"  # the two sides' optimizers differ
    assert bench.speed_ceiling("research", hf, 3.136e9, None) == "-"  # a GPU without a datasheet rate
