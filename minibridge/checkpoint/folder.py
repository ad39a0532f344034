"""Sharded checkpoints with torch.distributed.checkpoint (DCP), reshardable across TP and DP sizes.

Layout, as Megatron's:

    <save>/latest_checkpointed_iteration.txt      the last complete iteration
    <save>/iter_0000100/                          DCP files + run.json (config, data position, ...)

Each rank writes its blocks of the full tensors (blocks.py), and a load reads whatever overlaps its
blocks under the current layout: checkpoints reshard across TP, PP and DP sizes.

A save goes to `.iter_0000100.tmp-HOST-PID`, renamed when every rank has finished, and only then does
the `latest` file move on, so a process killed mid-save leaves the previous checkpoint in charge.
A load checks before reading a byte that every stored tensor has the shape this run expects and that
every shard file holds the bytes the metadata points at, so a checkpoint of another model or a
truncated file is named instead of failing deep inside DCP.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from ..errors import (CheckpointError, CheckpointMismatchError, CorruptCheckpointError, MinibridgeError,
                      MissingTensorError)
from ..files import publish_folder, temporary_sibling, write_atomic
from ..parallel.dims import barrier, from_rank0, global_rank
from .blocks import (PARAM_GROUPS, BlockLoadPlanner, BlockSavePlanner, ShardedBlock, check_param_groups, legacy_key,
                     other_master_forms, stored_param_groups, torch_layout, training_state)
from .integrity import verify_checkpoint, write_checksums
from .names import LATEST, RUN_CONFIG_FILE, RUN_FILE, iteration_dir, iteration_folder, latest_iteration  # noqa: F401
from .reader import SafeFileSystemReader



def run_config_yaml(config: dict) -> str:
    """The configuration (ConfigContainer.to_dict()) as YAML, sections in their order."""
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False, default_flow_style=False)


def _cause(err: BaseException) -> BaseException:
    """The first rank's exception inside DCP's CheckpointException (its own text is a traceback dump)."""
    failures = getattr(err, "failures", None)
    if failures:
        first = next(iter(failures.values()))
        return first[0] if isinstance(first, tuple) else first
    return err


def save_checkpoint(save: str | Path, iteration: int, model, optimizer, run_info: dict, keep_last: int | None = None,
                    trainable_only: bool = False):
    """Collective: every rank writes its blocks; rank 0 publishes the folder and moves `latest`.
    The caller holds the folder's RunLock, so no other run writes there."""
    save = Path(save)
    final = iteration_dir(save, iteration)
    tmp = from_rank0(temporary_sibling(final) if global_rank() == 0 else None)
    if global_rank() == 0:
        save.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    try:
        metadata = dcp.save(torch_layout(training_state(model, optimizer, rank=global_rank(),
                                                        trainable_only=trainable_only)),
                            checkpoint_id=str(tmp), planner=BlockSavePlanner())
        write_checksums(tmp, metadata)
    except (Exception, CheckpointException) as err:
        cause, full = _cause(err), disk_full(tmp)  # (before the partial folder is removed and frees space)
        if global_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(cause, OSError):
            raise type(cause)(cause.errno, f"{cause.strerror} (saving checkpoint {final.name})",
                              cause.filename or str(tmp)) from None
        if full:  # torch's zip writer reports a failed write as "unexpected pos ...", not as ENOSPC
            raise OSError(errno.ENOSPC, f"No space left on device (saving checkpoint {final.name}; torch reported: "
                                        f"{cause})", str(tmp)) from None
        raise CheckpointError(f"{final}: saving the checkpoint failed: {cause}") from None
    _fault_point("kill_during_save", iteration)
    barrier()
    if global_rank() == 0:
        write_atomic(tmp / RUN_FILE, json.dumps({"iteration": iteration, **run_info}, indent=2))
        if run_info.get("config") is not None:
            write_atomic(tmp / RUN_CONFIG_FILE, run_config_yaml(run_info["config"]))
        publish_folder(tmp, final)
        write_atomic(save / LATEST, str(iteration))
        if keep_last:
            done = sorted(p for p in save.glob("iter_*") if p.is_dir())
            for old in done[:-keep_last]:
                shutil.rmtree(old)
    barrier()
    return final


def disk_full(path: Path, reserve: int = 1 << 20) -> bool:
    """Whether the filesystem of `path` (or of its nearest existing parent) has less than `reserve` bytes free."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < reserve
    except OSError:
        return False


def _fault_point(point: str, iteration: int) -> None:
    """Fault injection for tests: MINIBRIDGE_FAULT=kill_during_save:20 SIGKILLs the process after its
    shards are written and before the checkpoint is published."""
    if os.environ.get("MINIBRIDGE_FAULT") == f"{point}:{iteration}":
        os.kill(os.getpid(), 9)


def read_run_info(folder: str | Path) -> dict:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {folder} is not a complete minibridge checkpoint")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(info, dict) or not isinstance(info.get("iteration"), int):
        raise CorruptCheckpointError(f"{path}: expected a JSON object with an integer 'iteration'")
    return info


def check_storage(folder: Path, metadata) -> None:
    """Every byte range the metadata points at lies inside its file: a truncated shard is named here,
    not left to fail deep inside DCP with a bare EOFError."""
    sizes: dict[str, int] = {}
    for index, where in metadata.storage_data.items():
        path = folder / where.relative_path
        if where.relative_path not in sizes:
            sizes[where.relative_path] = path.stat().st_size if path.is_file() else -1
        size = sizes[where.relative_path]
        if size < 0:
            raise CorruptCheckpointError(f"{path}: missing; the checkpoint metadata stores {index.fqn!r} there")
        if where.offset + where.length > size:
            raise CorruptCheckpointError(
                f"{path}: truncated: {index.fqn!r} needs bytes {where.offset}..{where.offset + where.length} but the "
                f"file has {size}")


def _global_shape(value) -> tuple[int, ...]:
    return tuple(value.global_shape if isinstance(value, ShardedBlock) else value.shape)


def check_shapes(folder: Path, state: dict, stored: dict) -> None:
    """Each tensor the run expects has the stored full shape (else: a checkpoint of another model)."""
    for key, value in state.items():
        if key.startswith("rng."):
            continue
        have, want = tuple(stored[key].size), _global_shape(value)
        if have != want:
            raise CheckpointMismatchError(
                f"{folder}: {key} has shape {list(have)} in the checkpoint but {list(want)} in this model; the "
                f"checkpoint holds another architecture (compare its run.json model config with this run's)")


def load_checkpoint(folder: str | Path, model, optimizer=None, restore_rng: bool = True,
                    trainable_only: bool = False) -> dict:
    """Fill `model` (and `optimizer`) in place from `folder` under the current layout; returns run.json."""
    folder = Path(folder)
    info = read_run_info(folder)
    reader = SafeFileSystemReader(str(folder))
    metadata = reader.read_metadata()
    stored = metadata.state_dict_metadata
    check_storage(folder, metadata)
    state = training_state(model, optimizer, rank=global_rank() if restore_rng else None, trainable_only=trainable_only)
    groups = state.pop(PARAM_GROUPS, None)
    state = {legacy_key(k) if k not in stored and legacy_key(k) in stored else k: v for k, v in state.items()}
    takes = other_master_forms(state, stored, model, optimizer)
    missing = [k for k in state if k not in stored and not k.startswith("rng.")]
    if missing:
        raise MissingTensorError(f"{folder}: checkpoint lacks {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                                 f"(a checkpoint of another model, or of adapters only?)")
    state = {k: v for k, v in state.items() if k in stored}
    check_shapes(folder, state, stored)
    loaded_groups = stored_param_groups(stored) if groups is not None else {}  # none in older checkpoints
    state.update(loaded_groups)
    try:  # in place: parameters, masters, Adam moments and steps
        dcp.load(state, storage_reader=SafeFileSystemReader(str(folder)), planner=BlockLoadPlanner())
    except (Exception, CheckpointException) as err:
        cause = _cause(err)
        if isinstance(cause, MinibridgeError):
            raise cause from None
        raise CorruptCheckpointError(f"{folder}: reading the checkpoint failed ({type(cause).__name__}: {cause})") \
            from None
    for take in takes:  # after the parameters are in
        take()
    if loaded_groups:
        check_param_groups(folder, {k: state[k] for k in loaded_groups}, groups)
    rng = state.get(f"rng.rank{global_rank()}")
    if rng is not None:
        torch.set_rng_state(rng)
    return info


def hf_hint(folder: Path) -> str:
    return " (it looks like a Hugging Face folder: pass it as --hf-model)" if (folder / "config.json").is_file() else ""


def resolve_checkpoint(path: str | Path) -> Path:
    """The iteration folder to read: the latest of a save folder, or `path` itself when it is one."""
    folder = iteration_folder(path)
    if not (folder / RUN_FILE).is_file():
        raise FileNotFoundError(f"{folder}: not a minibridge checkpoint: neither {LATEST} nor {RUN_FILE} "
                                f"is there{hf_hint(folder)}")
    if not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"{folder}: incomplete checkpoint, the DCP .metadata file is missing")
    return folder


def last_intact_checkpoint(save: str | Path) -> Path | None:
    """The newest iteration folder of `save` whose every stored item matches checksums.json (integrity.py)."""
    for folder in sorted(Path(save).glob("iter_[0-9]*"), reverse=True):
        try:
            verify_checkpoint(folder, SafeFileSystemReader(str(folder)).read_metadata())
        except (CheckpointError, OSError):
            continue
        return folder
    return None


def read_checkpoint(path: str | Path) -> tuple[Path, dict, dict]:
    """(iteration folder, run.json, {DCP key: storage metadata}) of a checkpoint."""
    folder = resolve_checkpoint(path)
    info = read_run_info(folder)
    stored = SafeFileSystemReader(str(folder)).read_metadata().state_dict_metadata
    return folder, info, stored


def clean_stale(save: str | Path) -> list[Path]:
    """Remove temporary folders of saves that never completed (a run killed mid-save). Only for the
    folder whose RunLock this process holds: every temporary save in it belongs to a dead run."""
    stale = [p for p in Path(save).glob(".iter_*.tmp*") if p.is_dir()]
    for tmp in stale:
        shutil.rmtree(tmp, ignore_errors=True)
    return stale
