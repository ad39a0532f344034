"""Write an HF model folder: sharded safetensors (+ index), config.json and the source's side files.

Everything is written into a temporary sibling folder that is renamed onto the final name only when
complete, so an interrupted export never leaves a partial folder under the name a user asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from .hf_folder import INDEX_NAME, SINGLE_NAME
from .safetensors_io import numel, plan_shards, write_safetensors

Entry = tuple[str, torch.dtype, tuple[int, ...]]


@contextlib.contextmanager
def atomic_folder(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `final` when the block completes, and vanishes if it fails.

    A non-empty `final` is refused unless `overwrite`; then it is replaced only after the new folder
    is complete.
    """
    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())) and not overwrite:
        raise FileExistsError(f"{final} exists and is not empty; pass overwrite=True to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_folder(tmp, final)


def write_weights(
    folder: Path, entries: list[Entry], tensor_of: Callable[[str], torch.Tensor], max_shard_bytes: int,
    progress: bool = True,
) -> None:
    """Shard `entries` and write them, fetching each tensor from `tensor_of(name)` just in time."""
    shards = plan_shards(entries, max_shard_bytes)
    total = sum(t.itemsize * numel(s) for _, t, s in entries)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="exporting", disable=not progress)

    def stream(shard):
        for name, dtype, shape in shard:
            tensor = tensor_of(name)
            yield tensor
            bar.update(dtype.itemsize * numel(shape))

    weight_map = {}
    for k, shard in enumerate(shards, 1):
        file = SINGLE_NAME if len(shards) == 1 else f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / file, shard, stream(shard))
        weight_map.update({name: file for name, _, _ in shard})
    bar.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def write_config(folder: Path, config: dict) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def copy_side_files(folder: Path, files: list[Path]) -> None:
    for path in files:
        shutil.copy2(path, folder / path.name)



def publish_folder(tmp: Path, final: Path) -> None:
    """Rename the complete folder `tmp` onto `final`, moving an old `final` aside only at the end."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
