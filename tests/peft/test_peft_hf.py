"""Adapters move between minibridge and the peft library unchanged: an exported adapter loaded with
`peft.PeftModel.from_pretrained` on the transformers model gives minibridge's logits, and an adapter
made and saved by peft gives the same logits once imported (fp32, 1e-4). LoRA and DoRA, tiny Llama
(with biases, so DoRA's bias handling shows) and Gemma 3, text-only and multimodal."""

import json

import peft
import pytest
import torch
from hf_checkpoints import load_hf
from peft_helpers import batch, randomize_adapters

from minibridge import AutoBridge
from minibridge.peft import apply_peft, merge_peft

TOL = dict(rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def folders(hf_checkpoint):
    return {"llama": hf_checkpoint("Meta-Llama-3-8B", attention_bias=True, mlp_bias=True),
            "gemma": hf_checkpoint("gemma-3-1b-it"),
            "gemma_multimodal": hf_checkpoint("gemma-3-4b-it", num_hidden_layers=2)}


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family,scheme,targets", [
    ("llama", "lora", None), ("llama", "dora", None), ("gemma", "lora", None), ("gemma", "dora", None),
    ("gemma_multimodal", "dora", ["*.layers.1.*.linear_qkv", "down_proj"]),  # exact-name regex for peft
])
def test_export_loads_in_peft_with_same_logits(folders, tmp_path, family, scheme, targets):
    folder = folders[family]
    bridge = AutoBridge.from_hf_pretrained(folder)
    model = apply_peft(bridge.to_model(dtype=torch.float32, progress=False), scheme, rank=4, alpha=8, targets=targets)
    randomize_adapters(model)
    ids = batch(bridge.config.vocab_size)
    with torch.no_grad():
        ours = model(ids)
    bridge.save_hf_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] == (scheme == "dora") and config["r"] == 4 and config["lora_alpha"] == 8
    peft_model = peft.PeftModel.from_pretrained(load_hf(folder), tmp_path / "adapter").eval()
    torch.testing.assert_close(_hf_logits(peft_model, ids), ours, **TOL)
    # the merged export: full HF weights that plain transformers reads
    bridge.save_hf_pretrained(merge_peft(model), tmp_path / "merged", progress=False)
    torch.testing.assert_close(_hf_logits(load_hf(tmp_path / "merged"), ids), ours, **TOL)


@pytest.mark.parametrize("family,dora", [("llama", False), ("llama", True), ("gemma", False), ("gemma", True)])
def test_peft_adapter_imports_with_same_logits(folders, tmp_path, family, dora):
    folder = folders[family]
    targets = ["q_proj", "v_proj", "o_proj", "down_proj"] if family == "llama" else ["k_proj", "gate_proj", "up_proj"]
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=targets, use_dora=dora, task_type="CAUSAL_LM",
                             layers_to_transform=[0] if family == "gemma" else None)
    peft_model = peft.get_peft_model(load_hf(folder), config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    bridge = AutoBridge.from_hf_pretrained(folder)
    model = bridge.load_hf_adapter(bridge.to_model(dtype=torch.float32, progress=False), tmp_path / "adapter")
    ids = batch(bridge.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), _hf_logits(peft_model.eval(), ids), **TOL)
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())  # ready to train on
    layers = model.adapters.modules
    assert all(m.rsplit(".", 1)[1] in targets for m in layers) and (family == "llama" or len(layers) == 3)
    bridge.save_hf_adapter(model, tmp_path / "again")  # and back out: the same tensors
    from safetensors.torch import load_file

    first, again = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("adapter", "again"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_unsupported_adapter_is_refused(folders, tmp_path):
    config = peft.LoraConfig(r=2, target_modules=["q_proj"], bias="all", task_type="CAUSAL_LM")
    peft.get_peft_model(load_hf(folders["llama"]), config).save_pretrained(tmp_path / "adapter")
    bridge = AutoBridge.from_hf_pretrained(folders["llama"])
    with pytest.raises(ValueError, match="trained biases"):
        bridge.load_hf_adapter(bridge.to_model(dtype=torch.float32, progress=False), tmp_path / "adapter")
