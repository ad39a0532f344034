"""A streaming safetensors reader and writer.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length N, N bytes
of JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the raw
little-endian tensor bytes, offsets relative to the end of the header.

We parse it ourselves instead of memory-mapping whole files: a tensor is read with one `readinto`
straight into the destination parameter when the dtypes agree (no intermediate copy, no mapped pages
counted in the process's RSS), so loading a model costs about one copy of its weights. Every header is
validated against the file size first, so a truncated or corrupt file fails with its name and the
offending key instead of a crash deep in a read. The checks mirror the safetensors library's, so a
file we read is one it reads too, with the same bytes (tests/bridge/test_fuzz_parsers.py).
"""

from __future__ import annotations

import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from ..errors import CorruptCheckpointError
from .json_checks import is_int, kind, parse_json, show

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit (MAX_HEADER_SIZE)
EXPECTED = {
    "entry": "an object with dtype, shape and data_offsets",
    "dtype": f"one of {sorted(DTYPES)}",
    "shape": "a list of non-negative integers",
    "data_offsets": "[begin, end], two integers with 0 <= begin <= end",
}



@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int
    path: Path

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _as_bytes(tensor: torch.Tensor):
    """A writable byte view of a contiguous CPU tensor's storage (numpy exposes the buffer protocol)."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """{name: TensorInfo} of a safetensors file, validated as the safetensors library does (its Rust
    `Metadata::validate`): a JSON object of entries {dtype, shape, data_offsets} and an optional
    `__metadata__` {str: str}; sorted by offsets, the tensors tile the data section exactly (each
    starts where the previous ended, spans numel * itemsize bytes, the last ends at the end of the
    file), so no tensor aliases or overlaps another and no byte is unaccounted for."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(8)
        if len(raw) < 8:
            raise CorruptCheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise CorruptCheckpointError(f"{path}: corrupt safetensors header length {header_len} (file has {size} "
                                         f"bytes; expected at most {min(MAX_HEADER_BYTES, size - 8)})")
        blob = f.read(header_len)
    source = f"{path}: corrupt safetensors header"
    header = parse_json(blob, source, strict=True)
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{source}: a JSON {kind(header)}, expected an object")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CorruptCheckpointError(f"{source}: __metadata__={show(metadata)}: expected an object of strings")
    data_start, data_len = 8 + header_len, size - 8 - header_len
    infos = [_tensor_info(path, source, name, entry, data_start, data_len)
             for name, entry in header.items() if name != "__metadata__"]
    end, previous = data_start, None  # absolute positions from here on
    for info in sorted(infos, key=lambda i: (i.begin, i.end)):
        if info.begin != end:
            what = f"overlap tensor {previous.name!r}" if info.begin < end else f"leave a gap after {end - data_start}"
            raise CorruptCheckpointError(f"{source}: tensor {info.name!r} at data offsets "
                                         f"[{info.begin - data_start}, {info.end - data_start}] would {what}; "
                                         f"expected each tensor to start where the previous one ends")
        end, previous = info.end, info
    if end != size:
        raise CorruptCheckpointError(f"{source}: the tensors cover {end - data_start} bytes of data but the file "
                                     f"holds {data_len}; expected them to cover it exactly")
    return {info.name: info for info in infos}


def _tensor_info(path: Path, source: str, name: str, entry, data_start: int, data_len: int) -> TensorInfo:
    def bad(what: str, value) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{source}: tensor {name!r}: {what}={show(value)}: expected {EXPECTED[what]}")

    if not isinstance(entry, dict):
        raise bad("entry", entry)
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise bad("entry", entry)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise bad("dtype", dtype)
    if not isinstance(shape, list) or not all(is_int(s) and 0 <= s < 2**64 for s in shape):
        raise bad("shape", shape)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) and 0 <= o < 2**64 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise bad("data_offsets", offsets)
    expected = DTYPES[dtype].itemsize
    for s in shape:
        expected *= s
        if expected >= 2**64:
            raise CorruptCheckpointError(f"{source}: tensor {name!r}: shape {shape} {dtype} overflows 64 bits")
    begin, end = offsets
    if end - begin != expected:
        raise CorruptCheckpointError(f"{path}: tensor {name!r} of shape {shape} {dtype} needs {expected} bytes "
                                     f"but its offsets [{begin}, {end}] span {end - begin}")
    if end > data_len:
        raise CorruptCheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {data_start + end} but the "
                                     f"file has {data_start + data_len} bytes")
    return TensorInfo(name, DTYPES[dtype], tuple(shape), data_start + begin, data_start + end, path)


def read_tensor(info: TensorInfo, out: torch.Tensor | None = None, rows: slice | None = None) -> torch.Tensor:
    """Read a tensor (or the dim-0 slice `rows` of it), into `out` when given (casting if needed)."""
    shape, begin = info.shape, info.begin
    if rows is not None:
        start, stop, _ = rows.indices(shape[0])
        row_bytes = numel(shape[1:]) * info.dtype.itemsize
        shape, begin = (stop - start, *shape[1:]), begin + start * row_bytes
    if out is not None and tuple(out.shape) != shape:
        raise ValueError(f"{info.path}: tensor {info.name!r} has shape {list(shape)}, expected {list(out.shape)}")
    direct = out is not None and out.dtype == info.dtype and out.device.type == "cpu" and out.is_contiguous()
    buffer = out if direct else torch.empty(shape, dtype=info.dtype)
    _pread_into(info, begin, memoryview(_as_bytes(buffer)))
    if out is None or direct:
        return buffer
    with torch.no_grad():
        out.copy_(buffer)
    return out


READ_CHUNK_BYTES = 64 * 2**20
READ_THREADS = max(1, min(4, os.cpu_count() or 1))


def _pread_into(info: TensorInfo, offset: int, view: memoryview) -> None:
    """Fill `view` from the file at `offset`. Large reads are split over a few threads (preadv releases
    the GIL): first-touching freshly allocated pages is the real cost of a load, and it parallelises."""
    fd = os.open(info.path, os.O_RDONLY)
    try:

        def read_chunk(start: int):
            part = view[start : start + READ_CHUNK_BYTES]
            got = 0
            while got < len(part):  # preadv may return short counts
                n = os.preadv(fd, [part[got:]], offset + start + got)
                if not n:
                    raise CorruptCheckpointError(f"{info.path}: truncated while reading tensor {info.name!r}")
                got += n

        starts = range(0, len(view), READ_CHUNK_BYTES)
        if len(starts) <= 1 or READ_THREADS == 1:
            for start in starts:
                read_chunk(start)
        else:
            with ThreadPoolExecutor(READ_THREADS) as pool:
                list(pool.map(read_chunk, starts))
    finally:
        os.close(fd)


def write_safetensors(
    path: str | Path,
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
    tensors: Iterator[torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write tensors one at a time; the header is built up front from (name, dtype, shape) entries.

    `tensors` yields the tensors in `entries` order. Returns the number of data bytes written.
    """
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = numel(shape) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for (name, dtype, shape), tensor in zip(entries, tensors, strict=True):
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"tensor {name!r}: expected {dtype} {list(shape)}, got {tensor.dtype} {list(tensor.shape)}")
            f.write(_as_bytes(tensor.detach().to("cpu").contiguous()).data)
        f.flush()
        os.fsync(f.fileno())
    return offset


def plan_shards(
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]], max_shard_bytes: int
) -> list[list[tuple[str, torch.dtype, tuple[int, ...]]]]:
    """Greedy split in order, as transformers does; a tensor larger than the limit gets its own shard."""
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = numel(entry[2]) * entry[1].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def parse_size(size: int | str) -> int:
    """'5GB' -> 5 * 10**9, '500MiB' -> 500 * 2**20, ints pass through (transformers' convention)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise ValueError(f"max_shard_size {size!r}: expected an int or a size such as '5GB' or '500MiB'")
