"""Runs that cannot collide or drift: one run per checkpoint folder, resumes of the same run only,
non-finite gradients stop the run, metrics.jsonl holds each step once, TensorBoard follows the run."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from minibridge.errors import CheckpointMismatchError, RunLockedError, TrainingDivergedError
from minibridge.recipes import build_config
from minibridge.training.loop import Trainer
from minibridge.checkpoint import LOCK_NAME, RunLock

BASE = [
    "train.global_batch_size=4", "train.micro_batch_size=2", "model.seq_length=32", "train.eval_interval=null",
    "logger.tensorboard_dir=null", "optimizer.lr=3e-3", "scheduler.lr_warmup_iters=1", "model.vocab_size=256",
    "scheduler.lr_decay_iters=20", "model.num_layers=2",
]
RECIPE = "llama3_debug_pretrain_config"


def trainer(*overrides):
    return Trainer(build_config(RECIPE, overrides=BASE + list(overrides)))


def _holder(folder):
    """A live process of its own holding the lock of `folder` until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from minibridge.checkpoint import RunLock
        lock = RunLock({str(folder)!r}).acquire()
        print("locked", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_run_holds_its_folder_and_a_dead_ones_lock_is_taken_over(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"{tmp_path}.*pid {holder.pid}"):
            trainer(f"checkpoint.save={tmp_path}", "train.train_iters=1")
        assert not list(tmp_path.glob("iter_*"))  # refused before any work
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing anything: the kernel dropped its flock, so the folder is free.
    result = trainer(f"checkpoint.save={tmp_path}", "train.train_iters=1").run()
    assert result.last_checkpoint == tmp_path / "iter_0000001"
    with RunLock(tmp_path):  # run() released it when it ended
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_two_trainers_in_one_process_do_not_share_a_folder(tmp_path):
    first = trainer(f"checkpoint.save={tmp_path}", "train.train_iters=1")
    with pytest.raises(RunLockedError):
        trainer(f"checkpoint.save={tmp_path}", "train.train_iters=1")
    first.close()
    trainer(f"checkpoint.save={tmp_path}", "train.train_iters=1").close()


def test_resume_refuses_another_model_or_data_and_names_each_difference(tmp_path, pydoc_data):
    save = f"checkpoint.save={tmp_path}"
    trainer(save, "train.train_iters=2").run()
    with pytest.raises(CheckpointMismatchError, match=r"model\.seq_length: 32 in the checkpoint, 16 in this run"):
        trainer(save, "train.train_iters=4", "model.seq_length=16")
    with pytest.raises(CheckpointMismatchError, match=r"model\.config\.hidden_size: 128 .* 64 in this run"):
        trainer(save, "train.train_iters=4", "model.hidden_size=64", "model.intermediate_size=128")
    with pytest.raises(CheckpointMismatchError, match=r"dataset\.kind: 'mock'.*'jsonl'.*dataset\.data_paths"):
        trainer(save, "train.train_iters=4", "dataset.kind=jsonl", f"dataset.data_paths=[{pydoc_data['jsonl']}]",
                f"dataset.tokenizer={pydoc_data['tokenizer']}")
    with pytest.raises(CheckpointMismatchError, match=r"dataset\.sample_layout: 'megatron' in the checkpoint, 'legacy'"):
        trainer(save, "train.train_iters=4", "dataset.sample_layout=legacy")
    # learning rate and schedule may change on resume (Megatron allows it): the run continues
    result = trainer(save, "train.train_iters=3", "optimizer.lr=1e-3").run()
    assert len(result.losses) == 1


def nan_gradients_from_step_2(run: Trainer) -> Trainer:
    """From the second step on, one weight's gradient turns NaN while the loss stays finite (a skipped
    step changes nothing): the same on every CPU, unlike a diverging learning rate."""
    weight = run.chunks[0].layers["0"].mlp.down_proj.weight
    weight.register_hook(lambda grad: grad * float("nan") if run.step >= 1 else grad)
    return run


def test_non_finite_gradient_norm_stops_the_run_or_is_skipped_when_allowed(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"gradient norm is nan at step 2.*max_skipped_steps"):
        nan_gradients_from_step_2(trainer(f"checkpoint.save={tmp_path / 'a'}", "train.train_iters=6")).run()
    assert not list((tmp_path / "a").glob("iter_*"))  # nothing published after the divergence
    result = nan_gradients_from_step_2(trainer(f"checkpoint.save={tmp_path / 'b'}", "train.train_iters=4",
                                               "train.max_skipped_steps=3")).run()
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert len(result.losses) == 4 and [r["skipped_steps"] for r in records] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "b" / "iter_0000004" / "run.json").read_text())["skipped_steps"] == 3


def test_metrics_of_steps_redone_after_a_resume_are_superseded(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    trainer(f"checkpoint.save={tmp_path}", "train.train_iters=4", "checkpoint.save_interval=2").run()
    # a run killed after step 4 with its newest checkpoint at step 2 (and a torn last line)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("2")
    metrics.write_text(metrics.read_text() + '{"step": 5, "lo')
    trainer(f"checkpoint.save={tmp_path}", "train.train_iters=5", "checkpoint.save_interval=2").run()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_tensorboard_follows_the_run_folder_and_is_quiet_unless_asked(tmp_path, monkeypatch, caplog):
    from minibridge.training import progress as train_logging

    opened = []
    monkeypatch.setattr(train_logging.TrainingLogger, "_open_tensorboard",
                        staticmethod(lambda folder, config: opened.append(folder)))
    cfg = build_config(RECIPE, overrides=BASE + [f"checkpoint.save={tmp_path / 'run'}", "train.train_iters=1"])
    cfg.logger.tensorboard_dir = build_config(RECIPE).logger.tensorboard_dir  # the recipe's default
    assert cfg.logger.tensorboard_dir == "auto"
    monkeypatch.setattr(train_logging, "_tensorboard_installed", lambda: True)
    Trainer(cfg).run()
    assert opened == [tmp_path / "run" / "tb_logs"]
    # not installed and not asked for: no TensorBoard, no warning
    monkeypatch.setattr(train_logging, "_tensorboard_installed", lambda: False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minibridge.training"):
        train_logging.TrainingLogger(tmp_path / "quiet", total_iters=1, tensorboard_dir="auto").finish()
    assert not [r for r in caplog.records if r.name == "minibridge.training"]
    assert opened == [tmp_path / "run" / "tb_logs"]
