"""Property: for random tiny configs, import then export is the identity and every HF key maps once."""

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_checkpoints import make_checkpoint
from minibridge import AutoBridge
from minibridge.bridge.hf_folder import HFFolder
from minibridge.bridge.safetensors_io import read_tensor


@st.composite
def hf_configs(draw):
    gemma = draw(st.booleans())
    kv = draw(st.integers(1, 3))
    heads = kv * draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([8, 12, 16]))
    layers = draw(st.integers(1, 5))
    config = dict(
        hidden_size=heads * 8, intermediate_size=draw(st.sampled_from([16, 40])), num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, vocab_size=draw(st.integers(16, 80)),
        tie_word_embeddings=draw(st.booleans()),
    )
    if gemma:
        config.update(
            architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", sliding_window=draw(st.integers(2, 16)),
            query_pre_attn_scalar=head_dim, sliding_window_pattern=draw(st.integers(1, 4)),
            rope_scaling=draw(st.sampled_from([None, {"rope_type": "linear", "factor": 8.0}])),
        )
        if draw(st.booleans()):  # 5.x spelling: explicit layer types
            config["layer_types"] = [draw(st.sampled_from(["sliding_attention", "full_attention"])) for _ in range(layers)]
    else:
        llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
        bias = draw(st.booleans())
        config.update(
            architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=bias, mlp_bias=bias,
            rope_scaling=draw(st.sampled_from([None, llama3])),
        )
    return config


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hf_configs(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_import_export_identity_and_one_to_one_mapping(hf_config, dtype):
    with tempfile.TemporaryDirectory() as tmp:
        src = make_checkpoint(Path(tmp) / "src", hf_config, dtype=dtype)
        bridge = AutoBridge.from_hf_pretrained(src)
        hf_names = list(bridge.folder.tensors)
        local_names = [bridge.mapping.to_local(n) for n in hf_names]
        assert None not in local_names
        assert len(set(local_names)) == len(local_names)  # no two HF keys land on one parameter
        assert [bridge.mapping.to_hf(n) for n in local_names] == hf_names
        model = bridge.to_model(dtype=torch.float32, progress=False)
        assert sorted(n for n, _ in model.named_parameters()) == sorted(local_names)  # each exactly once
        exported = dict(bridge.export_hf_weights(model))
        assert sorted(exported) == sorted(hf_names)
        for name, info in bridge.folder.tensors.items():
            source = read_tensor(info)
            assert exported[name].dtype == source.dtype
            assert torch.equal(exported[name].view(torch.uint8), source.view(torch.uint8)), name
        out = bridge.save_hf_pretrained(model, Path(tmp) / "out", progress=False)
        assert sorted(HFFolder(out).tensors) == sorted(hf_names)
