"""TrainingLogger, the loss-curve PNG, non-finite loss checks and the FLOPs count (all CPU, fast)."""

import math
import json
import pickle
import struct

import pytest
import torch

from minibridge.models.config import FULL, SLIDING, ModelConfig
from minibridge.training import flops
from minibridge.training.flops import average_keys_per_query, mfu, model_flops_per_token
from minibridge.training.progress import (
    NonFiniteLossError,
    TrainingLogger,
    check_finite,
    format_progress,
    memory_gb,
    plot_loss_curve,
    read_loss_history,
)


def metrics(loss=3.0, **extra):
    return {"loss": loss, "lr": 3e-4, "grad_norm": 0.5, "tokens_per_sec": 1000.0, **extra}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_jsonl_has_one_line_per_step_with_required_keys(tmp_path):
    logger = TrainingLogger(tmp_path, total_iters=3)
    for step in (1, 2, 3):
        logger.log_step(step, metrics(loss=torch.tensor(4.0 - step), mfu=0.25))
        # flushed per line: visible before finish(), as after a killed run
        assert len(read_jsonl(tmp_path / "metrics.jsonl")) == step
    logger.finish()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu"} <= set(record)
    assert records[0]["loss"] == 3.0 and isinstance(records[0]["loss"], float)


def test_resumed_run_appends_and_last_value_of_a_step_wins(tmp_path):
    with TrainingLogger(tmp_path, total_iters=4) as logger:
        for step in (1, 2, 3):
            logger.log_step(step, metrics(loss=10.0 + step))
    with TrainingLogger(tmp_path, total_iters=4) as logger:  # resumed from a checkpoint at step 2
        for step in (3, 4):
            logger.log_step(step, metrics(loss=float(step)))
        logger.log_validation(4, 2.5)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 3, 4, 4]
    assert records[-1] == {"step": 4, "val_loss": 2.5, "val_ppl": math.exp(2.5)}
    train, val = read_loss_history(tmp_path / "metrics.jsonl")
    assert train == [(1, 11.0), (2, 12.0), (3, 3.0), (4, 4.0)]
    assert val == [(4, 2.5)]


def test_nan_is_written_as_null_and_torn_lines_are_skipped(tmp_path, capsys):
    with TrainingLogger(tmp_path, total_iters=2) as logger:
        logger.log_step(1, metrics(loss=2.0))
        logger.log_step(2, metrics(loss=float("nan")))
    assert "loss nan" in capsys.readouterr().out  # the progress line still says what happened
    path = tmp_path / "metrics.jsonl"
    assert json.loads(path.read_text().splitlines()[1])["loss"] is None  # strict JSON, no NaN token
    path.write_text(path.read_text() + '{"step": 3, "lo')  # killed mid-write
    assert read_loss_history(path) == ([(1, 2.0)], [])


def test_progress_line_format():
    line = format_progress(
        120,
        1000,
        {"loss": 3.21454, "lr": 2.95e-4, "grad_norm": 0.8123, "tokens_per_sec": 12345.4, "mfu": 0.3121, "mem_gb": 10.26},
        eta_seconds=843.2,
    )
    expected = "step 120/1000 | loss 3.2145 | lr 2.95e-04 | grad norm 0.812 | 12,345 tok/s | MFU 31.2% | mem 10.3 GB | ETA 0:14:03"
    assert line == expected
    assert format_progress(5, 10, metrics()) == "step 5/10 | loss 3.0000 | lr 3.00e-04 | grad norm 0.500 | 1,000 tok/s"


def test_prints_every_log_interval_with_decreasing_eta(tmp_path, capsys):
    logger = TrainingLogger(tmp_path, total_iters=10, log_interval=3)
    for step in range(1, 11):
        logger.log_step(step, metrics(step_time=2.0))
    logger.finish()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["step 3/10", "step 6/10", "step 9/10", "step 10/10"]
    etas = [line.split("ETA ")[1] for line in lines]
    assert etas == ["0:00:14", "0:00:08", "0:00:02", "0:00:00"]
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 10  # every step, not just printed ones


def test_eta_from_wall_clock_when_no_step_time_given(tmp_path, monkeypatch):
    clock = iter([100.0, 101.0, 103.0, 104.0])  # steps take 1 s, then 2 s (over 1 step), then 0.5 s each
    monkeypatch.setattr("minibridge.training.progress.time.perf_counter", lambda: next(clock))
    logger = TrainingLogger(None, total_iters=100)
    logger.log_step(1, metrics())
    assert logger.eta_seconds(1) is None  # nothing measured yet
    logger.log_step(2, metrics())
    logger.log_step(3, metrics())
    logger.log_step(5, metrics())
    assert logger.eta_seconds(5) == pytest.approx(95 * (1.0 + 2.0 + 0.5) / 3)


def test_validation_is_printed_and_logged(tmp_path, capsys):
    with TrainingLogger(tmp_path, total_iters=10) as logger:
        logger.log_validation(10, torch.tensor(2.0))
    assert "val loss 2.0000 | val ppl 7.39" in capsys.readouterr().out
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 10, "val_loss": 2.0, "val_ppl": math.exp(2.0)}]


@pytest.mark.parametrize("loss, ppl", [(800.0, None), (float("nan"), None), (60.0, math.exp(60.0))])
def test_validation_perplexity_overflow_and_nan_are_null(tmp_path, loss, ppl):
    """exp overflows past ~709.78 nats: inf, written as null like nan; large finite values stay."""
    with TrainingLogger(tmp_path, total_iters=10) as logger:
        logger.log_validation(10, loss)
    record = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert record["val_ppl"] == ppl


def test_other_ranks_write_and_print_nothing(tmp_path, capsys):
    logger = TrainingLogger(tmp_path / "logs", total_iters=2, rank=1, tensorboard_dir=tmp_path / "tb")
    logger.log_step(1, metrics())
    logger.log_validation(1, 2.0)
    assert logger.finish() is None
    assert not (tmp_path / "logs").exists() and not (tmp_path / "tb").exists()
    assert capsys.readouterr().out == ""


def test_missing_metric_keys_fail_clearly(tmp_path):
    logger = TrainingLogger(None, total_iters=1)
    with pytest.raises(ValueError, match="grad_norm"):
        logger.log_step(1, {"loss": 1.0, "lr": 1e-3, "tokens_per_sec": 1.0})


def test_missing_tensorboard_and_wandb_warn_and_continue(tmp_path, monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_tb_no_wandb(name, *args, **kwargs):
        if name in ("torch.utils.tensorboard", "wandb"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tb_no_wandb)
    with caplog.at_level("WARNING", logger="minibridge.training"):
        logger = TrainingLogger(tmp_path, total_iters=1, tensorboard_dir=tmp_path / "tb", wandb_project="p")
    messages = [r.getMessage() for r in caplog.records]
    assert any("tensorboard" in m for m in messages) and any("wandb" in m for m in messages)
    logger.log_step(1, metrics())
    logger.finish()
    assert (tmp_path / "metrics.jsonl").exists()


class FakeSink:
    """Stands in for SummaryWriter and a wandb run; records the calls."""

    def __init__(self, *args, **kwargs):
        self.init_kwargs, self.calls = kwargs, []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_tensorboard_and_wandb_receive_metrics(tmp_path, monkeypatch):
    import sys
    import types

    runs = []
    fake_tb = types.SimpleNamespace(SummaryWriter=lambda **kw: runs.append(FakeSink(**kw)) or runs[-1])
    fake_wandb = types.SimpleNamespace(init=lambda **kw: runs.append(FakeSink(**kw)) or runs[-1])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake_tb)
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setenv("WANDB_API_KEY", "x")
    logger = TrainingLogger(tmp_path, total_iters=2, tensorboard_dir=tmp_path / "tb", wandb_project="proj",
                            wandb_exp_name="run1", config_dict={"lr": 3e-4})
    logger.log_step(1, metrics(loss=2.0))
    logger.log_validation(1, 1.5)
    logger.finish()
    tb, run = runs
    assert tb.init_kwargs == {"log_dir": str(tmp_path / "tb")}
    assert ("add_scalar", ("train/loss", 2.0, 1), {}) in tb.calls
    assert ("add_scalar", ("val/loss", 1.5, 1), {}) in tb.calls
    assert tb.calls[-1][0] == "close"
    assert run.init_kwargs["project"] == "proj" and run.init_kwargs["config"] == {"lr": 3e-4}
    assert ("log", ({"val/loss": 1.5, "val/ppl": math.exp(1.5)},), {"step": 1}) in run.calls
    assert run.calls[-1][0] == "finish"


def test_wandb_without_api_key_warns(tmp_path, monkeypatch, caplog):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: pytest.fail("init called")))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with caplog.at_level("WARNING", logger="minibridge.training"):
        TrainingLogger(tmp_path, total_iters=1, wandb_project="proj").finish()
    assert [r.getMessage() for r in caplog.records if "WANDB_API_KEY" in r.getMessage()]


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, after checking its signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_loss_curve_png(tmp_path):
    with TrainingLogger(tmp_path, total_iters=300) as logger:
        for step in range(1, 301):
            logger.log_step(step, metrics(loss=2.0 + 8.0 / step))
        logger.log_validation(150, 2.3)
    assert png_size(tmp_path / "loss_curve.png") == (800, 500)
    assert plot_loss_curve(tmp_path / "missing.jsonl", tmp_path / "empty.png") == tmp_path / "empty.png"


def test_no_loss_curve_without_matplotlib_only_a_hint(tmp_path, monkeypatch, caplog):
    for name in ("matplotlib", "matplotlib.backends.backend_agg", "matplotlib.figure"):
        monkeypatch.setitem(__import__("sys").modules, name, None)  # import -> ImportError, even once imported
    with caplog.at_level("WARNING", logger="minibridge.training"):
        with TrainingLogger(tmp_path, total_iters=3) as logger:
            logger.log_step(1, metrics())
    assert not (tmp_path / "loss_curve.png").exists() and (tmp_path / "metrics.jsonl").exists()
    assert [r for r in caplog.records if "pip install 'minibridge[matplotlib]'" in r.getMessage()]


def test_check_finite():
    assert check_finite(torch.tensor(1.5), step=3) == 1.5
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 57; stopping\. .*kept at /ckpt/iter_50"):
        check_finite(float("nan"), step=57, last_checkpoint="/ckpt/iter_50")
    with pytest.raises(RuntimeError, match="inf at step 2.*No checkpoint"):
        check_finite(torch.tensor(float("inf")), step=2)
    error = pickle.loads(pickle.dumps(NonFiniteLossError(float("nan"), 7, "/ckpt")))  # crosses processes
    assert (error.step, error.last_checkpoint, str(error)[:21]) == (7, "/ckpt", "loss is nan at step 7")


def test_memory_gb_on_cpu_is_the_peak_rss():
    value = memory_gb("cpu")
    assert value is None or 0.01 < value < 1024


def tiny_config(**overrides):
    base = dict(family="gemma3", vocab_size=100, hidden_size=16, intermediate_size=40, num_layers=2,
                num_heads=4, num_kv_heads=2, head_dim=8, sliding_window=4, tie_word_embeddings=True)
    return ModelConfig(**{**base, **overrides})


def test_flops_per_token_matches_a_hand_count():
    config = tiny_config(layer_types=(FULL, SLIDING))
    T = 8
    # Per layer: q and o 2*16*32 each, k and v 2*16*16 each, MLP 3 * 2*16*40.
    linear = 2 * (2 * 16 * 32) + 2 * (2 * 16 * 16) + 3 * 2 * 16 * 40
    full_keys = sum(range(1, 9)) / 8  # query i sees i keys: 4.5
    window_keys = (1 + 2 + 3 + 4 + 4 + 4 + 4 + 4) / 8  # capped at W = 4: 3.25
    attention = 4 * 32 * full_keys + 4 * 32 * window_keys  # QK^T and PV, 2 FLOPs per MAC each
    forward = 2 * linear + attention + 2 * 16 * 100  # + output layer (tied or not, it is a matmul)
    assert average_keys_per_query(T) == full_keys
    assert average_keys_per_query(T, 4) == window_keys
    assert model_flops_per_token(config, T) == pytest.approx(3 * forward)


def test_sliding_layers_are_cheaper_and_equal_full_when_the_window_covers_the_sequence():
    full = model_flops_per_token(tiny_config(layer_types=(FULL, FULL)), 64)
    mixed = model_flops_per_token(tiny_config(layer_types=(FULL, SLIDING)), 64)
    assert mixed < full
    assert model_flops_per_token(tiny_config(layer_types=(FULL, SLIDING), sliding_window=64), 64) == full
    # Linear terms dominate at T=1: close to 6 * (non-embedding params + output layer).
    cfg = tiny_config(layer_types=(FULL, FULL))
    weights = cfg.num_layers * (16 * 8 * (2 * 4 + 2 * 2) + 3 * 16 * 40) + 100 * 16
    assert model_flops_per_token(cfg, 1) == pytest.approx(6 * weights + 3 * 2 * 4 * 32)


def test_mfu_and_peaks(monkeypatch):
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
    assert mfu(8000.0, 1e9, 1e13, num_devices=8) == pytest.approx(0.1)
    assert mfu(1000.0, 1e9, None) is None
    assert flops._gpu_peak("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert flops._gpu_peak("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert flops._gpu_peak("NVIDIA H200", torch.bfloat16) == 989e12
    assert flops._gpu_peak("NVIDIA A100-SXM4-80GB", torch.bfloat16) == 312e12
    assert flops._gpu_peak("NVIDIA L40S", torch.bfloat16) == 362e12
    assert flops._gpu_peak("Some Future GPU", torch.bfloat16) is None
    calls = []
    monkeypatch.setattr(flops, "_CPU_PEAK_CACHE", {})
    monkeypatch.setattr(flops, "measure_cpu_matmul_flops", lambda dtype: calls.append(dtype) or 1e11)
    assert flops.peak_flops("cpu", torch.bfloat16) == 1e11
    assert flops.peak_flops("cpu", torch.bfloat16) == 1e11
    assert calls == [torch.bfloat16]  # measured once per process and dtype


def test_cpu_matmul_benchmark_gives_a_plausible_rate():
    rate = flops.measure_cpu_matmul_flops(torch.float32, max_size=512, seconds=0.05)
    assert 1e8 < rate < 1e15
