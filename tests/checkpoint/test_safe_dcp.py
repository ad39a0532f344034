"""SafeFileSystemReader against crafted DCP checkpoints (issue 12, defect 2), with real payloads that try to
create a marker file: each is first shown to work on plain pickle / DCP's own reader, then refused
through the reader and the public entry points (train resume, `convert export` / `generate`)."""

import os
import pickle
import shlex
import time

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, MetadataIndex
from torch.serialization import _get_layout

from minibridge.loading.fresh import initialize_fresh
from minibridge.models import ModelConfig
from minibridge.parallel.parallelize import build_model
from minibridge.errors import CorruptCheckpointError, UnsafeCheckpointError
from minibridge.checkpoint import BlockLoadPlanner, SafeFileSystemReader, load_checkpoint, read_checkpoint, save_checkpoint
from minibridge.training.optimizer import MixedPrecisionAdamW

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is")  # one process, no process group


TINY = ModelConfig(family="llama", vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                   num_kv_heads=1, head_dim=4)


def _model():
    chunks = build_model(TINY, dtype=torch.bfloat16)
    initialize_fresh(chunks, seed=0)
    return chunks[0]


@pytest.fixture
def folder(tmp_path):
    """A real minibridge checkpoint: bf16 weights, fp32 masters and Adam state, the uint8 RNG state."""
    model = _model()
    save_checkpoint(tmp_path / "save", 1, model, MixedPrecisionAdamW(model, lr=1e-3), {"note": "test"})
    return tmp_path / "save" / "iter_0000001"


def _rewrite(folder, edit):
    """Edit the (trusted: we wrote it) metadata and pickle it back, as an attacker would."""
    path = folder / ".metadata"
    metadata = pickle.loads(path.read_bytes())
    edit(metadata)
    path.write_bytes(pickle.dumps(metadata))


def _refused(folder, error, match=None):
    """The reader and each public entry point refuse `folder`, naming its .metadata."""
    readers = (lambda: SafeFileSystemReader(str(folder)).read_metadata(), lambda: read_checkpoint(folder),
               lambda: load_checkpoint(folder, _model(), restore_rng=False))
    for read in readers:
        with pytest.raises(error, match=match) as caught:
            read()
        assert str(folder / ".metadata") in str(caught.value)


# -- pickle opcodes (protocol 4) -------------------------------------------------------------------------


def _arg(value) -> bytes:
    if isinstance(value, list):  # EMPTY_LIST MARK items APPENDS
        return b"](" + b"".join(_arg(v) for v in value) + b"e"
    data = value.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def _call(module: str, name: str, *args) -> bytes:
    """Push module.name (STACK_GLOBAL walks a dotted name attribute by attribute), call it, drop the result."""
    return b"\x80\x04" + _arg(module) + _arg(name) + b"\x93(" + b"".join(map(_arg, args)) + b"tR0"


def _touch_payloads(marker):
    m = str(marker)
    touch = f"touch {shlex.quote(m)}"
    return {
        "filesystem.os.system": _call("torch.distributed.checkpoint.filesystem", "os.system", touch),
        "metadata.os.system": _call("torch.distributed.checkpoint.metadata", "os.system", touch),
        "torch.os.system": _call("torch", "os.system", touch),  # `torch` is allowed, for dtypes
        "serialization.os.system": _call("torch.serialization", "os.system", touch),  # _get_layout's module
        "pathlib.os.system": _call("pathlib", "os.system", touch),
        "filesystem.io.open": _call("torch.distributed.checkpoint.filesystem", "io.open", m, "w"),
        "posix.system": _call("posix", "system", touch),
        "subprocess.Popen": _call("subprocess", "Popen", ["touch", m]),
        "builtins.exec": _call("builtins", "exec", f"open({m!r}, 'w').close()"),
        "builtins.eval": _call("builtins", "eval", f"__import__('os').mknod({m!r})"),
    }


def _appeared(marker, wait: float) -> bool:
    deadline = time.monotonic() + wait  # Popen runs its child in the background
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return marker.exists()


@pytest.mark.parametrize("payload", list(_touch_payloads("m")))
def test_code_in_the_metadata_pickle_never_runs(folder, tmp_path, payload):
    marker = tmp_path / "pwned"
    real = (folder / ".metadata").read_bytes()
    crafted = _touch_payloads(marker)[payload] + real  # the silent form: payload, POP, then the real metadata
    # what plain pickle.load (torch's FileSystemReader) does with these bytes: runs the payload, returns metadata
    assert isinstance(pickle.loads(crafted), Metadata) and _appeared(marker, wait=10)
    marker.unlink()
    (folder / ".metadata").write_bytes(crafted)
    _refused(folder, UnsafeCheckpointError, match="refers to")
    assert not _appeared(marker, wait=0.5)


def test_metadata_cannot_set_attributes_of_functions_or_classes(folder):
    """BUILD on an allowed function or class would change it process-wide (e.g. torch's layout cache)."""
    build = b"\x80\x04" + _arg("torch.serialization") + _arg("_get_layout") + b"\x93}" + _arg("poisoned") + b"K\x01sb0"
    crafted = build + (folder / ".metadata").read_bytes()
    try:
        assert isinstance(pickle.loads(crafted), Metadata) and _get_layout.poisoned == 1
    finally:
        vars(_get_layout).pop("poisoned", None)
    (folder / ".metadata").write_bytes(crafted)
    _refused(folder, UnsafeCheckpointError, match="sets attributes")
    assert not hasattr(_get_layout, "poisoned")


def test_persistent_ids_are_refused(folder):
    (folder / ".metadata").write_bytes(b"\x80\x04" + _arg("id") + b"Q0" + (folder / ".metadata").read_bytes())
    _refused(folder, UnsafeCheckpointError, match="persistent id")


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.path))}",)


def _bytes_entry(folder, marker, key="model.embed_tokens.weight"):
    """Turn entry `key` into a BytesStorageMetadata entry whose pickle creates `marker` when loaded. The
    attacker also deletes checksums.json (it guards against accidents, and anyone who can plant a file can
    rewrite it), so what is tested here is the unpickling itself."""
    torch.save(_Touch(marker), folder / "__0_9.distcp")
    (folder / "checksums.json").unlink(missing_ok=True)

    def edit(metadata):
        metadata.state_dict_metadata[key] = BytesStorageMetadata()
        for index in [i for i in metadata.storage_data if i.fqn == key]:
            info = metadata.storage_data.pop(index)
        info.relative_path, info.offset, info.length = "__0_9.distcp", 0, (folder / "__0_9.distcp").stat().st_size
        metadata.storage_data[MetadataIndex(key)] = info

    _rewrite(folder, edit)


def test_bytes_entries_are_refused(folder, tmp_path):
    marker = tmp_path / "pwned"
    _bytes_entry(folder, marker)
    # DCP's own reader and planner unpickle the entry with torch.load(weights_only=False): the payload runs
    dcp.load({"model.embed_tokens.weight": torch.empty(16, 8)}, storage_reader=FileSystemReader(str(folder)),
             planner=DefaultLoadPlanner())
    assert marker.exists()
    marker.unlink()
    _refused(folder, UnsafeCheckpointError, match="'model.embed_tokens.weight' is a pickled object")
    assert not marker.exists()


def test_param_groups_entries_are_unpickled_with_weights_only(folder, tmp_path):
    """The one kind of pickled entry a checkpoint holds (the optimizer's param_groups) is read with torch's
    restricted unpickler: a payload in its place is refused on resume, and never runs."""
    marker = tmp_path / "pwned"
    key = "optim.param_groups.0.lr"
    assert key in SafeFileSystemReader(str(folder)).read_metadata().state_dict_metadata
    _bytes_entry(folder, marker, key)
    dcp.load({key: None}, storage_reader=FileSystemReader(str(folder)), planner=DefaultLoadPlanner())
    assert marker.exists()  # DCP's own planner runs it
    marker.unlink()
    model = _model()
    with pytest.raises(UnsafeCheckpointError, match=f"{key}: not a plain param_groups value"):
        load_checkpoint(folder, model, MixedPrecisionAdamW(model, lr=1e-3))
    assert not marker.exists()
    # a reader handed another planner does not read it at all
    metadata = SafeFileSystemReader(str(folder)).read_metadata()
    planner, reader = DefaultLoadPlanner(), SafeFileSystemReader(str(folder))
    planner.set_up_planner({key: None}, metadata)
    reader.set_up_storage_reader(metadata, True)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False"):
        reader.read_data(planner.create_local_plan(), planner)
    assert not marker.exists()


def test_read_data_never_unpickles_a_bytes_entry(folder, tmp_path):
    """Even with metadata that did not come from read_metadata (the check there is the first line)."""
    marker = tmp_path / "pwned"
    _bytes_entry(folder, marker)
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    planner, reader = BlockLoadPlanner(), SafeFileSystemReader(str(folder))
    planner.set_up_planner({"model.embed_tokens.weight": torch.empty(16, 8)}, metadata)
    reader.set_up_storage_reader(metadata, True)
    with pytest.raises(UnsafeCheckpointError, match="'model.embed_tokens.weight'.*weights_only=False"):
        reader.read_data(planner.create_local_plan(), planner)
    assert not marker.exists()


def _store_in(folder, name):
    def edit(metadata):
        for info in metadata.storage_data.values():
            info.relative_path = name

    _rewrite(folder, edit)


def test_data_outside_the_folder_is_refused(folder, tmp_path):
    (folder / "__0_0.distcp").rename(folder.parent / "outside.distcp")
    _store_in(folder, "../outside.distcp")
    model = _model()
    # DCP's own reader follows the path out of the checkpoint folder
    dcp.load({"model.embed_tokens.weight": model.embed_tokens.weight.data}, storage_reader=FileSystemReader(str(folder)),
             planner=BlockLoadPlanner())
    _refused(folder, UnsafeCheckpointError, match="'../outside.distcp'; expected a data file")


@pytest.mark.parametrize("name", ["/etc/passwd", "sub/__0_0.distcp", "__0_0.distcp/../../x.distcp", "run.json", ""])
def test_storage_paths_other_than_dcp_data_files_are_refused(folder, name):
    _store_in(folder, name)
    _refused(folder, UnsafeCheckpointError, match="expected a data file")


def _edit_offsets(metadata):
    next(iter(metadata.storage_data.values())).offset = -1


def _drop_chunk(metadata):
    metadata.storage_data.pop(next(i for i in metadata.storage_data if i.fqn == "model.embed_tokens.weight"))


@pytest.mark.parametrize("damage", [
    lambda folder: (folder / ".metadata").write_bytes((folder / ".metadata").read_bytes()[:300]),
    lambda folder: (folder / ".metadata").write_bytes(b""),
    lambda folder: (folder / ".metadata").write_bytes(b"\x00 not a pickle at all"),
    lambda folder: (folder / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}})),
    lambda folder: _rewrite(folder, _edit_offsets),
    lambda folder: _rewrite(folder, _drop_chunk),
    lambda folder: _rewrite(folder, lambda metadata: setattr(metadata, "storage_meta", "not StorageMeta")),
], ids=["truncated", "empty", "garbage", "not-metadata", "negative-offset", "chunk-without-storage", "storage-meta"])
def test_broken_metadata_is_a_corrupt_checkpoint(folder, damage):
    damage(folder)
    _refused(folder, CorruptCheckpointError)


def test_real_checkpoints_still_load(folder, tmp_path):
    model = _model()
    with torch.no_grad():
        model.embed_tokens.weight.zero_()
    assert load_checkpoint(folder, model)["note"] == "test"
    assert torch.equal(model.embed_tokens.weight, _model().embed_tokens.weight)
    assert read_checkpoint(folder)[2]["model.embed_tokens.weight"].size == torch.Size([16, 8])
    # plain DCP saves of every kind of tensor minibridge keeps, 0-dim included
    state = {"f": torch.randn(2, 3), "b": torch.ones(4, dtype=torch.bfloat16), "u": torch.arange(3, dtype=torch.uint8),
             "i": torch.arange(2), "flag": torch.tensor([True]), "step": torch.tensor(7.0)}
    dcp.save(state, checkpoint_id=str(tmp_path / "plain"))
    loaded = {k: torch.empty_like(v) for k, v in state.items()}
    dcp.load(loaded, storage_reader=SafeFileSystemReader(str(tmp_path / "plain")))
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
