"""Sharded checkpoints with torch.distributed.checkpoint (DCP), reshardable across TP and DP sizes.

Layout, as Megatron's:

    <save>/latest_checkpointed_iteration.txt      the last complete iteration
    <save>/iter_0000100/                          DCP files + run.json (config, data position, ...)

Each rank contributes its parameter blocks as `ShardedBlock`s: a local tensor placed at an offset of
the full (unpadded) tensor. DCP stores the chunks with those coordinates, deduplicates identical
chunks held by several ranks (replicated norms, KV heads replicated under tp, dp replicas), and on
load reads whatever overlaps each rank's block under the *current* layout: that is the resharding.

A save goes to `.iter_0000100.tmp`, renamed when every rank has finished, and only then does the
`latest` file move on, so a process killed mid-save leaves the previous checkpoint in charge.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

from ..parallel.sharding import ShardSpec
from .safe_dcp import SafeFileSystemReader

LATEST = "latest_checkpointed_iteration.txt"
RUN_FILE = "run.json"


class ShardedBlock:
    """A rank's block of a logical tensor, in the protocol DCP uses for DTensor (the three dunders)."""

    def __init__(self, local: torch.Tensor, offsets: tuple[int, ...], global_shape: tuple[int, ...]):
        self.local, self.offsets, self.global_shape = local, torch.Size(offsets), torch.Size(global_shape)

    def _chunk(self) -> ChunkStorageMetadata:
        return ChunkStorageMetadata(offsets=self.offsets, sizes=self.local.shape)

    def __create_write_items__(self, fqn: str, obj) -> list[WriteItem]:
        if self.local.numel() == 0:
            return []
        data = TensorWriteData(
            chunk=self._chunk(), properties=TensorProperties.create_from_tensor(self.local), size=self.global_shape
        )
        return [WriteItem(index=MetadataIndex(fqn, self.offsets), type=WriteItemType.SHARD, tensor_data=data)]

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        return [self._chunk()] if self.local.numel() else []

    def __get_tensor_shard__(self, index) -> torch.Tensor:
        return self.local


class _BlockSavePlanner(DefaultSavePlanner):
    """DCP's default save planner, taught to fetch a ShardedBlock's data (it only looks in tensors)."""

    def lookup_object(self, index):
        block = self.state_dict[index.fqn]
        return block.local if isinstance(block, ShardedBlock) else super().lookup_object(index)


class _BlockLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, minus its state-dict pre-pass: that pass (`_init_state_dict`)
    replaces objects it does not know, ShardedBlocks included, with None (torch 2.13). Our state is
    flat and already allocated, so the pass has nothing to do anyway."""

    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def set_up_planner(self, state_dict, metadata=None, is_coordinator: bool = False) -> None:
        self.original_state_dict = self.state_dict = state_dict
        self.metadata, self.is_coordinator = metadata, is_coordinator

    def lookup_tensor(self, index):
        block = self.state_dict[index.fqn]
        return block.local if isinstance(block, ShardedBlock) else super().lookup_tensor(index)


def block_of(tensor: torch.Tensor, spec: ShardSpec | None):
    """What DCP should see for a parameter-shaped tensor: itself, or its block of the full tensor.
    Vocabulary padding rows are cut off, so checkpoints do not depend on the padding."""
    if spec is None or spec.dim is None or spec.size == 1:
        return tensor
    start, stop = spec.local_range()
    if spec.kind == "vocab":
        stop = min(stop, spec.full_shape[0])
        tensor = tensor[: max(0, stop - start)]
    offsets = [0] * tensor.ndim
    offsets[spec.dim] = start
    return ShardedBlock(tensor, tuple(offsets), spec.full_shape)


def training_state(model, optimizer=None, rank: int | None = None, trainable_only: bool = False) -> dict:
    """The flat DCP state: model blocks, this rank's optimizer state blocks, this rank's RNG.
    `trainable_only` (PEFT): only parameters that train, i.e. the adapters; the frozen base is not saved."""
    chunks = model if isinstance(model, (list, tuple)) else [model]  # pipeline chunks of this rank
    specs = {n: s for c in chunks for n, s in getattr(c, "tp_specs", {}).items()}
    state = {f"model.{n}": block_of(p.data, specs.get(n)) for c in chunks for n, p in c.named_parameters()
             if p.requires_grad or not trainable_only}
    if optimizer is not None:
        for name, entries in optimizer.named_state().items():
            for key, value in entries.items():
                state[f"optim.{name}.{key}"] = value if key == "step" else block_of(value.data, specs.get(name))
    if rank is not None:
        state[f"rng.rank{rank}"] = torch.get_rng_state()
    return state


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def iteration_dir(save: str | Path, iteration: int) -> Path:
    return Path(save) / f"iter_{iteration:07d}"


def latest_iteration(save: str | Path) -> int | None:
    path = Path(save) / LATEST
    if not path.is_file():
        return None
    text = path.read_text().strip()
    if not text.isdigit() or not iteration_dir(save, int(text)).is_dir():
        raise ValueError(f"{path}: expected the number of a complete iteration folder, found {text!r}")
    return int(text)


def save_checkpoint(save: str | Path, iteration: int, model, optimizer, run_info: dict, keep_last: int | None = None,
                    trainable_only: bool = False):
    """Collective: every rank writes its blocks; rank 0 publishes the folder and moves `latest`."""
    save = Path(save)
    final = iteration_dir(save, iteration)
    tmp = save / f".{final.name}.tmp"
    if _rank() == 0:
        save.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    dcp.save(training_state(model, optimizer, rank=_rank(), trainable_only=trainable_only), checkpoint_id=str(tmp), planner=_BlockSavePlanner())
    _fault_point("kill_during_save", iteration)
    _barrier()
    if _rank() == 0:
        _write_atomic(tmp / RUN_FILE, json.dumps({"iteration": iteration, **run_info}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _write_atomic(save / LATEST, str(iteration))
        if keep_last:
            done = sorted(p for p in save.glob("iter_*") if p.is_dir())
            for old in done[:-keep_last]:
                shutil.rmtree(old)
    _barrier()
    return final


def _fault_point(point: str, iteration: int) -> None:
    """Fault injection for tests: MINIBRIDGE_FAULT=kill_during_save:20 SIGKILLs the process after its
    shards are written and before the checkpoint is published."""
    if os.environ.get("MINIBRIDGE_FAULT") == f"{point}:{iteration}":
        os.kill(os.getpid(), 9)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_run_info(folder: str | Path) -> dict:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {folder} is not a complete minibridge checkpoint")
    return json.loads(path.read_text())


def load_checkpoint(folder: str | Path, model, optimizer=None, restore_rng: bool = True,
                    trainable_only: bool = False) -> dict:
    """Fill `model` (and `optimizer`) in place from `folder` under the current layout; returns run.json."""
    folder = Path(folder)
    info = read_run_info(folder)
    reader = SafeFileSystemReader(str(folder))
    stored = reader.read_metadata().state_dict_metadata
    state = training_state(model, optimizer, rank=_rank() if restore_rng else None, trainable_only=trainable_only)
    missing = [k for k in state if k not in stored and not k.startswith("rng.")]
    if missing:
        raise KeyError(f"{folder}: checkpoint lacks {missing[:5]}{' ...' if len(missing) > 5 else ''} (another model?)")
    state = {k: v for k, v in state.items() if k in stored}
    # in place: parameters, masters, Adam moments and steps
    dcp.load(state, storage_reader=SafeFileSystemReader(str(folder)), planner=_BlockLoadPlanner())
    rng = state.get(f"rng.rank{_rank()}")
    if rng is not None:
        torch.set_rng_state(rng)
    return info


def clean_stale(save: str | Path) -> None:
    """Remove temporary folders of saves that never completed (a run killed mid-save). Rank 0 only."""
    for tmp in Path(save).glob(".iter_*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
