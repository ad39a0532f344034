"""safetensors headers are validated as the safetensors library validates them: a header it refuses
(aliasing or overlapping tensors, gaps, trailing bytes, bad types) is a CorruptCheckpointError here too,
and what it accepts (offsets out of name order, empty tensors) reads the same bytes."""

import json
import re
import struct

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from minibridge.bridge.safetensors_io import read_header, read_tensor, write_safetensors
from minibridge.errors import CorruptCheckpointError

DATA = bytes(range(32))
A = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}  # the first 8 bytes
B = {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}  # the other 24


def _file(tmp_path, header, data=DATA, raw: bytes | None = None):
    text = raw if raw is not None else json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _library_refuses(path):
    with pytest.raises(SafetensorError):
        load(path.read_bytes())


def _same_as_library(path):
    ours = {name: read_tensor(info) for name, info in read_header(path).items()}
    theirs = load(path.read_bytes())
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and ours[name].shape == tensor.shape
        assert ours[name].view(-1).view(torch.uint8).tolist() == tensor.reshape(-1).view(torch.uint8).tolist()


BAD_HEADERS = {  # name: (header, data, message)
    "alias": ({"a": A, "b": dict(A)}, DATA[:8], "tensor '[ab]' at data offsets \\[0, 8\\] would overlap tensor"),
    "overlap": ({"a": A, "b": {**A, "data_offsets": [4, 12]}, "c": {**A, "shape": [5], "data_offsets": [12, 32]}},
                DATA, "tensor 'b' at data offsets \\[4, 12\\] would overlap tensor 'a'"),
    "gap": ({"a": A, "b": {**B, "shape": [5], "data_offsets": [12, 32]}}, DATA, "would leave a gap after 8"),
    "trailing bytes": ({"a": A}, DATA, "the tensors cover 8 bytes of data but the file holds 32"),
    "not starting at 0": ({"b": B}, DATA, "tensor 'b' at data offsets \\[8, 32\\] would leave a gap after 0"),
    "float shape": ({"a": {**A, "shape": [2.0]}, "b": B}, DATA, "tensor 'a': shape=\\[2.0\\]: expected a list"),
    "bool shape": ({"a": {**A, "shape": [True, 2]}, "b": B}, DATA, "shape=\\[true, 2\\]"),
    "negative shape": ({"a": {**A, "shape": [-2]}, "b": B}, DATA, "shape=\\[-2\\]"),
    "shape not a list": ({"a": {**A, "shape": 2}, "b": B}, DATA, "shape=2"),
    "float offsets": ({"a": {**A, "data_offsets": [0, 8.0]}, "b": B}, DATA, "data_offsets=\\[0, 8.0\\]: expected"),
    "three offsets": ({"a": {**A, "data_offsets": [0, 8, 8]}, "b": B}, DATA, "data_offsets=\\[0, 8, 8\\]"),
    "reversed offsets": ({"a": {**A, "shape": [0], "data_offsets": [8, 0]}}, b"", "data_offsets=\\[8, 0\\]"),
    "wrong span": ({"a": {**A, "shape": [3]}, "b": B}, DATA, "tensor 'a' of shape \\[3\\] F32 needs 12 bytes"),
    "unknown dtype": ({"a": {**A, "dtype": "Q4"}, "b": B}, DATA, 'dtype="Q4": expected one of'),
    "lower-case dtype": ({"a": {**A, "dtype": "f32"}, "b": B}, DATA, 'dtype="f32"'),
    "entry not an object": ({"a": [0, 8], "b": B}, DATA, "tensor 'a': entry=\\[0, 8\\]: expected an object"),
    "entry without dtype": ({"a": {"shape": [2], "data_offsets": [0, 8]}, "b": B}, DATA, "tensor 'a': entry="),
    "metadata not str -> str": ({"__metadata__": {"format": 1}, "a": A, "b": B}, DATA, "__metadata__=.*: expected an"),
    "metadata a list": ({"__metadata__": ["pt"], "a": A, "b": B}, DATA, "__metadata__=\\[\"pt\"\\]"),
    "overflowing shape": ({"a": {**A, "shape": [2**62, 8]}, "b": B}, DATA, "overflows 64 bits"),
    "header a list": ([A], DATA[:8], "a JSON array, expected an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_headers_are_refused_like_the_library(tmp_path, case):
    header, data, message = BAD_HEADERS[case]
    path = _file(tmp_path, header, data)
    _library_refuses(path)
    with pytest.raises(CorruptCheckpointError, match=rf"^{re.escape(str(path))}: .*{message}"):
        read_header(path)


GOOD_RAW = '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": %s}'
BAD_RAW = {  # JSON the library's parser (serde_json) refuses and Python's json would take
    "duplicate name": GOOD_RAW % json.dumps(B) + "x",
    "NaN": GOOD_RAW % json.dumps({**B, "extra": float("nan")}),
    "huge float": GOOD_RAW % '{"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32], "x": 1e400}',
    "negative zero": GOOD_RAW % '{"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}'.replace("[8", "[-0, 8"),
    "lone surrogate": '{"\\ud800": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": %s}' % json.dumps(B),
    "trailing NUL": GOOD_RAW % json.dumps(B) + "\x00",
}
BAD_RAW["duplicate name"] = GOOD_RAW.replace('"b": %s', '"a": %s') % json.dumps({**A, "data_offsets": [8, 16]})


@pytest.mark.parametrize("case", sorted(BAD_RAW))
def test_json_the_library_refuses_is_refused(tmp_path, case):
    path = _file(tmp_path, None, DATA, raw=BAD_RAW[case].encode())
    if case != "duplicate name":  # the library keeps the last duplicate (and then finds a gap); we refuse both
        _library_refuses(path)
    with pytest.raises(CorruptCheckpointError, match=rf"^{re.escape(str(path))}: corrupt safetensors header: "):
        read_header(path)


def test_header_length_beyond_the_file_or_the_limit(tmp_path):
    path = _file(tmp_path, {"a": A})
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(data)) + data[8:])
    with pytest.raises(CorruptCheckpointError, match=r"corrupt safetensors header length \d+ \(file has"):
        read_header(path)
    with open(path, "wb") as f:  # a sparse file larger than the library's 100 MB header limit
        f.write(struct.pack("<Q", 100_000_001))
        f.truncate(100_000_200)
    with pytest.raises(CorruptCheckpointError, match=r"expected at most 100000000\)"):
        read_header(path)


def test_what_the_library_accepts_reads_the_same(tmp_path):
    """Offsets out of name order, empty tensors (also sharing an offset), scalars, unknown entry keys."""
    header = {"__metadata__": None, "z": B, "a": {**A, "extra": [1]}, "e1": {"dtype": "I8", "shape": [0],
              "data_offsets": [8, 8]}, "e2": {"dtype": "BF16", "shape": [3, 0], "data_offsets": [8, 8]}}
    _same_as_library(_file(tmp_path, header))
    _same_as_library(_file(tmp_path, {"s": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]}}, DATA[:8]))
    _same_as_library(_file(tmp_path, {}, b""))


def test_files_of_every_writer_pass(tmp_path):
    tensors = {"w": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int16),
               "e": torch.zeros(0, 4), "s": torch.tensor(3.0, dtype=torch.float64), "m": torch.tensor([True, False])}
    save_file(tensors, tmp_path / "lib.safetensors", metadata={"format": "pt"})
    entries = [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()]
    write_safetensors(tmp_path / "ours.safetensors", entries, iter(tensors.values()))
    for name in ("lib", "ours"):
        _same_as_library(tmp_path / f"{name}.safetensors")
