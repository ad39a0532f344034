"""FSDP2 training runs, exports and sharded builds, importable by spawned ranks (tests/parallel/test_fsdp*.py)."""

from __future__ import annotations

import json
import math
from functools import partial

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minibridge import AutoBridge
from minibridge.bridge.safetensors_io import read_tensor
from minibridge.parallel import ParallelConfig, initialize
from minibridge.parallel.fsdp import FsdpSettings, local, shard_rows, unshard
from minibridge.parallel.sharding import take_block
from minibridge.peft import apply_peft, attach_peft, init_adapters
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
    compiled = "model.compile=true" in overrides
    if compiled:  # compiled in place before fully_shard: the names stay ours
        from torch._dynamo.utils import counters

        assert all(b._compiled_call_impl is not None for c in trainer.chunks for b in c.layers.values())
        names = [n for n, _ in trainer.chunks.named_parameters()]
        assert names and not any("_orig_mod" in n for n in names), names
        graphs = counters["stats"]["unique_graphs"]
    losses = trainer.run().losses
    if compiled:  # dynamo captured the blocks' graphs in this run (not skipped, run eager)
        assert counters["stats"]["unique_graphs"] > graphs, {k: dict(v) for k, v in counters.items()}
    return [[loss, norm] for loss, norm in zip(losses, norms, strict=True)]


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
    """Load an HF folder on dp=world ranks into FSDP2 shards (sharded on meta), export it back from them."""
    dims = initialize(ParallelConfig())
    bridge = AutoBridge.from_hf_pretrained(base)
    chunks = bridge.to_model_chunks(dims, torch.float32, progress=False, fsdp=FsdpSettings())
    assert isinstance(chunks[0].embed_tokens.weight, DTensor)
    unshard(chunks)
    assert not isinstance(chunks[0].embed_tokens.weight, DTensor)
    bridge.save_hf_pretrained(chunks, target, progress=False)


def fsdp_world(runs: list[tuple], out_file: str, export: tuple[str, str] | None = None) -> None:
    if export is not None:
        export_sharded(*export)
    train_runs(runs, out_file)


class Allocations(TorchDispatchMode):
    """The most bytes alive at once (`peak`) of the storages that the ops of this thread allocated (a
    DTensor's: its local shard; meta ones left out), each counted until it is freed."""

    def __init__(self):
        super().__init__()
        self.live: list[tuple[StorageWeakRef, int]] = []
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            key = _storage(t) if isinstance(t, torch.Tensor) else None
            if key is not None and key not in inputs:
                inputs.add(key)
                storage = _plain(t).untyped_storage()
                self.live.append((StorageWeakRef(storage), storage.nbytes()))
        self.live = [(ref, n) for ref, n in self.live if not ref.expired()]
        self.peak = max(self.peak, sum(n for _, n in self.live))
        return out


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if isinstance(t, DTensor) else t


def _storage(t: torch.Tensor) -> int | None:
    t = _plain(t)
    return None if t.device.type == "meta" else t.untyped_storage().data_ptr()


def sharded_build(base: str, checkpoint: str, run: tuple, out_file: str) -> None:
    """tp=2 x FSDP2 dp=2 on 4 ranks: build on meta with DoRA adapters, read the HF weights into the dp
    shards; check each shard against the HF tensor's rows (the adapters against one process's), and
    what was allocated against the TP-local model. Then a DoRA run from the minibridge `checkpoint`."""
    dims = initialize(ParallelConfig(tp=2))
    bridge = AutoBridge.from_hf_pretrained(base)
    dora = partial(attach_peft, scheme="dora", rank=4, seed=5)
    with Allocations() as allocated:
        chunks = bridge.to_model_chunks(dims, torch.float32, progress=False, fsdp=FsdpSettings(), adapters=dora)
        init_adapters(chunks)
    reference = dict(apply_peft(bridge.to_model(dtype=torch.float32, progress=False), "dora", rank=4, seed=5)
                     .named_parameters())
    specs, model_bytes, largest = chunks.specs, 0, 0
    for name, param in chunks.named_parameters():
        assert isinstance(param, DTensor), name
        shard, first = shard_rows(param.data)
        rows, step = param.shape[0], math.ceil(param.shape[0] / dims.dp)
        assert first == min(dims.dp_rank * step, rows) and shard.shape[0] == min(step, rows - first), name
        row_bytes = math.prod(param.shape[1:]) * param.element_size()
        assert shard.untyped_storage().nbytes() <= step * row_bytes, name  # FSDP2 pads to `step` rows
        if ".lora_" in name:
            full = reference[name].detach()
        else:
            full = read_tensor(bridge.folder.tensors[bridge.mapping.to_hf(name)])
        want = take_block(full, specs.get(name), (first, first + shard.shape[0]))
        if name.endswith("lora_magnitude_vector"):  # row-parallel: squares summed over tp, then the root
            torch.testing.assert_close(shard, want, rtol=1e-6, atol=0, msg=name)
        else:
            assert torch.equal(shard, want), name
        model_bytes += param.numel() * param.element_size()  # the TP-local tensor's
        largest = max(largest, param.numel() * param.element_size())
    # at most one rank's dp shards plus one TP-local tensor at once; allocating before sharding is >= all
    assert allocated.peak <= model_bytes / dims.dp + largest, (allocated.peak, model_bytes, largest)
    assert allocated.peak < 0.7 * model_bytes, (allocated.peak, model_bytes)
    train_runs([run], out_file)
