"""Megatron-LM's indexed dataset format ("MMIDIDX"), read and written byte-compatibly.

A dataset is two files sharing a prefix (reference: megatron/core/datasets/indexed_dataset.py,
classes _IndexWriter, _IndexReader and IndexedDatasetBuilder):

    PREFIX.bin  token ids of every sequence back to back, one numpy dtype, no header
    PREFIX.idx  little-endian:
        9 bytes     magic b"MMIDIDX\\x00\\x00"
        <Q          version, always 1
        <B          dtype code of .bin: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
                    7 float32, 8 uint16
        <Q          S, the number of sequences
        <Q          D, the length of the document index (documents + 1: it starts with 0)
        S x int32   tokens per sequence
        S x int64   byte offset of each sequence in .bin
        D x int64   document index: document j is sequences [doc[j], doc[j+1])
        (S x int8   sequence modes, only in Megatron's multimodal files: accepted and ignored)

A sequence is a sentence when Megatron's preprocessing split sentences, else a whole document; we
always treat a document (all its sequences) as the unit. Megatron's writer lays sequences out
contiguously (offset[i] = itemsize * tokens before i), which we check so that a document is one
slice of the memory-mapped .bin.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .errors import CorruptIndexError, DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8  # 34
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
               7: np.float32, 8: np.uint16}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


def optimal_dtype(vocab_size: int):
    """Megatron's DType.optimal_dtype: uint16 below 65500 ids (half the disk), else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def index_path(prefix: str | Path) -> str:
    return f"{prefix}.idx"


def bin_path(prefix: str | Path) -> str:
    return f"{prefix}.bin"


class IndexedDataset:
    """Reads PREFIX.idx fully (it is small) and memory-maps PREFIX.bin; documents come out as numpy
    views of the mapping, so opening a multi-GB corpus costs only its index."""

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        idx, binp = index_path(prefix), bin_path(prefix)
        for p in (idx, binp):
            if not os.path.isfile(p):
                raise FileNotFoundError(
                    f"indexed dataset {self.prefix!r}: {p} does not exist (data_paths take the prefix "
                    "shared by the .bin and .idx files, without the extension)"
                )
        self._read_index(idx)
        self._map_bin(binp)

    def _read_index(self, idx: str) -> None:
        size = os.path.getsize(idx)
        with open(idx, "rb") as f:
            head = f.read(HEADER_BYTES)
            if len(head) < HEADER_BYTES or head[: len(MAGIC)] != MAGIC:
                raise CorruptIndexError(f"{idx}: bad magic {head[:len(MAGIC)]!r}, expected {MAGIC!r} "
                                        "(not a Megatron MMIDIDX index)")
            version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[len(MAGIC):])
            if version != VERSION:
                raise CorruptIndexError(f"{idx}: unsupported version {version}, expected {VERSION}")
            if code not in DTYPE_CODES:
                raise CorruptIndexError(f"{idx}: unknown dtype code {code}, expected one of "
                                        f"{sorted(DTYPE_CODES)}")
            body = 12 * n_seq + 8 * n_doc
            # The multimodal variant appends one int8 mode per sequence; anything else is truncation
            # or garbage, caught here before any array is read.
            if size not in (HEADER_BYTES + body, HEADER_BYTES + body + n_seq):
                raise CorruptIndexError(
                    f"{idx}: header says {n_seq} sequences and {n_doc} document index entries, which "
                    f"need {HEADER_BYTES + body} bytes, but the file has {size}"
                )
            raw = f.read(body)
        self.dtype = np.dtype(DTYPE_CODES[code])
        self.sequence_lengths = np.frombuffer(raw, np.int32, n_seq, 0)
        self.sequence_pointers = np.frombuffer(raw, np.int64, n_seq, 4 * n_seq)
        self.document_indices = np.frombuffer(raw, np.int64, n_doc, 12 * n_seq)
        self._validate(idx)

    def _validate(self, idx: str) -> None:
        lengths, doc = self.sequence_lengths, self.document_indices
        if len(doc) == 0 or doc[0] != 0 or doc[-1] != len(lengths):
            first, last = (doc[0], doc[-1]) if len(doc) else (None, None)
            raise CorruptIndexError(f"{idx}: document index must run from 0 to the sequence count "
                                    f"{len(lengths)}, got first={first} last={last}")
        if np.any(np.diff(doc) < 0):
            bad = int(np.argmax(np.diff(doc) < 0))
            raise CorruptIndexError(f"{idx}: document index decreases at entry {bad + 1}")
        if np.any(lengths < 0):
            raise CorruptIndexError(f"{idx}: negative sequence length at sequence "
                                    f"{int(np.argmax(lengths < 0))}")
        # Token offset of each sequence start; the byte pointers must agree (contiguous layout).
        self._seq_start = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        expected = self._seq_start[:-1] * self.dtype.itemsize
        if not np.array_equal(self.sequence_pointers, expected):
            bad = int(np.argmax(self.sequence_pointers != expected))
            raise CorruptIndexError(f"{idx}: sequence {bad} starts at byte "
                                    f"{int(self.sequence_pointers[bad])}, expected {int(expected[bad])} "
                                    "(sequences must be contiguous in .bin)")
        self.num_tokens = int(self._seq_start[-1])
        self._doc_start = self._seq_start[doc]  # token offset of each document boundary

    def _map_bin(self, binp: str) -> None:
        need = self.num_tokens * self.dtype.itemsize
        have = os.path.getsize(binp)
        if have < need:
            raise CorruptIndexError(f"{binp}: {have} bytes, but {index_path(self.prefix)} indexes "
                                    f"{self.num_tokens} tokens of {self.dtype.name} = {need} bytes")
        # np.memmap cannot map an empty file; an empty corpus is caught by the dataset builder.
        self._bin = (np.memmap(binp, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
                     if self.num_tokens else np.empty(0, self.dtype))

    # ---- document access (the "source" interface the sample builders use) ----
    def __len__(self) -> int:
        return len(self.document_indices) - 1

    def document_lengths(self) -> np.ndarray:
        return np.diff(self._doc_start)

    def tokens(self, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens [start, stop) of document `doc` as int64."""
        begin, end = int(self._doc_start[doc]), int(self._doc_start[doc + 1])
        stop = end - begin if stop is None else stop
        return np.asarray(self._bin[begin + start : begin + stop], dtype=np.int64)

    def sequence_tokens(self, seq: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens [start, stop) of sequence `seq` as int64: Megatron's GPTDataset unit (a sentence when
        preprocessing split sentences, else a whole document)."""
        begin, end = int(self._seq_start[seq]), int(self._seq_start[seq + 1])
        stop = end - begin if stop is None else stop
        return np.asarray(self._bin[begin + start : begin + stop], dtype=np.int64)

    def __getitem__(self, doc: int) -> np.ndarray:
        if not 0 <= doc < len(self):
            raise IndexError(f"{self.prefix}: document {doc} out of range (0..{len(self) - 1})")
        return self.tokens(doc)


class IndexedDatasetWriter:
    """Writes PREFIX.bin/.idx like Megatron's IndexedDatasetBuilder + _IndexWriter, atomically: data
    goes to temporary names that are renamed only when `finalize` has written the index, so a crash
    never leaves a half-written pair that a training run could pick up.

        with IndexedDatasetWriter(prefix, np.uint16) as w:
            w.add_document(ids)               # one sequence per document
            w.add_document(ids, [3, 5])       # or several (sentences) summing to len(ids)
    """

    def __init__(self, prefix: str | Path, dtype=np.int32):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise DataError(f"{self.prefix}: dtype {self.dtype} has no MMIDIDX code "
                            f"(use one of {sorted(d.name for d in CODE_OF_DTYPE)})")
        self._info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        tag = f".tmp-{os.getpid()}"
        self._tmp_bin, self._tmp_idx = bin_path(prefix) + tag, index_path(prefix) + tag
        Path(self._tmp_bin).parent.mkdir(parents=True, exist_ok=True)
        self._data = open(self._tmp_bin, "wb")
        self.sequence_lengths: list[int] = []
        self.document_indices: list[int] = [0]

    def add_document(self, tokens, sequence_lengths: list[int] | None = None) -> None:
        arr = np.asarray(tokens)
        if self._info is not None and arr.size and (arr.min() < self._info.min or arr.max() > self._info.max):
            raise DataError(f"{self.prefix}: token id range [{arr.min()}, {arr.max()}] does not fit "
                            f"{self.dtype.name}; write with a wider dtype")
        lengths = [arr.size] if sequence_lengths is None else [int(n) for n in sequence_lengths]
        if sum(lengths) != arr.size:
            raise DataError(f"{self.prefix}: sequence lengths {lengths} do not sum to the document's "
                            f"{arr.size} tokens")
        self._data.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self.sequence_lengths.extend(lengths)
        self.document_indices.append(len(self.sequence_lengths))

    def finalize(self) -> None:
        self._data.close()
        lengths = np.asarray(self.sequence_lengths, dtype=np.int32)
        pointers = (np.cumsum(lengths, dtype=np.int64) - lengths) * self.dtype.itemsize  # exclusive prefix sum
        with open(self._tmp_idx, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", VERSION))
            f.write(struct.pack("<B", CODE_OF_DTYPE[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(self.document_indices)))
            f.write(lengths.tobytes(order="C"))
            f.write(pointers.astype(np.int64).tobytes(order="C"))
            f.write(np.asarray(self.document_indices, dtype=np.int64).tobytes(order="C"))
        os.replace(self._tmp_bin, bin_path(self.prefix))
        os.replace(self._tmp_idx, index_path(self.prefix))

    def abort(self) -> None:
        self._data.close()
        for p in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(p):
                os.remove(p)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
