"""The model of a Megatron checkpoint <-> ModelConfig, both ways: Megatron Bridge's run_config.yaml `model:`
section holds its provider's fields (`_target_` the provider class); `config_from_run_config` reads it,
`run_config_model` writes the section Megatron Bridge's `load_model_config` instantiates.

Written, as Megatron Bridge's own LlamaBridge / Gemma3Bridge set them from an HF config: the sizes
(`FIELDS`), the Llama family on GPTModelProvider with its Llama settings (`LLAMA`), Gemma 3 on
Gemma3ModelProvider (its defaults are Gemma's; window, rotary bases, softmax scale, pattern set here).
Runtime switches (fusions, attention backend, the layer spec) are left to the provider's defaults, so
the machine that loads it picks them (TE spec with Transformer Engine, the local spec without).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint.names import MEGATRON_MARKER, RUN_CONFIG_FILE, iteration_folder
from ..errors import ConfigError, UnsupportedModelError
from ..models import ModelConfig
from .hf_folder import tokenizer_files
from ..models.config import FULL, SLIDING, RopeConfig, pattern_layer_types

TARGETS = {"llama": "megatron.bridge.models.gpt_provider.GPTModelProvider",
           "gemma3": "megatron.bridge.models.gemma.gemma3_provider.Gemma3ModelProvider"}
# provider classes (run_config.yaml model._target_) -> family; anything else is refused by name
PROVIDERS = {target.rsplit(".", 1)[-1]: family for family, target in TARGETS.items()}
PROVIDERS.update({f"Llama{v}ModelProvider{s}": "llama" for v in ("3", "31", "32") for s in ("", "8B", "70B", "405B",
                                                                                             "1B", "3B")})
# (ModelConfig field, provider field, type): Megatron Bridge's CONFIG_MAPPING for the fields we have
FIELDS = [
    ("vocab_size", "vocab_size", int), ("hidden_size", "hidden_size", int),
    ("intermediate_size", "ffn_hidden_size", int), ("num_layers", "num_layers", int),
    ("num_heads", "num_attention_heads", int), ("num_kv_heads", "num_query_groups", int),
    ("head_dim", "kv_channels", int), ("rms_norm_eps", "layernorm_epsilon", float),
    ("tie_word_embeddings", "share_embeddings_and_output_weights", bool), ("attention_bias", "add_qkv_bias", bool),
    ("mlp_bias", "add_bias_linear", bool), ("max_position_embeddings", "seq_length", int),
    ("init_std", "init_method_std", float),
]
# provider defaults where a run_config.yaml leaves a field out (GPTModelProvider / TransformerConfig)
DEFAULTS = {"layernorm_epsilon": 1e-5, "share_embeddings_and_output_weights": True, "add_qkv_bias": False,
            "add_bias_linear": False, "seq_length": 8192, "init_method_std": 0.02}
# LlamaBridge.provider_bridge's settings on GPTModelProvider (its fusions left out: runtime choices)
LLAMA = {"normalization": "RMSNorm", "gated_linear_unit": True, "position_embedding_type": "rope",
         "rotary_percent": 1.0, "hidden_dropout": 0.0, "attention_dropout": 0.0,
         "activation_func": {"_target_": "torch.nn.functional.silu", "_call_": False}}
# Megatron-Core's apply_rope_scaling constants (Llama 3.1's): the only llama3 scaling it can express
LLAMA3_SCALING = dict(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


def megatron_architecture(path: str | Path) -> ModelConfig | None:
    """The model of a Megatron checkpoint (a save folder or an iteration folder) with a run_config.yaml;
    None for any other folder (an HF folder, ours)."""
    try:
        folder = iteration_folder(path)
    except (FileNotFoundError, ValueError):
        return None
    if not (folder / MEGATRON_MARKER).is_file():
        return None
    return config_from_run_config(folder)


def megatron_tokenizer(path: str | Path) -> Path | None:
    """The `tokenizer/` folder Megatron Bridge saves beside a checkpoint's weights, when it holds one."""
    folder = iteration_folder(path) / "tokenizer"
    return folder if folder.is_dir() and tokenizer_files(folder) else None


def config_from_run_config(folder: str | Path) -> ModelConfig:
    """The model of a Megatron Bridge checkpoint, from its run_config.yaml's `model:` section."""
    import yaml

    path = Path(folder) / RUN_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: a Megatron checkpoint without {RUN_CONFIG_FILE} (a Megatron-LM run?): pass "
                          f"--hf-model DIR, the HF folder of its architecture")
    try:
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not readable YAML ({str(err).splitlines()[0]})") from None
    target = str(model.get("_target_", ""))
    family = None if model.get("num_moe_experts") else PROVIDERS.get(target.rsplit(".", 1)[-1])
    if family is None:
        experts = f" with {model['num_moe_experts']} experts" if model.get("num_moe_experts") else ""
        raise UnsupportedModelError(f"{path}: model {target or '(no _target_)'}{experts} is not supported; "
                                    f"minibridge reads Llama 3 and Gemma 3 text models")
    try:
        return _config(family, model)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: model section lacks or mis-states {err} for a {family} model") from None


def _config(family: str, model: dict) -> ModelConfig:
    values = {theirs: model.get(theirs) for _, theirs, _ in FIELDS}
    values.update({k: v for k, v in DEFAULTS.items() if values[k] is None})
    values["num_query_groups"] = values["num_query_groups"] or model["num_attention_heads"]
    values["kv_channels"] = values["kv_channels"] or int(model["hidden_size"]) // int(model["num_attention_heads"])
    sizes = {ours: kind(values[theirs]) for ours, theirs, kind in FIELDS}
    if family == "llama":
        rope = RopeConfig(theta=float(model.get("rotary_base", 10000.0)))
        if model.get("rope_scaling"):
            rope = RopeConfig(theta=rope.theta, rope_type="llama3", factor=float(model.get("rope_scaling_factor", 8.0)),
                              **LLAMA3_SCALING)
        return ModelConfig(family=family, rope=rope, **sizes)
    local, theta = model.get("rotary_base", (10_000, 1_000_000))
    pattern = model.get("interleaved_attn_pattern") or (5, 1)
    every = int(pattern[0]) + int(pattern[1])
    factor = float(model.get("rope_scaling_factor") or 1.0)
    rope = RopeConfig(theta=float(theta), rope_type="linear", factor=factor) if factor != 1.0 else RopeConfig(float(theta))
    scale = model.get("softmax_scale")
    return ModelConfig(family=family, hidden_act="gelu_pytorch_tanh", rope=rope, rope_local=RopeConfig(float(local)),
                       layer_types=pattern_layer_types(every, sizes["num_layers"]),
                       sliding_window=int(model["window_size"]) if model.get("window_size") else None,
                       query_pre_attn_scalar=round(float(scale) ** -2, 6) if scale else sizes["head_dim"], **sizes)


def _dtype_entry(dtype: torch.dtype) -> dict:
    return {"_target_": str(dtype), "_call_": False}  # "torch.bfloat16", as Megatron Bridge serializes it


def run_config_model(config: ModelConfig, dtype: torch.dtype, divisible_by: int | None = None,
                     hf_model_id: str | None = None) -> dict:
    """The `model:` section of run_config.yaml for `config` stored in `dtype`; `divisible_by`: the stored
    vocabulary is padded to a multiple of it (Megatron's make_vocab_size_divisible_by, should_pad_vocab)."""
    model = {"_target_": TARGETS[config.family]}
    model.update({theirs: getattr(config, ours) for ours, theirs, _ in FIELDS})
    model.update(params_dtype=_dtype_entry(dtype), bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
                 make_vocab_size_divisible_by=divisible_by or 1, should_pad_vocab=bool(divisible_by))
    if hf_model_id is not None:
        model["hf_model_id"] = hf_model_id
    if config.family == "llama":
        model.update(LLAMA, rotary_base=config.rope.theta, **_llama_scaling(config.rope))
    else:
        model.update(_gemma3(config), autocast_dtype=_dtype_entry(dtype))
    return model


def _llama_scaling(rope: RopeConfig) -> dict:
    if rope.rope_type == "default":
        return {"rope_scaling": False}
    expressible = rope.rope_type == "llama3" and all(getattr(rope, k) == v for k, v in LLAMA3_SCALING.items())
    if not expressible:
        raise UnsupportedModelError(f"rope {rope}: Megatron-Core's Llama RoPE scaling is llama3 with "
                                    f"{LLAMA3_SCALING} only; this model's cannot be written as a Megatron checkpoint")
    return {"rope_scaling": True, "rope_scaling_factor": rope.factor}


def _gemma3(config: ModelConfig) -> dict:
    """Gemma3ModelProvider's fields that Gemma3Bridge sets; the layer pattern must be (k local, 1 global)."""
    every = config.layer_types.index(FULL) + 1 if FULL in config.layer_types else 0
    pattern = pattern_layer_types(every, config.num_layers) if every else ()
    if pattern != config.layer_types:
        raise UnsupportedModelError(f"layer_types {config.layer_types}: Megatron's Gemma 3 interleaves k sliding "
                                    f"layers with 1 global one (interleaved_attn_pattern); this pattern is not that")
    rope, local = config.rope, config.rope_local or RopeConfig(10_000.0)
    if rope.rope_type not in ("default", "linear") or local.rope_type != "default":
        raise UnsupportedModelError(f"rope {rope} / local {local}: Megatron's Gemma 3 scales the global RoPE "
                                    f"linearly and the local one not at all")
    return {"rotary_base": [local.theta, rope.theta], "window_size": config.sliding_window,
            "interleaved_attn_pattern": [every - 1, 1], "softmax_scale": config.attention_scale,
            "rope_scaling_factor": rope.factor}
