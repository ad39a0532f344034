"""Megatron's MMIDIDX .bin/.idx format: we read files laid out byte by byte as Megatron writes them,
what we write parses with that layout, and every corruption fails with the file named."""

import struct

import numpy as np
import pytest

from minibridge.training.data import CorruptIndexError, DataError, IndexedDataset, IndexedDatasetWriter

MAGIC = b"MMIDIDX\x00\x00"


def megatron_idx(dtype_code, seq_lengths, doc_index, itemsize, modes=None):
    """The .idx bytes of Megatron's _IndexWriter, written out from the documented layout."""
    pointers = np.concatenate([[0], np.cumsum(seq_lengths)[:-1]]).astype(np.int64) * itemsize
    out = MAGIC + struct.pack("<Q", 1) + struct.pack("<B", dtype_code)
    out += struct.pack("<Q", len(seq_lengths)) + struct.pack("<Q", len(doc_index))
    out += np.asarray(seq_lengths, np.int32).tobytes() + pointers.tobytes()
    out += np.asarray(doc_index, np.int64).tobytes()
    if modes is not None:
        out += np.asarray(modes, np.int8).tobytes()
    return out


def write_pair(tmp_path, idx_bytes, tokens, dtype, name="ds"):
    prefix = tmp_path / name
    (tmp_path / f"{name}.idx").write_bytes(idx_bytes)
    (tmp_path / f"{name}.bin").write_bytes(np.asarray(tokens, dtype).tobytes())
    return prefix


def test_reads_a_hand_built_megatron_pair(tmp_path):
    # doc 0 = one sequence [5, 6, 7]; doc 1 = two sentences [8] + [9, 10]; doc 2 = [65000] (uint16 range)
    idx = megatron_idx(8, [3, 1, 2, 1], [0, 1, 3, 4], itemsize=2)
    prefix = write_pair(tmp_path, idx, [5, 6, 7, 8, 9, 10, 65000], np.uint16)
    ds = IndexedDataset(prefix)
    assert len(ds) == 3 and ds.dtype == np.uint16 and ds.num_tokens == 7
    assert [ds[i].tolist() for i in range(3)] == [[5, 6, 7], [8, 9, 10], [65000]]
    assert ds.document_lengths().tolist() == [3, 3, 1]
    assert ds.tokens(1, 1, 3).tolist() == [9, 10] and ds[0].dtype == np.int64


def test_multimodal_trailing_modes_are_accepted(tmp_path):
    idx = megatron_idx(4, [2, 2], [0, 1, 2], itemsize=4, modes=[0, 1])
    ds = IndexedDataset(write_pair(tmp_path, idx, [1, 2, 3, 4], np.int32))
    assert [ds[i].tolist() for i in range(2)] == [[1, 2], [3, 4]]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8])
def test_writer_output_is_megatron_layout_byte_for_byte(tmp_path, dtype):
    docs = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    with IndexedDatasetWriter(tmp_path / "w", dtype) as w:
        w.add_document(docs[0])
        w.add_document(docs[1])
        w.add_document(docs[2], [2, 3])  # two sentences, as with --split-sentences
    code = {np.uint8: 1, np.int32: 4, np.int64: 5, np.uint16: 8}[dtype]
    itemsize = np.dtype(dtype).itemsize
    assert (tmp_path / "w.idx").read_bytes() == megatron_idx(code, [3, 1, 2, 3], [0, 1, 2, 4], itemsize)
    assert (tmp_path / "w.bin").read_bytes() == np.arange(1, 10, dtype=dtype).tobytes()
    ds = IndexedDataset(tmp_path / "w")
    assert [ds[i].tolist() for i in range(len(ds))] == docs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin", "w.idx"]  # no temp files left


def test_writer_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(tmp_path / "w", np.uint16) as w:
            w.add_document([1, 2])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_ids_outside_the_dtype(tmp_path):
    with pytest.raises(DataError, match=r"70000.*uint16"):
        with IndexedDatasetWriter(tmp_path / "w", np.uint16) as w:
            w.add_document([1, 70000])
    with pytest.raises(DataError, match=r"sequence lengths \[1, 1\] do not sum to the document's 3"):
        with IndexedDatasetWriter(tmp_path / "w", np.int32) as w:
            w.add_document([1, 2, 3], [1, 1])


@pytest.mark.parametrize("missing", ["bin", "idx"])
def test_missing_file_is_named(tmp_path, missing):
    prefix = write_pair(tmp_path, megatron_idx(4, [1], [0, 1], 4), [1], np.int32)
    (tmp_path / f"ds.{missing}").unlink()
    with pytest.raises(FileNotFoundError, match=f"ds.{missing} does not exist"):
        IndexedDataset(prefix)


GOOD = megatron_idx(4, [2, 1], [0, 1, 2], itemsize=4)


CORRUPTIONS = [
    (b"NOTANIDX" + GOOD[8:], "bad magic"),
    (MAGIC[:4], "bad magic"),
    (MAGIC + struct.pack("<Q", 2) + GOOD[17:], "unsupported version 2"),
    (GOOD[:17] + struct.pack("<B", 9) + GOOD[18:], "unknown dtype code 9"),
    (GOOD[:-8], r"header says 2 sequences and 3 document index entries, which need \d+ bytes, but the file has"),
    (GOOD + b"\x00" * 5, "but the file has"),
    (megatron_idx(4, [2, 1], [0, 2, 1, 2], 4), "document index decreases at entry 2"),
    (megatron_idx(4, [2, 1], [0, 1, 3], 4), "must run from 0 to the sequence count 2"),
    (megatron_idx(4, [2, -1], [0, 1, 2], 4), "negative sequence length"),
    (GOOD[:34] + GOOD[34:42] + struct.pack("<qq", 0, 12) + GOOD[58:], "sequence 1 starts at byte 12, expected 8"),
]


@pytest.mark.parametrize("idx_bytes, message", CORRUPTIONS, ids=[m.split()[0] + str(i) for i, (_, m) in
                                                                  enumerate(CORRUPTIONS)])
def test_corrupt_index_is_rejected_with_its_path(tmp_path, idx_bytes, message):
    prefix = write_pair(tmp_path, idx_bytes, [1, 2, 3], np.int32)
    with pytest.raises(CorruptIndexError, match=message) as err:
        IndexedDataset(prefix)
    assert "ds.idx" in str(err.value)


def test_short_bin_is_rejected(tmp_path):
    prefix = write_pair(tmp_path, GOOD, [1, 2], np.int32)
    with pytest.raises(CorruptIndexError, match=r"ds.bin: 8 bytes, but .*3 tokens of int32 = 12 bytes"):
        IndexedDataset(prefix)
