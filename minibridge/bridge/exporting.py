"""Write an HF model folder: sharded safetensors (+ index), config.json and the source's side files.

Everything is written into a temporary sibling folder (`minibridge.files.atomic_folder`) that is renamed
onto the final name only when complete, so an interrupted export never leaves a partial folder under
the name a user asked for. A write that fails (a full disk) names the file it was writing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..files import atomic_folder, naming_failures, publish_folder
from .hf_folder import INDEX_NAME, SINGLE_NAME
from .safetensors_io import numel, plan_shards, write_safetensors

Entry = tuple[str, torch.dtype, tuple[int, ...]]
__all__ = ["atomic_folder", "copy_side_files", "publish_folder", "write_config", "write_weights"]


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
        with naming_failures(folder / file):
            write_safetensors(folder / file, shard, stream(shard))
        weight_map.update({name: file for name, _, _ in shard})
    bar.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_text(folder / INDEX_NAME, json.dumps(index, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    with naming_failures(path):
        path.write_text(text)


def write_config(folder: Path, config: dict) -> None:
    write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


def copy_side_files(folder: Path, files: list[Path]) -> None:
    for path in files:
        with naming_failures(folder / path.name):
            shutil.copyfile(path, folder / path.name)  # the bytes only: never a link, nor its permissions


