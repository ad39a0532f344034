"""LoRA / DoRA modules on the single-device model: exact zero start, merge, targets, freezing."""

import pytest
import torch
from peft_helpers import batch, randomize_adapters

from minibridge import AutoBridge
from minibridge.peft import adapter_parameters, apply_peft, count_parameters, merge_peft, select_modules
from minibridge.training.optimizer import MixedPrecisionAdamW


@pytest.fixture(scope="module")
def folders(hf_checkpoint):
    return {"llama_bias": hf_checkpoint("Meta-Llama-3-8B", attention_bias=True, mlp_bias=True),
            "gemma": hf_checkpoint("gemma-3-1b-it")}


@pytest.mark.parametrize("family", ["llama_bias", "gemma"])
@pytest.mark.parametrize("scheme", ["lora", "dora"])
def test_zero_b_is_exactly_the_base_and_merge_matches_unmerged(folders, family, scheme):
    bridge = AutoBridge.from_hf_pretrained(folders[family])
    model = bridge.to_model(dtype=torch.float32, progress=False)
    names = [n for n, _ in model.named_parameters()]
    ids = batch(bridge.config.vocab_size)
    with torch.no_grad():
        base = model(ids)
        apply_peft(model, scheme, rank=4, alpha=8)
        assert torch.equal(model(ids), base)  # B = 0 (and DoRA's magnitude = ||W||): bit for bit
        randomize_adapters(model)
        adapted = model(ids)
        assert (adapted - base).abs().max() > 0.1
    with pytest.raises(ValueError, match="save_hf_adapter"):
        bridge.save_hf_pretrained(model, "unused")
    merge_peft(model)
    assert [n for n, _ in model.named_parameters()] == names  # LoRA only adds names, merge removes them
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(ids), adapted, rtol=0, atol=1e-5)


def test_only_adapters_train(folders):
    bridge = AutoBridge.from_hf_pretrained(folders["llama_bias"])
    model = apply_peft(bridge.to_model(dtype=torch.bfloat16, progress=False), "dora", rank=4)
    adapters = adapter_parameters(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(adapters)
    trainable, total = count_parameters(model)
    assert trainable == sum(p.numel() for p in adapters.values()) and total == sum(p.numel() for p in model.parameters())
    optimizer = MixedPrecisionAdamW(model, lr=1e-2)
    assert set(optimizer.params) == set(adapters)
    before = {n: p.clone() for n, p in model.named_parameters()}
    ids = batch(bridge.config.vocab_size)
    model(ids, labels=ids).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in adapters)
    optimizer.step()
    for name, p in model.named_parameters():
        if name not in adapters:
            assert torch.equal(p, before[name]), name  # the base stays bit for bit
        elif "lora_A" not in name:  # B starts at zero, so A's gradient is zero on the first step
            assert not torch.equal(p, before[name]), name


def test_target_spellings_and_excludes(folders):
    bridge = AutoBridge.from_hf_pretrained(folders["llama_bias"])
    config = bridge.config  # 2 layers
    all_qkv = [f"layers.{i}.attn.{p}_proj" for i in range(2) for p in "qkv"]
    assert select_modules(config, ["linear_qkv"]) == all_qkv
    assert select_modules(config, ["q_proj", "k_proj", "v_proj"]) == all_qkv
    assert select_modules(config, ["*.self_attention.linear_qkv"]) == all_qkv  # Megatron full names
    hf_name = bridge.mapping.hf_module_name  # HF module names, spelled by the bridge's table
    assert select_modules(config, ["model.layers.1.self_attn.q_proj", "layers.0.mlp.down_proj"], hf_name=hf_name) == [
        "layers.0.mlp.down_proj", "layers.1.attn.q_proj"]
    with pytest.raises(ValueError, match="'model.layers.1.self_attn.q_proj' matches no linear layer"):
        select_modules(config, ["model.layers.1.self_attn.q_proj"])  # without the bridge: no HF spelling
    assert select_modules(config, ["*.layers.0.*"], exclude=["linear_fc1", "*.k_proj"]) == [
        "layers.0.attn.q_proj", "layers.0.attn.v_proj", "layers.0.attn.o_proj", "layers.0.mlp.down_proj"]
    assert len(select_modules(config)) == 14  # Megatron Bridge's default: the four block linears
    with pytest.raises(ValueError, match="'linear_qvk' matches no linear layer"):
        select_modules(config, ["linear_qvk"])
    with pytest.raises(ValueError, match="leave no layer"):
        select_modules(config, ["linear_proj"], exclude=["o_proj"])


def test_post_dropout_and_rslora_scale(folders):
    bridge = AutoBridge.from_hf_pretrained(folders["gemma"])
    model = apply_peft(bridge.to_model(dtype=torch.float32, progress=False), "lora", rank=4, alpha=8, dropout=0.5,
                       dropout_position="post", use_rslora=True, targets=["o_proj"])
    module = model.layers["0"].attn.o_proj
    assert module.lora_scale == 8 / 2  # alpha / sqrt(rank)
    randomize_adapters(model)
    ids = batch(bridge.config.vocab_size)
    with torch.no_grad():
        model.eval()
        first, second = model(ids), model(ids)
        assert torch.equal(first, second)  # dropout only in training
        model.train()
        assert not torch.equal(model(ids), first)
