"""Model folders that point outside themselves: every file read (or copied into an export) must resolve
inside the folder, else an UnsafeCheckpointError naming it. A huggingface_hub cache snapshot, whose
files are links into the repository's blobs, still loads."""

import json
import pathlib
import shutil

import pytest
import torch

from minibridge import AutoBridge
from minibridge.bridge.hf_folder import INDEX_NAME, SINGLE_NAME
from minibridge.conversion import import_checkpoint
from minibridge.errors import CorruptCheckpointError, UnsafeCheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sharded(hf_checkpoint, tmp_path_factory):
    """A Llama folder in several shards, with a tokenizer.json."""
    bridge = AutoBridge.from_hf_pretrained(hf_checkpoint("Llama-3.2-1B"))
    folder = tmp_path_factory.mktemp("sharded") / "model"
    bridge.save_hf_pretrained(bridge.to_model(progress=False), folder, max_shard_size="50KB", progress=False)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    return folder


@pytest.fixture
def model(sharded, tmp_path):
    """A private copy of `sharded`, and next to it an `outside` folder."""
    (tmp_path / "outside").mkdir()
    return shutil.copytree(sharded, tmp_path / "model")


@pytest.fixture
def single(hf_checkpoint, tmp_path):
    (tmp_path / "outside").mkdir()
    return shutil.copytree(hf_checkpoint("Llama-3.2-1B"), tmp_path / "model")


def _index(folder):
    return json.loads((folder / INDEX_NAME).read_text())


def _move_shard_outside(folder, rename):
    """Move the first shard to ../outside and make the index name it as `rename(outside file)`."""
    index = _index(folder)
    shard = sorted(set(index["weight_map"].values()))[0]
    outside = folder.parent / "outside" / shard
    shutil.move(folder / shard, outside)
    index["weight_map"] = {k: rename(outside) if v == shard else v for k, v in index["weight_map"].items()}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    return shard


def _load(folder):
    return AutoBridge.from_hf_pretrained(folder).to_model(progress=False)


ESCAPES = {
    "parent": lambda outside: f"../outside/{outside.name}",
    "absolute": lambda outside: str(outside),
    "dotted": lambda outside: f"./../outside/{outside.name}",
}


@pytest.mark.parametrize("escape", sorted(ESCAPES))
@pytest.mark.parametrize("how", ["to_model", "import_checkpoint"])
def test_index_entries_leading_outside_are_refused(model, tmp_path, escape, how):
    _move_shard_outside(model, ESCAPES[escape])
    with pytest.raises(UnsafeCheckpointError, match=rf"{INDEX_NAME}: weight_map\[.*plain file name"):
        _load(model) if how == "to_model" else import_checkpoint(model, tmp_path / "mb", progress=False)
    assert not (tmp_path / "mb").exists()


@pytest.mark.parametrize("entry", [5, None, ["model.safetensors"], "", "..", "a/b.safetensors", "C:x.safetensors"])
def test_index_entries_must_be_plain_file_names(model, entry):
    index = _index(model)
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = entry
    (model / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises((CorruptCheckpointError, UnsafeCheckpointError), match=rf"weight_map\[{name!r}\]"):
        AutoBridge.from_hf_pretrained(model)


def test_a_shard_linked_outside_is_refused(model, tmp_path):
    shard = sorted(set(_index(model)["weight_map"].values()))[0]
    shutil.move(model / shard, tmp_path / "outside" / shard)
    (model / shard).symlink_to(tmp_path / "outside" / shard)
    for load in (_load, lambda m: import_checkpoint(m, tmp_path / "mb", progress=False)):
        with pytest.raises(UnsafeCheckpointError, match=rf"{shard} \(a symbolic link\) leads to .*outside"):
            load(model)


@pytest.mark.parametrize("name", [SINGLE_NAME, "weights.safetensors", "config.json"])
def test_a_single_file_or_config_linked_outside_is_refused(single, tmp_path, name):
    """model.safetensors, the *.safetensors found by a glob when there is no index, and config.json."""
    shutil.move(single / (SINGLE_NAME if name != "config.json" else name), tmp_path / "outside" / name)
    (single / name).symlink_to(f"../outside/{name}")
    with pytest.raises(UnsafeCheckpointError, match=rf"model/{name} \(a symbolic link\) leads to .*outside"):
        _load(single)
    with pytest.raises(UnsafeCheckpointError, match=name):
        import_checkpoint(single, tmp_path / "mb", progress=False)


def test_a_link_loop_is_refused(single):
    (single / SINGLE_NAME).unlink()
    (single / SINGLE_NAME).symlink_to(SINGLE_NAME)
    with pytest.raises(UnsafeCheckpointError, match=rf"{SINGLE_NAME}: cannot be resolved"):
        _load(single)


def test_export_refuses_a_side_file_linked_outside_and_leaves_nothing(single, tmp_path):
    secret = tmp_path / "outside" / "secret.txt"
    secret.write_text("do not copy me")
    (single / "tokenizer.json").symlink_to(secret)
    bridge = AutoBridge.from_hf_pretrained(single)
    model = bridge.to_model(progress=False)  # loading reads no side file
    exports = tmp_path / "exports"
    with pytest.raises(UnsafeCheckpointError, match=r"tokenizer\.json \(a symbolic link\) leads to .*secret\.txt"):
        bridge.save_hf_pretrained(model, exports / "out", progress=False)
    assert not exports.exists() or list(exports.iterdir()) == []  # no temporary folder either


def test_links_inside_the_folder_are_fine(single, tmp_path):
    (single / "tokenizer.real.json").write_text('{"version": "1.0"}')
    (single / "tokenizer.json").symlink_to("tokenizer.real.json")
    bridge = AutoBridge.from_hf_pretrained(single)
    out = bridge.save_hf_pretrained(bridge.to_model(progress=False), tmp_path / "out", progress=False)
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}' and not (out / "tokenizer.json").is_symlink()


def _hub_snapshot(source, cache):
    """huggingface_hub's cache layout: snapshots/<revision>/<file> -> ../../blobs/<hash>."""
    repo = cache / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for k, path in enumerate(sorted(source.iterdir())):
        shutil.copy(path, repo / "blobs" / f"blob{k:04d}")
        (snapshot / path.name).symlink_to(f"../../blobs/blob{k:04d}")
    return snapshot


def test_a_hub_cache_snapshot_loads_and_exports(sharded, tmp_path):
    snapshot = _hub_snapshot(sharded, tmp_path / "hub")
    bridge = AutoBridge.from_hf_pretrained(snapshot)
    reference = AutoBridge.from_hf_pretrained(sharded).to_model(progress=False)
    model = bridge.to_model(progress=False)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), rtol=0, atol=0)
    out = bridge.save_hf_pretrained(model, tmp_path / "out", progress=False)
    assert (out / "tokenizer.json").read_text() == (sharded / "tokenizer.json").read_text()
    import_checkpoint(snapshot, tmp_path / "mb", progress=False)


def test_a_hub_snapshot_link_leaving_its_repository_is_refused(sharded, tmp_path):
    snapshot = _hub_snapshot(sharded, tmp_path / "hub")
    other = tmp_path / "hub" / "models--org--other" / "blobs"
    other.mkdir(parents=True)
    (other / "tok").write_text("{}")
    (snapshot / "tokenizer.json").unlink()
    (snapshot / "tokenizer.json").symlink_to("../../../models--org--other/blobs/tok")
    bridge = AutoBridge.from_hf_pretrained(snapshot)
    with pytest.raises(UnsafeCheckpointError, match="tokenizer.json"):
        bridge.save_hf_pretrained(bridge.to_model(progress=False), tmp_path / "out", progress=False)


def test_tokenizer_files_linked_outside_are_never_read(pydoc_data, single, tmp_path, capsys):
    """Folders transformers reads for us (AutoTokenizer picks its files itself) are checked whole."""
    from minibridge.generate import main as generate_main
    from minibridge.training.data import load_tokenizer

    for file in pathlib.Path(pydoc_data["tokenizer"]).iterdir():
        shutil.copy(file, single / file.name)
    secret = tmp_path / "outside" / "secret.json"
    shutil.move(single / "tokenizer.json", secret)
    (single / "tokenizer.json").symlink_to(secret)
    with pytest.raises(UnsafeCheckpointError, match=r"tokenizer\.json \(a symbolic link\) leads to .*secret\.json"):
        load_tokenizer(str(single))
    capsys.readouterr()
    assert generate_main(["--hf_model_path", str(single), "--prompt", "x", "--max_new_tokens", "1"]) == 2
    assert "secret.json" in capsys.readouterr().err


def test_adapter_weights_linked_outside_are_refused(hf_checkpoint, tmp_path):
    from minibridge.peft import apply_peft

    bridge = AutoBridge.from_hf_pretrained(hf_checkpoint("Llama-3.2-1B"))
    model = apply_peft(bridge.to_model(progress=False), "lora", rank=2)
    adapter = bridge.save_hf_adapter(model, tmp_path / "adapter")
    moved = tmp_path / "elsewhere.safetensors"
    shutil.move(adapter / "adapter_model.safetensors", moved)
    (adapter / "adapter_model.safetensors").symlink_to(moved)
    with pytest.raises(UnsafeCheckpointError, match="adapter_model.safetensors"):
        bridge.load_hf_adapter(bridge.to_model(progress=False), adapter)
