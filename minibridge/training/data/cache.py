"""The on-disk cache of tokenized datasets: one .npz per (dataset fingerprint, preset or columns, tokenizer, chat
template, seq_length, packing, minibridge version), so a second run or a resume does not tokenize again.

Under torch.distributed, rank 0 reads or builds the file and the other ranks wait, then read it (the cache
folder must be one every node sees: the trainer puts it under checkpoint.save unless dataset.cache_dir says
otherwise). Files are written under a temporary name and renamed, so a killed run leaves no half file.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch.distributed as dist

from ...files import write_atomic
from ...parallel.dims import from_rank0
from .errors import DataError


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("minibridge")
    except PackageNotFoundError:
        return "unknown"


def cache_key(identity: dict) -> str:
    """16 hex digits of the identity (plus the minibridge version)."""
    text = json.dumps({**identity, "minibridge": _version()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tokenizer_identity(tokenizer) -> str:
    """A digest of what decides the tokens: the vocabulary and rules (tokenizer.json's content when the tokenizer
    is a fast one), the special tokens and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items())),
             repr(tokenizer.all_special_tokens), str(getattr(tokenizer, "chat_template", None)),
             type(tokenizer).__name__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None  # unreadable: build it again


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def load_or_build(path: Path | None, name: str, build: Callable[[], dict]) -> dict[str, np.ndarray]:
    if path is not None and path.is_file():
        start = time.perf_counter()
        arrays = _read(path)
        if arrays is not None:
            print(f"{name}: tokenized rows read from the cache {path} in {time.perf_counter() - start:.2f} s",
                  flush=True)
            return arrays
    arrays = build()
    if path is not None:
        _write(path, arrays)
        print(f"{name}: tokenized rows cached in {path}", flush=True)
    return arrays


def rank_zero_first(fn: Callable[[], object], name: str):
    """fn() on rank 0 only under torch.distributed (its result there, None elsewhere), every rank raising when it
    fails; without torch.distributed (or on one rank) just fn()."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn()
    result, failure = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as err:  # every rank must hear of it, or they wait forever
            from_rank0(str(err))
            raise
    failure = from_rank0(failure)
    if failure is not None:
        raise DataError(f"{name}: {failure}" if not failure.startswith(name) else failure)
    return result


def shared_build(cache_dir: str | Path | None, stem: str, name: str,
                 build: Callable[[], dict]) -> dict[str, np.ndarray]:
    """The arrays of `cache_dir/stem.npz`, built by `build` when missing; under torch.distributed rank 0 builds
    and the others wait, then read the file (without a cache folder every rank builds its own)."""
    path = Path(cache_dir) / f"{stem}.npz" if cache_dir else None
    if path is None:
        return build()
    arrays = rank_zero_first(lambda: load_or_build(path, name, build), name)
    if arrays is None:
        arrays = _read(path)
        if arrays is None:
            raise DataError(f"{path}: rank 0 wrote the tokenized {name} there, but this rank cannot read it; "
                            f"dataset.cache_dir must be a folder every node sees")
    return arrays
