"""Checksums of a checkpoint's stored items, so that flipped bytes are named instead of trained on.

At save time every rank computes zlib.crc32 over the bytes of each item it wrote (DCP's storage items:
one tensor block or pickled entry, at an offset of a `__<rank>_<n>.distcp` file), reading them back
from the page cache right after DCP wrote them; rank 0 gathers them into `checksums.json` beside
`.metadata`, before the folder is published. crc32 runs at ~1.7 GB/s here (zlib; benchmarks/bench_load.py
--checksums measures what it adds to a save and a load).

What is verified when: each rank verifies what it reads, whole. DCP reads a stored item whole even when a
resharded load needs only part of it (it slices after torch.load), so SafeFileSystemReader checks every
item it touches before unpickling it, and a mismatch names the tensor and the file. An item no rank reads
is not checked by a load (nor used); `verify_checkpoint` reads every item once, which the NaN stop uses to
name the last checkpoint whose bytes are intact. A checkpoint without checksums.json (written before them,
or by another tool) loads unverified.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from ..errors import CorruptCheckpointError
from ..files import write_atomic
from ..parallel.dims import gathered, global_rank

CHECKSUMS_FILE = "checksums.json"
ALGORITHM = "zlib.crc32"


def crc32_of_range(path: Path, offset: int, length: int, chunk: int = 64 << 20) -> int:
    crc = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            data = f.read(min(chunk, length))
            if not data:
                raise CorruptCheckpointError(f"{path}: ends before byte {offset + length} of a stored item")
            crc = zlib.crc32(data, crc)
            length -= len(data)
    return crc


def write_checksums(folder: Path, metadata) -> None:
    """Collective, after `dcp.save` returned `metadata` to every rank: each rank checksums the items of the
    files it wrote, rank 0 writes them all to `folder/checksums.json`."""
    mine = {}
    for info in (metadata.storage_data or {}).values():
        if info.relative_path.startswith(f"__{global_rank()}_"):
            key = f"{info.relative_path}@{info.offset}"
            mine[key] = crc32_of_range(folder / info.relative_path, info.offset, info.length)
    merged = {}
    for part in gathered(mine):
        merged.update(part)
    if global_rank() == 0:
        write_atomic(folder / CHECKSUMS_FILE, json.dumps({"algorithm": ALGORITHM, "items": merged}, sort_keys=True))


def read_checksums(folder: Path) -> dict[str, int] | None:
    """{"<file>@<offset>": crc32} of `folder`'s checksums.json (None when there is none)."""
    path = folder / CHECKSUMS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        items = data["items"]
        if data.get("algorithm") != ALGORITHM or not all(isinstance(v, int) for v in items.values()):
            raise ValueError(f"expected {ALGORITHM} integers")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorruptCheckpointError(f"{path}: not a checksum file of minibridge ({err})") from None
    return items


def check_item(folder: Path, relative_path: str, offset: int, crc: int, expected: dict[str, int] | None,
               name: str) -> None:
    """Raise when `crc`, the crc32 of the item at `relative_path@offset`, differs from its stored checksum."""
    if expected is None:
        return
    key = f"{relative_path}@{offset}"
    if key not in expected:
        raise CorruptCheckpointError(f"{folder / CHECKSUMS_FILE}: no checksum for {name!r} ({key}); the checkpoint's "
                                     f"files and its checksums do not belong together")
    if crc != expected[key]:
        raise CorruptCheckpointError(f"{folder / relative_path}: the bytes of {name!r} (at offset {offset}) do not "
                                     f"match their checksum: the checkpoint is corrupt; resume from an earlier one "
                                     f"(checkpoint.load=<its iter_ folder>)")


def verify_checkpoint(folder: Path, metadata) -> None:
    """Every stored item of `folder` against checksums.json (all of them, whichever rank would read them)."""
    expected = read_checksums(folder)
    if expected is None:
        return
    for index, info in (metadata.storage_data or {}).items():
        crc = crc32_of_range(folder / info.relative_path, info.offset, info.length)
        check_item(folder, info.relative_path, info.offset, crc, expected, index.fqn)
