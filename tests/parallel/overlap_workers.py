"""Spawned-rank bodies for test_overlap.py: the same run with ddp.overlap_grad_reduce off and on."""

from __future__ import annotations

import torch

from minibridge.recipes import build_config
from minibridge.training.loop import Trainer

BASE = ["train.global_batch_size=8", "train.micro_batch_size=2", "model.seq_length=32", "train.eval_interval=null",
        "logger.tensorboard_dir=null", "optimizer.lr=3e-3", "scheduler.lr_warmup_iters=1", "model.vocab_size=128",
        "scheduler.lr_decay_iters=20", "model.num_layers=2", "optimizer.clip_grad=0.5"]


def _steps(recipe: str, overrides: list[str], steps: int):
    trainer = Trainer(build_config(recipe, overrides=BASE + overrides))
    try:
        metrics, launched = [], []
        for _ in range(steps):
            m = trainer.train_step()
            metrics.append((m["loss"], m["grad_norm"]))
            launched.append([(r.launched_in_backward, len(r.buckets)) for r in trainer.reducers if r is not None])
        weights = {n: p.detach().clone() for n, p in trainer.chunks.named_parameters()}
        return metrics, weights, launched
    finally:
        trainer.close()


def overlap_matches(cases: list[tuple[str, list[str]]], steps: int = 2) -> None:
    """Every case: losses, gradient norms and the weights after `steps` steps are bitwise those of the
    run without overlap, and backward itself launched every bucket (none left to finish's fallback)."""
    for recipe, overrides in cases:
        plain, plain_weights, _ = _steps(recipe, overrides, steps)
        over, over_weights, launched = _steps(recipe, overrides + ["ddp.overlap_grad_reduce=true"], steps)
        where = f"{recipe} {overrides}"
        assert plain == over, f"{where}: (loss, grad_norm) per step {plain} without overlap, {over} with"
        for name, w in plain_weights.items():
            assert torch.equal(w, over_weights[name]), f"{where}: weight {name} differs after {steps} steps"
        assert launched[-1] and all(done == total for done, total in launched[-1]), \
            f"{where}: buckets launched during backward / buckets, per chunk: {launched[-1]}"
