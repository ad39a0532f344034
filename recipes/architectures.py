"""The architectures a recipe trains: the built-in ones (the `config.json` of each Hugging Face checkpoint,
values from the public model cards, the same files as tests/data/hf_configs, translated by the bridge's
`config_from_hf`, so a recipe needs no download to pretrain from scratch) and those read from a pretrained
checkpoint (an HF folder's config.json, a Megatron checkpoint's run_config.yaml), with their tokenizers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from minibridge.bridge.hf_config import config_from_hf, read_config_json
from minibridge.bridge.hf_folder import inside
from minibridge.bridge.json_checks import parse_json
from minibridge.models.config import ModelConfig
from minibridge.training.config import ConfigError

_LLAMA3 = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, hidden_act="silu", rms_norm_eps=1e-5,
    rope_theta=500000.0, attention_bias=False, mlp_bias=False, initializer_range=0.02, tie_word_embeddings=False,
    max_position_embeddings=8192, rope_scaling=None,
)
# Llama 3.1 / 3.2 rope: frequency-dependent scaling of the 8k original context (factor 8; 32 on 3.2).
_LLAMA31 = dict(max_position_embeddings=131072, rope_scaling=dict(
    rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=8192))
_LLAMA32 = {**_LLAMA3, **_LLAMA31, "rope_scaling": {**_LLAMA31["rope_scaling"], "factor": 32.0},
            "intermediate_size": 8192, "num_key_value_heads": 8, "tie_word_embeddings": True}
_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
           num_key_value_heads=8)
_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
            num_key_value_heads=8)

# Keyed by the hub id Megatron Bridge's recipes pass to AutoBridge.from_hf_pretrained.
HF_CONFIGS = {
    "meta-llama/Llama-3.2-1B": {**_LLAMA32, "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                                "head_dim": 64},
    "meta-llama/Llama-3.2-3B": {**_LLAMA32, "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24,
                                "head_dim": 128},
    "meta-llama/Meta-Llama-3-8B": {**_LLAMA3, **_8B},
    "meta-llama/Meta-Llama-3-70B": {**_LLAMA3, **_70B},
    "meta-llama/Meta-Llama-3.1-8B": {**_LLAMA3, **_LLAMA31, **_8B},
    "meta-llama/Meta-Llama-3.1-70B": {**_LLAMA3, **_LLAMA31, **_70B},
    "meta-llama/Meta-Llama-3.1-405B": {**_LLAMA3, **_LLAMA31, "hidden_size": 16384, "intermediate_size": 53248,
                                       "num_hidden_layers": 126, "num_attention_heads": 128, "num_key_value_heads": 8},
    # google/gemma-3-1b-pt and -it share this architecture: MQA (1 KV head), 5 local : 1 global layers.
    "google/gemma-3-1b": dict(
        architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", vocab_size=262144, hidden_size=1152,
        intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, max_position_embeddings=32768,
        query_pre_attn_scalar=256, rope_theta=1000000.0, rope_local_base_freq=10000.0, rope_scaling=None,
        sliding_window=512, sliding_window_pattern=6, pad_token_id=0, initializer_range=0.02,
    ),
}


def architecture(hf_path: str) -> ModelConfig:
    return config_from_hf(HF_CONFIGS[hf_path], source=f"built-in {hf_path}")


def checkpoint_architecture(pretrained_checkpoint: str | None) -> ModelConfig | None:
    """The architecture of an HF folder (its config.json) or of a Megatron checkpoint (its run_config.yaml);
    None for anything else (a minibridge checkpoint holds the recipe's model)."""
    if pretrained_checkpoint and (Path(pretrained_checkpoint) / "config.json").is_file():
        path = Path(pretrained_checkpoint) / "config.json"
        return config_from_hf(read_config_json(pretrained_checkpoint), source=str(path))
    if pretrained_checkpoint:
        from minibridge.bridge.megatron_config import megatron_architecture

        return megatron_architecture(pretrained_checkpoint)
    return None


def checkpoint_tokenizer(pretrained_checkpoint: str | None) -> str | None:
    """The tokenizer that comes with a pretrained checkpoint: an HF folder's own, a Megatron checkpoint's
    tokenizer/ folder."""
    if not pretrained_checkpoint or checkpoint_architecture(pretrained_checkpoint) is None:
        return None
    if (Path(pretrained_checkpoint) / "config.json").is_file():
        return pretrained_checkpoint
    from minibridge.bridge.megatron_config import megatron_tokenizer

    found = megatron_tokenizer(pretrained_checkpoint)
    return str(found) if found else None


def finetune_architecture(builtin: ModelConfig, pretrained_checkpoint: str | None, recipe: str) -> ModelConfig:
    """A finetune recipe's architecture: the checkpoint's when it is an HF folder (rope details such as
    3 vs 3.1 scaling come from there), after checking it is the model the recipe's layout was made for."""
    found = checkpoint_architecture(pretrained_checkpoint)
    if found is None:
        return builtin
    shape = ("family", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
    have, want = ({k: getattr(model, k) for k in shape} for model in (found, builtin))
    if have != want:
        raise ConfigError(f"{recipe}: pretrained checkpoint {pretrained_checkpoint} is {have}, but this recipe is for "
                          f"{want}; pick the recipe of that model size")
    return found


def tokenizer_vocab_size(folder: str) -> int:
    """Number of token ids of an HF tokenizer folder (tokenizer.json: vocabulary + added tokens)."""
    path = inside(folder, "tokenizer.json")
    if not path.is_file():
        raise ConfigError(f"tokenizer={folder}: no tokenizer.json there; expected a Hugging Face tokenizer folder")
    data = parse_json(path.read_bytes(), str(path))
    try:  # a BPE dict or a Unigram list, then the added tokens
        vocab = data["model"]["vocab"]
        ids = [*(vocab.values() if isinstance(vocab, dict) else range(len(vocab))),
               *(t["id"] for t in data.get("added_tokens") or [])]
    except (KeyError, TypeError, AttributeError):
        ids = []
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ConfigError(f"{path}: expected token ids (integers >= 0) under model.vocab (BPE dict or Unigram list) "
                          f"and added_tokens")
    return max(ids) + 1


def debug_vocabulary(base: ModelConfig, s: dict) -> ModelConfig:
    """A debug recipe's architecture: `base` with the vocabulary of its `vocab_size`, else of its `tokenizer` (an HF
    folder), else its own."""
    vocab = s["vocab_size"] or (tokenizer_vocab_size(s["tokenizer"]) if s["tokenizer"] else base.vocab_size)
    return dataclasses.replace(base, vocab_size=vocab)


def checkpoint_or(base: ModelConfig, other_recipe: str, s: dict) -> ModelConfig:
    """A debug fine-tuning recipe's architecture: the pretrained checkpoint's when it is an HF folder or a Megatron
    checkpoint of `base`'s family (any size; another family: use `other_recipe`), else `base`."""
    arch = checkpoint_architecture(s["pretrained_checkpoint"]) or base
    if arch.family != base.family:
        raise ConfigError(f"{s['recipe.name']}: {s['pretrained_checkpoint']} is a {arch.family} model; use "
                          f"{other_recipe}")
    return arch
