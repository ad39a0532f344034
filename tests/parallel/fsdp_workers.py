"""FSDP2 training runs and exports, importable by spawned ranks (tests/parallel/test_fsdp.py)."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from minibridge import AutoBridge
from minibridge.parallel import ParallelConfig, initialize
from minibridge.parallel.fsdp import apply_fsdp, local, unshard
from minibridge.recipes import build_config
from minibridge.training.loop import Trainer


def train(recipe: str, base: str | None, scheme: str | None, overrides: list[str]) -> list[list[float]]:
    """One run's [loss, grad norm] per step (the norm shows a gradient scaled by a constant, which AdamW's
    losses hardly do); under dist.use_torch_fsdp2 every trainable parameter and its Adam moments are
    dp-sharded DTensors."""
    trainer = Trainer(build_config(recipe, base, scheme, overrides))
    fsdp = "dist.use_torch_fsdp2=true" in overrides
    norms, step = [], trainer.train_step

    def recorded() -> dict:
        metrics = step()
        norms.append(metrics["grad_norm"])
        if fsdp and len(trainer.chunks) == 1 and trainer.step == trainer.config.train.train_iters:
            same_as_torch_state_dict(trainer)  # after the last step, before an export unshards the model
        return metrics

    trainer.train_step = recorded
    if fsdp:
        params = [p for _, p in trainer.chunks.named_parameters()]
        assert params and all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in params)
        inner = trainer.optimizer.inner
        assert all(isinstance(inner.state[p]["exp_avg"], DTensor) for g in inner.param_groups for p in g["params"])
    return [[loss, norm] for loss, norm in zip(trainer.run().losses, norms, strict=True)]


def same_as_torch_state_dict(trainer) -> None:
    """What checkpoints store of the optimizer is what torch's get_optimizer_state_dict returns for the
    FSDP2 model: the same names, the same DTensor moments, the same param_groups (names and settings)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    groups = trainer.optimizer.named_param_groups()  # collective over pp: first, on every rank
    theirs = get_optimizer_state_dict(trainer.chunks[0], trainer.optimizer.inner)
    ours = trainer.optimizer.named_state()
    assert set(theirs["state"]) == set(ours) and ours
    for name, entries in ours.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):  # local shards: torch.equal of DTensors is a collective
            assert torch.equal(local(theirs["state"][name][key]), local(entries[key])), (name, key)
    names = {n for g in groups for n in g["params"]}
    assert set(ours) <= names  # the groups name every stage's parameters, this stage's among them
    here = [sorted(n for n in g["params"] if n in ours) for g in groups]  # this pipeline stage's names
    assert [sorted(g["params"]) for g in theirs["param_groups"]] == here
    for mine, torchs in zip(groups, theirs["param_groups"]):
        assert {k: v for k, v in mine.items() if k != "params"} == {k: v for k, v in torchs.items() if k != "params"}


def train_runs(runs: list[tuple], out_file: str) -> None:
    """Every (recipe, base, scheme, overrides) run in this world, in order; rank 0 writes their losses."""
    losses = [train(*run) for run in runs]
    if dist.get_rank() == 0:
        with open(out_file, "w") as f:
            json.dump(losses, f)


def export_sharded(base: str, target: str) -> None:
    """Load an HF folder on dp=world ranks, shard it with FSDP2, export it back from the shards."""
    dims = initialize(ParallelConfig())
    bridge = AutoBridge.from_hf_pretrained(base)
    chunks = apply_fsdp(bridge.to_model_chunks(dims, torch.float32, progress=False), dims)
    assert isinstance(chunks[0].embed_tokens.weight, DTensor)
    unshard(chunks)
    assert not isinstance(chunks[0].embed_tokens.weight, DTensor)
    bridge.save_hf_pretrained(chunks, target, progress=False)


def fsdp_world(runs: list[tuple], out_file: str, export: tuple[str, str] | None = None) -> None:
    if export is not None:
        export_sharded(*export)
    train_runs(runs, out_file)
