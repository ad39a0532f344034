"""HF folder -> minibridge checkpoint (`convert import`, `AutoBridge.import_ckpt`), streamed.

The checkpoint is the one training writes and resumes from (`--pretrained-checkpoint DIR`), a DCP
folder resharded on load, so it serves any later layout. No model is ever allocated: each rank describes
its parameter blocks under the requested layout (tp, pp) with their shapes only, and DCP asks for each
block's data when it writes it, at which point the block is read from the safetensors (only this rank's
slice of it). Memory is bounded by the largest tensor block, not the model.

    <megatron_path>/latest_checkpointed_iteration.txt      "0"
    <megatron_path>/iter_0000000/                          DCP files + run.json

The folder is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from tqdm.auto import tqdm

from ..bridge import HFBridge
from ..bridge.sharded_io import read_block
from ..loading.hf import check_hf_folder, warn_if_not_finite
from ..checkpoint import LATEST, RUN_FILE, BlockSavePlanner, LazyBlock, iteration_dir
from ..checkpoint.folder import RUN_CONFIG_FILE, run_config_yaml
from ..checkpoint.integrity import write_checksums
from ..errors import CheckpointMismatchError, MissingTensorError
from ..files import busy_message, clean_stale_temporaries, publish_folder, temporary_sibling, write_atomic
from ..parallel.dims import LayoutError, ParallelConfig, barrier, from_rank0, global_rank
from ..parallel.parallelize import build_model
from .checkpoints import architecture_digest

ITERATION = 0


def parallel_layout(config, tp: int = 1, pp: int = 1, vp: int = 1, command: str = "import"):
    """The ParallelDims to convert under: None in a plain single process, else torchrun's world."""
    layout = ParallelConfig(tp=tp, pp=pp, vp=vp).validate(config)
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if tp * pp > 1:
            raise LayoutError(
                f"--tp {tp} --pp {pp} needs {tp * pp} processes: torchrun --nproc-per-node={tp * pp} -m "
                f"minibridge.convert {command} ... (checkpoints are resharded on load, so a single-process "
                f"import with --tp 1 serves every later layout too)")
        return None
    from ..parallel import initialize

    return initialize(layout)


def lazy_state(bridge: HFBridge, dims, dtype: torch.dtype | None, bar) -> dict:
    """DCP state of this rank's parameter blocks, each read from the HF folder when DCP writes it."""
    tensors = bridge.folder.tensors
    state = {}
    chunks = build_model(bridge.config, dims, meta=True)  # shapes and shard specs only
    check_hf_folder(chunks, bridge.folder, bridge.mapping)  # every tensor of the folder: none dropped silently
    specs = chunks.specs
    for name, param in chunks.named_parameters():
        hf_name = bridge.mapping.to_hf(name)
        info = tensors.get(hf_name)
        spec = specs.get(name)
        full = tuple(spec.full_shape) if spec is not None else tuple(param.shape)
        if info is None:
            raise MissingTensorError(f"{bridge.source}: tensor {hf_name!r} (parameter {name}) is missing from the "
                                     "checkpoint files")
        if tuple(info.shape) != full:
            raise CheckpointMismatchError(f"{info.path}: tensor {hf_name!r} has shape {list(info.shape)}, but "
                                          f"config.json implies {list(full)}")
        state[f"model.{name}"] = _block(info, spec, tuple(param.shape), dtype or info.dtype, full, bar)
    return state


def _block(info, spec, local_shape, dtype, full, bar):
    offsets, shape = [0] * len(full), list(local_shape)
    rows = None
    if spec is not None and spec.dim is not None and spec.size > 1:
        start, stop = spec.local_range()
        offsets[spec.dim] = start
        if spec.kind == "vocab":  # padding rows past the real vocabulary are not stored (as training does)
            rows = max(0, min(stop, full[0]) - start)
            shape[0] = rows

    def read():
        out = torch.empty(local_shape, dtype=dtype)
        read_block(info, out, spec)
        warn_if_not_finite(info, out)
        bar.update(out.nbytes)
        return out if rows is None else out[:rows]

    return LazyBlock(read, tuple(shape), dtype, tuple(offsets), full)


def _agree(ok: bool, message: str) -> None:
    """Raise on every rank when rank 0 found a problem (so no rank waits in a collective)."""
    flag = from_rank0(None if ok else message)
    if flag is not None:
        raise FileExistsError(flag)


def import_checkpoint(hf_model: str | os.PathLike, megatron_path: str | os.PathLike, tp: int = 1, pp: int = 1,
                      vp: int = 1, dtype: torch.dtype | None = None, overwrite: bool = False,
                      progress: bool = True) -> Path:
    """Write the weights of the HF folder `hf_model` as a minibridge checkpoint at `megatron_path`;
    returns the iteration folder. Tensors keep the checkpoint's dtypes unless `dtype` is given.
    With tp/pp > 1 it runs under torchrun, each rank reading and writing its own blocks."""
    bridge = HFBridge.from_hf_pretrained(hf_model)
    target = Path(megatron_path)
    dims = parallel_layout(bridge.config, tp, pp, vp)
    busy = busy_message(target) if global_rank() == 0 and not overwrite else None
    _agree(busy is None, busy or "")
    rank0 = global_rank() == 0
    bar = tqdm(unit="B", unit_scale=True, desc="importing", disable=not (progress and rank0))
    state = lazy_state(bridge, dims, dtype, bar)
    bar.total = sum(b.local.numel() * b.local.itemsize for b in state.values())
    tmp = Path(from_rank0(str(temporary_sibling(target)) if rank0 else None))
    final_iter = iteration_dir(tmp, ITERATION)
    if rank0:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(target)
        final_iter.mkdir(parents=True)
    barrier()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is .*")
            metadata = dcp.save(state, checkpoint_id=str(final_iter), planner=BlockSavePlanner(),
                                no_dist=not dist.is_initialized())
        write_checksums(final_iter, metadata)
        barrier()
        if rank0:
            bar.close()
            info = {"iteration": ITERATION, "config": {"model": {"config": _config_dict(bridge.config)}},
                    "converted_from": {"hf_model": str(Path(hf_model).resolve()),
                                       "architecture": bridge.architecture.name},
                    "architecture_digest": architecture_digest(bridge.config),
                    "world_size": dist.get_world_size() if dist.is_initialized() else 1, "tp": tp, "pp": pp,
                    "dtype": str(dtype).removeprefix("torch.") if dtype else "as stored"}
            write_atomic(final_iter / RUN_FILE, _json(info))
            write_atomic(final_iter / RUN_CONFIG_FILE, run_config_yaml(info["config"]))
            write_atomic(tmp / LATEST, str(ITERATION))
            publish_folder(tmp, target)
    except BaseException:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    return iteration_dir(target, ITERATION)


def _config_dict(config) -> dict:
    from dataclasses import asdict

    return asdict(config)


def _json(data) -> str:
    import json

    return json.dumps(data, indent=2)
