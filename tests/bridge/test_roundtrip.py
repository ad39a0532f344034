"""HF folder -> minibridge -> HF folder gives back the same tensors, and transformers reads the result."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hf_checkpoints import CONFIG_NAMES, load_hf
from minibridge import AutoBridge
from minibridge.bridge.hf_folder import HFFolder


def _tensors(folder):
    out = {}
    for info in HFFolder(folder).tensors.values():
        with safe_open(info.path, "pt") as f:
            out[info.name] = f.get_tensor(info.name)
    return out


def _assert_same_tensors(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), f"{name} bytes differ"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_roundtrip_is_exact_and_loads_in_transformers(hf_checkpoint, tmp_path, name):
    src = hf_checkpoint(name, dtype=torch.bfloat16)
    (src / "tokenizer_config.json").write_text("{}")
    bridge = AutoBridge.from_hf_pretrained(src)
    model = bridge.to_model(dtype=torch.float32, progress=False)  # bf16 -> fp32 -> bf16 is exact
    out = bridge.save_hf_pretrained(model, tmp_path / "out", progress=False)
    _assert_same_tensors(_tensors(src), _tensors(out))
    assert (out / "tokenizer_config.json").exists() and (out / "config.json").exists()
    import transformers

    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    _, info = getattr(transformers, arch).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_export_hf_weights_streams_hf_names(hf_checkpoint):
    src = hf_checkpoint("Llama-3.2-1B")
    bridge = AutoBridge.from_hf_pretrained(src)
    model = bridge.to_model(progress=False)
    exported = dict(bridge.export_hf_weights(model))
    _assert_same_tensors(_tensors(src), exported)


def test_sharded_export_with_index_and_sharded_import(hf_checkpoint, tmp_path):
    src = hf_checkpoint("gemma-3-1b-it")
    bridge = AutoBridge.from_hf_pretrained(src)
    model = bridge.to_model(progress=False)
    out = bridge.save_hf_pretrained(model, tmp_path / "sharded", max_shard_size="100KB", progress=False)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and all((out / s).exists() for s in shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.itemsize for t in _tensors(src).values())
    _assert_same_tensors(_tensors(src), _tensors(out))
    reloaded = AutoBridge.from_hf_pretrained(out).to_model(progress=False)
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.no_grad():
        assert torch.equal(model(ids), reloaded(ids))
    hf = load_hf(out)
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-4


def _rename_checkpoint(src, dst, rename):
    dst.mkdir()
    tensors = {rename(k): v for k, v in _tensors(src).items()}
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_multimodal_gemma_both_prefix_spellings(hf_checkpoint, tmp_path):
    """4.x writes `language_model.model.`, 5.x `model.language_model.`; both load, both export as read."""
    src = hf_checkpoint("gemma-3-4b-it")
    assert any(k.startswith("language_model.model.") for k in _tensors(src))
    v5 = _rename_checkpoint(
        src, tmp_path / "v5",
        lambda k: "model." + k.replace("language_model.model.", "language_model."),
    )
    ref = AutoBridge.from_hf_pretrained(src).to_model(progress=False)
    bridge = AutoBridge.from_hf_pretrained(v5)
    assert bridge.mapping.text_prefix == "model.language_model."
    model = bridge.to_model(progress=False)
    ids = torch.randint(0, model.config.vocab_size, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids), ref(ids))
    out = bridge.save_hf_pretrained(model, tmp_path / "out", progress=False)
    _assert_same_tensors(_tensors(v5), _tensors(out))  # vision tower passed through untouched


def test_fresh_model_exports_a_config_transformers_reads(tmp_path):
    from minibridge.bridge import config_from_hf
    from hf_checkpoints import real_config, shrink

    config = config_from_hf(shrink(real_config("gemma-3-4b-it")))
    bridge = AutoBridge.from_config(config)
    model = bridge.to_model(dtype=torch.float32)
    out = bridge.save_hf_pretrained(model, tmp_path / "fresh", progress=False)
    hf = load_hf(out)
    assert type(hf).__name__ == "Gemma3ForCausalLM"
    ids = torch.randint(0, config.vocab_size, (1, 20))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-4
    assert AutoBridge.from_hf_pretrained(out).config == config
