"""Tiny real-format HF checkpoints built locally with transformers from the shipped config.json files.

Sizes shrink; features stay: GQA ratio (MQA where the real model has one KV head), tied or untied
output, RoPE scaling, head_dim spelled out or implied, Gemma's layer pattern and windows, and the
multimodal wrapper of Gemma 3 4B. Weights are random, norms included, so `(1 + w)` and cast orders show.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from hypothesis import strategies as st

CONFIG_DIR = Path(__file__).parent / "data" / "hf_configs"
CONFIG_NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
GEMMA_TEXT_DEFAULT_HEADS = (8, 4)  # Gemma3TextConfig's defaults, used by the 4B config


def real_config(name: str) -> dict:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def shrink(hf: dict, **overrides) -> dict:
    """Same architecture at toy size. `overrides` apply to the text config."""
    hf = copy.deepcopy(hf)
    text = hf.setdefault("text_config", {}) if "text_config" in hf else hf
    gemma = "gemma" in hf.get("model_type", "")
    heads, kv = text.get("num_attention_heads"), text.get("num_key_value_heads")
    if heads is None:
        heads, kv = GEMMA_TEXT_DEFAULT_HEADS
    ratio = heads // (kv or heads)
    tiny_heads = 2 * ratio if ratio <= 4 else ratio
    text.update(
        hidden_size=96, intermediate_size=128, num_attention_heads=tiny_heads,
        num_key_value_heads=tiny_heads // ratio, vocab_size=320 if gemma else 256,
        num_hidden_layers=7 if gemma else 2,
    )
    if "head_dim" in text or gemma:
        text["head_dim"] = 16  # differs from hidden / heads, as on real Gemma checkpoints
    if gemma:
        text.update(sliding_window=8, query_pre_attn_scalar=16)
    else:
        hf.update(bos_token_id=1, eos_token_id=2)  # inside the tiny vocabulary
    if "vision_config" in hf:
        hf["vision_config"].update(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=28, patch_size=14,
        )
        hf["mm_tokens_per_image"] = 4
    text.update(overrides)
    return hf


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, norms included (a zero Gemma norm would hide the 1 + w offset)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * (0.1 if "norm" in name else 0.05)
            base = 1.0 if "norm" in name and "gemma" not in type(model).__name__.lower() else 0.0
            p.copy_(base + noise)


def make_checkpoint(folder: Path, hf_config: dict, dtype=torch.float32, seed: int = 0) -> Path:
    """Save a randomly initialised transformers model with `hf_config` into `folder`."""
    import transformers

    config = transformers.AutoConfig.for_model(**copy.deepcopy(hf_config))
    arch = hf_config["architectures"][0]
    model = getattr(transformers, arch)(config)
    randomize(model, seed)
    model.to(dtype).save_pretrained(folder)
    return Path(folder)


def load_hf(folder: Path, dtype=torch.float32):
    import transformers

    arch = json.loads((Path(folder) / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch).from_pretrained(folder, dtype=dtype).eval()


@st.composite
def random_hf_configs(draw):
    """Hypothesis strategy: a random tiny Llama or Gemma 3 HF config dict."""
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
