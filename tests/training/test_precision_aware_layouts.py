"""The precision-aware optimizer (bf16 moments, parameter remainders, stochastic rounding) under every
layout the trainer has, and across checkpoints: resume is exact, and a checkpoint of fp32 masters and
one of remainders load into each other's runs."""

from __future__ import annotations

import json

from loop_workers import run
from spawn import run_distributed

RECIPE = "llama3_debug_pretrain_config"
BASE = [
    "train.global_batch_size=8", "train.micro_batch_size=2", "model.seq_length=64", "train.eval_interval=null",
    "logger.tensorboard_dir=null", "optimizer.lr=3e-3", "scheduler.lr_warmup_iters=2", "model.vocab_size=256",
    "scheduler.lr_decay_iters=20", "mixed_precision=bf16_mixed", "checkpoint.save=null",
]
LOW = ["optimizer.use_precision_aware_optimizer=true", "optimizer.exp_avg_dtype=bf16",
       "optimizer.exp_avg_sq_dtype=bf16", "optimizer.moment_rounding=stochastic"]


def _close(got, want, what, tol=3e-3):
    assert len(got) == len(want), what
    for step, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= tol * abs(w), (what, step, g, w)


def test_layouts_match_one_process_and_reshard(tmp_path):
    """ZeRO-1 over dp=2, TP=2 x PP=2, FSDP2 over dp=2: the one-process run's losses (bf16 compute); the
    TP x PP checkpoint (remainders and bf16 moments in blocks) resumes in one process on the same curve."""
    reference = run(RECIPE, BASE + LOW + ["train.train_iters=6"])
    save = [f"checkpoint.save={tmp_path / 'ck'}", "checkpoint.save_interval=4"]
    for world, layout in ((2, ["optimizer.use_distributed_optimizer=true"]),
                          (4, ["model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2"] + save),
                          (2, ["dist.use_torch_fsdp2=true"])):
        out = tmp_path / "losses.json"
        run_distributed(run, world, RECIPE, BASE + LOW + ["train.train_iters=4"] + layout, str(out))
        _close(json.loads(out.read_text()), reference[:4], layout)
    _close(run(RECIPE, BASE + LOW + ["train.train_iters=6"] + save), reference[4:], "TP x PP -> one process")


def test_resume_is_exact_and_master_forms_load_into_each_other(tmp_path):
    save = ["checkpoint.save_interval=3"]
    straight = run(RECIPE, BASE + LOW + ["train.train_iters=6"])
    first = run(RECIPE, BASE + LOW + save + ["train.train_iters=3", f"checkpoint.save={tmp_path / 'a'}"])
    second = run(RECIPE, BASE + LOW + save + ["train.train_iters=6", f"checkpoint.save={tmp_path / 'a'}"])
    assert first + second == straight  # moments, remainders and the stochastic rounding's draws all resume
    # fp32 masters saved, resumed as remainders (and the reverse): the same masters, so the same curve
    fp32 = run(RECIPE, BASE + ["train.train_iters=6"])
    run(RECIPE, BASE + save + ["train.train_iters=3", f"checkpoint.save={tmp_path / 'b'}"])
    as_remainders = run(RECIPE, BASE + save + ["train.train_iters=6", f"checkpoint.save={tmp_path / 'b'}",
                                               "optimizer.use_precision_aware_optimizer=true"])
    _close(as_remainders, fp32[3:], "fp32 masters -> remainders", tol=1e-4)
    run(RECIPE, BASE + save + ["train.train_iters=3", f"checkpoint.save={tmp_path / 'c'}",
                               "optimizer.use_precision_aware_optimizer=true"])
    as_fp32 = run(RECIPE, BASE + save + ["train.train_iters=6", f"checkpoint.save={tmp_path / 'c'}"])
    _close(as_fp32, fp32[3:], "remainders -> fp32 masters", tol=1e-4)
