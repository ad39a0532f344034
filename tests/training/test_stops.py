"""Planned and preempted stops (issue 29, row 1): SIGTERM mid-run saves and exits 0, under torchrun too,
within torchrun's 30 s grace; rerunning resumes with the losses of an uninterrupted run; exit_interval and
exit_duration_in_mins stop with a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


BASE = [
    "train.global_batch_size=8", "train.micro_batch_size=2", "model.seq_length=64", "train.eval_interval=null",
    "logger.tensorboard_dir=null", "optimizer.lr=3e-3", "scheduler.lr_warmup_iters=2", "model.vocab_size=256",
    "logger.log_interval=1", "checkpoint.save_interval=1000", "train.train_iters=12",
]
ROOT = Path(__file__).resolve().parents[2]


def step_losses(folder: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def start(argv: list[str], ranks: int) -> subprocess.Popen:
    launcher = ["-m", "torch.distributed.run", f"--nproc-per-node={ranks}"] if ranks > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *launcher, "-m", "minibridge.train", "--recipe",
                             "llama3_debug_pretrain_config", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def signal_at_step(proc: subprocess.Popen, step: int, sig: int) -> tuple[float, str]:
    """Send `sig` once the run printed step `step`; returns (seconds from the signal to its exit, output)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {step}/"):
            break
    sent = time.monotonic()
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=120)
    return time.monotonic() - sent, "".join(lines) + rest


@pytest.mark.parametrize("ranks", [2])  # one process takes the same path, without the agreement (exit_interval below)
def test_sigterm_saves_exits_and_the_rerun_equals_an_uninterrupted_run(tmp_path, ranks):
    layout = ["model.tensor_model_parallel_size=2"] if ranks == 2 else []
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    done = start(BASE + layout + [f"checkpoint.save={straight}"], ranks)
    assert done.wait(timeout=600) == 0, done.stdout.read()[-3000:]
    argv = BASE + layout + [f"checkpoint.save={cut}"]
    seconds, out = signal_at_step(start(argv, ranks), 3, signal.SIGTERM)
    assert seconds < 30, (seconds, out[-3000:])  # torchrun SIGKILLs its workers 30 s after forwarding
    assert "stopped after step" in out and "(SIGTERM)" in out and "rerun the same command" in out, out[-3000:]
    stopped = int((cut / "latest_checkpointed_iteration.txt").read_text())
    assert 3 <= stopped < 12 and (cut / f"iter_{stopped:07d}").is_dir()
    rerun = start(argv, ranks)
    assert rerun.wait(timeout=600) == 0, rerun.stdout.read()[-3000:]
    assert f"resumed from {cut / f'iter_{stopped:07d}'} at step {stopped}" in rerun.stdout.read()
    assert step_losses(cut) == step_losses(straight)  # every step, before and after the stop, bit for bit


def test_exit_interval_and_duration_stop_with_a_checkpoint(tmp_path):
    from minibridge.recipes import build_config
    from minibridge.training.loop import Trainer

    result = Trainer(build_config("llama3_debug_pretrain_config", overrides=BASE + [
        f"checkpoint.save={tmp_path / 'a'}", "train.exit_interval=4"])).run()
    assert result.stopped_by == "train.exit_interval" and len(result.losses) == 4
    assert (tmp_path / "a" / "latest_checkpointed_iteration.txt").read_text() == "4" and result.hf_export is None
    result = Trainer(build_config("llama3_debug_pretrain_config", overrides=BASE + [
        f"checkpoint.save={tmp_path / 'b'}", "train.exit_duration_in_mins=1e-6"])).run()
    assert result.stopped_by == "train.exit_duration_in_mins" and len(result.losses) == 1
    assert (tmp_path / "b" / "iter_0000001").is_dir()
