"""Every kind of bad input fails with an error that names the file, key or value and what was expected."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minibridge import AutoBridge
from minibridge.bridge import CorruptCheckpointError, UnsupportedModelError
from minibridge.bridge import exporting


@pytest.fixture
def llama_copy(hf_checkpoint, tmp_path):
    dst = tmp_path / "llama"
    shutil.copytree(hf_checkpoint("Meta-Llama-3-8B"), dst)
    return dst


def _edit_tensors(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_unsupported_architecture_is_named_with_the_supported_list(llama_copy):
    config = json.loads((llama_copy / "config.json").read_text())
    config.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (llama_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="MistralForCausalLM.*LlamaForCausalLM"):
        AutoBridge.from_hf_pretrained(llama_copy)
    assert "Gemma3ForCausalLM" in AutoBridge.list_supported_models()


def test_missing_config_json(llama_copy):
    (llama_copy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        AutoBridge.from_hf_pretrained(llama_copy)


def test_missing_tensor_names_key_and_folder(llama_copy):
    _edit_tensors(llama_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight") as err:
        AutoBridge.from_hf_pretrained(llama_copy).to_model(progress=False)
    assert str(llama_copy) in str(err.value)


def test_wrong_shape_says_expected_and_got(llama_copy):
    def shrink_one(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]

    _edit_tensors(llama_copy, shrink_one)
    with pytest.raises(ValueError, match=r"k_proj\.weight.*shape \[23, 96\], expected \[24, 96\]") as err:
        AutoBridge.from_hf_pretrained(llama_copy).to_model(progress=False)
    assert "model.safetensors" in str(err.value)


def test_unexpected_tensor_is_refused(llama_copy):
    _edit_tensors(llama_copy, lambda t: t.update({"model.layers.0.mystery.weight": torch.zeros(2)}))
    with pytest.raises(KeyError, match=r"unexpected tensor 'model\.layers\.0\.mystery\.weight'"):
        AutoBridge.from_hf_pretrained(llama_copy).to_model(progress=False)


def test_truncated_safetensors(llama_copy):
    path = llama_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors: truncated: tensor"):
        AutoBridge.from_hf_pretrained(llama_copy)


@pytest.mark.parametrize("garbage", [b"", b"\x01\x02", b"\xff" * 8 + b"{}", (20).to_bytes(8, "little") + b"not json at all!!!!!"])
def test_corrupt_safetensors_header(llama_copy, garbage):
    (llama_copy / "model.safetensors").write_bytes(garbage)
    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors: (truncated|corrupt)"):
        AutoBridge.from_hf_pretrained(llama_copy)


def test_index_naming_a_missing_shard(hf_checkpoint, tmp_path):
    bridge = AutoBridge.from_hf_pretrained(hf_checkpoint("Llama-3.2-1B"))
    out = bridge.save_hf_pretrained(bridge.to_model(progress=False), tmp_path / "s", max_shard_size="50KB", progress=False)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        AutoBridge.from_hf_pretrained(out)


def test_export_refuses_a_non_empty_folder_unless_asked(hf_checkpoint, tmp_path):
    bridge = AutoBridge.from_hf_pretrained(hf_checkpoint("Llama-3.2-1B"))
    model = bridge.to_model(progress=False)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        bridge.save_hf_pretrained(model, target, progress=False)
    assert (target / "keep.txt").read_text() == "precious"
    bridge.save_hf_pretrained(model, target, overwrite=True, progress=False)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folders left


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_export_leaves_no_folder(hf_checkpoint, tmp_path, monkeypatch, error):
    bridge = AutoBridge.from_hf_pretrained(hf_checkpoint("Llama-3.2-1B"))
    model = bridge.to_model(progress=False)
    real_write, calls = exporting.write_safetensors, []

    def write_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise error("interrupted")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(exporting, "write_safetensors", write_then_die)
    with pytest.raises(error):
        bridge.save_hf_pretrained(model, tmp_path / "out", max_shard_size="50KB", progress=False)
    assert list(tmp_path.iterdir()) == []
