"""Learning rates and weight decays equal Megatron-Core's, float for float.

The expected values are tests/data/megatron_schedule/megatron_core_0.19.2.json, written by make_fixture.py
beside it with Megatron-Core 0.19.2's real OptimizerParamScheduler, stepped as Megatron Bridge 0.6.2's loop
steps it (entry k - 1 is what iteration k trains with, after k - 1 successful updates).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minibridge.errors import ConfigError
from minibridge.recipes import build_config
from minibridge.training.scheduler import LRSchedule, schedules_of

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "megatron_schedule" / "megatron_core_0.19.2.json"
CASES = json.loads(FIXTURE.read_text())["cases"]
SECTION = {"lr": "optimizer", "min_lr": "optimizer", "train_iters": "train", "global_batch_size": "train"}


def overrides_of(case: dict) -> list[str]:
    """A fixture case's settings as minibridge overrides (scheduler.* unless SECTION says otherwise)."""
    decay = [] if "lr_decay_iters" in case else ["scheduler.lr_decay_iters=null"]  # null: over train_iters
    return [f"{SECTION.get(key, 'scheduler')}.{key}={value}" for key, value in case.items()] + decay


def config_of(case: dict):
    return build_config("llama3_debug_pretrain_config",
                        overrides=overrides_of(case) + ["train.micro_batch_size=1", "optimizer.weight_decay=0"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_learning_rate_and_weight_decay_equal_megatron_core(name):
    case = CASES[name]
    lr, weight_decay = schedules_of(config_of(case["config"]))
    assert [lr(updates) for updates in range(len(case["lr"]))] == case["lr"]
    assert [weight_decay(updates) for updates in range(len(case["wd"]))] == case["wd"]


def test_warmup_starts_at_lr_warmup_init_and_reaches_lr_at_its_last_iteration():
    """Issue 27's Llama case: iterations 1-5 at 0, 7.5e-4, 1.5e-3, 2.25e-3, 3e-3 (it was one step ahead)."""
    lr = LRSchedule(lr=3e-3, min_lr=3e-4, warmup_iters=4, decay_iters=12, samples_per_iter=8)
    assert [lr(k) for k in range(5)] == [0.0, 7.5e-4, 1.5e-3, 0.0022500000000000003, 3e-3]
    assert LRSchedule(lr=1.0, warmup_iters=2, decay_iters=4, warmup_init=0.25)(0) == 0.25


@pytest.mark.parametrize("overrides, message", [
    (["scheduler.lr_warmup_fraction=0.1"], "use one of them (set lr_warmup_iters=0)"),
    (["scheduler.lr_warmup_iters=0", "scheduler.lr_warmup_fraction=1.5"], "expected 0 <= fraction < 1"),
    (["scheduler.lr_warmup_init=1"], "expected 0 <= lr_warmup_init <= optimizer.lr"),
])
def test_bad_warmup_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config("llama3_debug_pretrain_config", overrides=overrides)
