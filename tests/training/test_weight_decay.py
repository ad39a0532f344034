"""The weight-decay schedule as Megatron's (scheduler.start/end_weight_decay, weight_decay_incr_style):
its values, its checks, that the optimizer gets it at every step in the groups that take weight decay
(and only there), and deterministic mode."""

from __future__ import annotations

import math
import os

import pytest
import torch

from minibridge.errors import ConfigError
from minibridge.recipes import build_config
from minibridge.training.config import OptimizerConfig, SchedulerConfig
from minibridge.training.loop import Trainer
from minibridge.training.scheduler import WeightDecaySchedule

RECIPE = "llama3_debug_pretrain_config"
BASE = [
    "train.global_batch_size=4", "train.micro_batch_size=2", "model.seq_length=32", "train.eval_interval=null",
    "logger.tensorboard_dir=null", "optimizer.lr=3e-3", "scheduler.lr_warmup_iters=1", "model.vocab_size=256",
    "scheduler.lr_decay_iters=20", "model.num_layers=2", "train.train_iters=4",
]


def test_schedule_values_are_megatron_get_wd():
    assert [WeightDecaySchedule(0.033, 0.033, 10)(s) for s in (0, 5, 10, 11)] == [0.033] * 4
    linear = WeightDecaySchedule(0.0, 0.2, 4, "linear")
    assert [linear(s) for s in range(6)] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])
    cosine = WeightDecaySchedule(0.1, 0.3, 4, "cosine")  # start + (end - start) * 0.5 * (cos(pi * (1 - r)) + 1)
    want = [0.1 + 0.2 * 0.5 * (math.cos(math.pi * (1 - s / 4)) + 1) for s in range(5)]
    assert [cosine(s) for s in range(5)] == pytest.approx(want)
    assert cosine(0) == pytest.approx(0.1) and cosine(2) == pytest.approx(0.2) and cosine(9) == 0.3
    with pytest.raises(ConfigError, match="expected one of"):
        WeightDecaySchedule(0.1, 0.1, 4, "exponential")
    with pytest.raises(ConfigError, match="expected 0 <= start <= end"):
        WeightDecaySchedule(0.2, 0.1, 4, "linear")


def test_unset_start_and_end_are_the_optimizers_weight_decay():
    o = OptimizerConfig(weight_decay=0.07)
    assert SchedulerConfig().weight_decay_range(o) == (0.07, 0.07)
    assert SchedulerConfig(start_weight_decay=0.01, weight_decay_incr_style="linear").weight_decay_range(o) == (0.01, 0.07)


@pytest.mark.parametrize("overrides,message", [
    (["scheduler.end_weight_decay=0.1"], r"weight_decay_incr_style='constant' with start_weight_decay=0.033 != "
                                         r"end_weight_decay=0.1"),
    (["scheduler.weight_decay_incr_style=linear", "scheduler.end_weight_decay=0.01"],
     r"scheduler.end_weight_decay=0.01 is below scheduler.start_weight_decay=0.033"),
    (["scheduler.start_weight_decay=-0.1"], r"scheduler.start_weight_decay=-0.1: expected a number >= 0"),
    (["scheduler.weight_decay_incr_style=exp"], r"scheduler.weight_decay_incr_style='exp': expected one of "
                                                r"constant, linear, cosine"),
])
def test_bad_weight_decay_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(RECIPE, overrides=BASE + overrides)


def test_recipe_weight_decay_is_the_schedulers():
    cfg = build_config(RECIPE, overrides=BASE)
    assert (cfg.optimizer.weight_decay, cfg.scheduler.start_weight_decay, cfg.scheduler.end_weight_decay) == \
        (0.1, 0.033, 0.033)


def _one_step(tmp_path, name, *overrides):
    trainer = Trainer(build_config(RECIPE, overrides=BASE + [f"checkpoint.save={tmp_path / name}", *overrides]))
    try:
        before = {n: p.detach().clone() for n, p in trainer.chunks.named_parameters()}
        trainer.train_step()
        groups = [(g["weight_decay"], g["lr"], len(g["params"])) for g in trainer.optimizer.inner.param_groups]
        after = {n: p.detach().clone() for n, p in trainer.chunks.named_parameters()}
        return before, after, groups
    finally:
        trainer.close()


def test_the_scheduler_weight_decay_reaches_the_decayed_groups_only(tmp_path):
    """optimizer.weight_decay=0 but the scheduler's 0.5: the matrices shrink by lr * 0.5 (decoupled
    decay, the Adam step being the same as without decay), norms and biases not at all."""
    before, plain, _ = _one_step(tmp_path, "plain", "optimizer.weight_decay=0.0", "scheduler.start_weight_decay=0.0",
                                 "scheduler.end_weight_decay=0.0")
    before2, decayed, groups = _one_step(tmp_path, "decayed", "optimizer.weight_decay=0.0",
                                         "scheduler.start_weight_decay=0.5", "scheduler.end_weight_decay=0.5")
    (wd, lr, _), (no_wd, _, _) = groups
    assert (wd, no_wd) == (0.5, 0.0)
    for name in before:
        torch.testing.assert_close(before[name], before2[name])  # same seed, same start
        if before[name].ndim < 2:
            torch.testing.assert_close(decayed[name], plain[name], rtol=0, atol=0)
        else:
            torch.testing.assert_close(plain[name] - decayed[name], lr * 0.5 * before[name], rtol=1e-4, atol=1e-7)


def test_linear_weight_decay_changes_every_step(tmp_path):
    trainer = Trainer(build_config(RECIPE, overrides=BASE + [
        f"checkpoint.save={tmp_path / 'run'}", "scheduler.start_weight_decay=0.0", "scheduler.end_weight_decay=0.2",
        "scheduler.weight_decay_incr_style=linear"]))
    try:
        seen = []
        for _ in range(3):
            trainer.train_step()
            seen += [g["weight_decay"] for g in trainer.optimizer.inner.param_groups]
    finally:
        trainer.close()
    # (decayed group, norms and biases) per step: step / train_iters(4) of the way from 0 to 0.2
    assert seen == pytest.approx([0.0, 0.0, 0.05, 0.0, 0.1, 0.0])


def test_deterministic_mode_turns_on_deterministic_algorithms(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        trainer = Trainer(build_config(RECIPE, overrides=BASE + [f"checkpoint.save={tmp_path / 'run'}",
                                                                 "model.deterministic_mode=true"]))
        trainer.close()
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
