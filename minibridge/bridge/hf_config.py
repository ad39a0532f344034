"""HF `config.json` <-> `ModelConfig`.

Accepts both spellings transformers has used: 4.x (`rope_theta`, `rope_scaling`, `rope_local_base_freq`,
`sliding_window_pattern`) and 5.x (`rope_parameters`, per layer type for Gemma, and `layer_types`), and
the nested `text_config` of multimodal Gemma 3. Missing keys take transformers' class defaults, which
is what `from_pretrained` does (the gemma-3-4b config, for example, omits most text sizes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnsupportedModelError
from ..models.config import FULL, SLIDING, ModelConfig, RopeConfig


@dataclass(frozen=True)
class Architecture:
    """One supported HF architecture: its family and where its text weights live."""

    name: str
    family: str
    model_type: str
    text_prefixes: tuple[str, ...] = ("model.",)  # the first is what export writes when there is no source
    head_prefixes: tuple[str, ...] = ("",)
    multimodal: bool = False


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("LlamaForCausalLM", "llama", "llama"),
        Architecture("Gemma3ForCausalLM", "gemma3", "gemma3_text"),
        # transformers 5.x writes `model.language_model.`; 4.x checkpoints use `language_model.model.`.
        Architecture(
            "Gemma3ForConditionalGeneration",
            "gemma3",
            "gemma3",
            text_prefixes=("model.language_model.", "language_model.model."),
            head_prefixes=("", "language_model."),
            multimodal=True,
        ),
    )
}
MODEL_TYPES = {"llama": "LlamaForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "gemma3": "Gemma3ForConditionalGeneration"}

# transformers' class defaults for the keys a config.json may omit.
LLAMA_DEFAULTS = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
    attention_bias=False, mlp_bias=False, rope_theta=10000.0,
)
GEMMA3_DEFAULTS = dict(
    vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072,
    rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False, query_pre_attn_scalar=256, pad_token_id=0,
    sliding_window=4096, sliding_window_pattern=6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
)




def read_config_json(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a Hugging Face model folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def architecture_of(hf: dict, source: str = "config.json") -> Architecture:
    names = list(hf.get("architectures") or [])
    if not names and hf.get("model_type") in MODEL_TYPES:
        names = [MODEL_TYPES[hf["model_type"]]]
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    found = names or [hf.get("model_type")]
    raise UnsupportedModelError(
        f"{source}: architecture {found} is not supported; supported architectures: {sorted(ARCHITECTURES)}"
    )


def _rope_from(params: dict | None, theta: float) -> RopeConfig:
    params = dict(params or {})
    kind = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", theta)
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return RopeConfig(theta=float(theta), rope_type=kind, **{k: params[k] for k in keys if k in params})


def _rope_params(hf: dict) -> dict:
    """Per-layer-type rope parameters from either spelling (5.x `rope_parameters` or 4.x keys)."""
    params = hf.get("rope_parameters")
    if params and (FULL in params or SLIDING in params):
        return params
    if params:
        return {FULL: params}
    return {FULL: hf.get("rope_scaling") or {}}


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    arch = architecture_of(hf, source)
    text = hf.get("text_config") or {} if arch.multimodal else hf
    defaults = GEMMA3_DEFAULTS if arch.family == "gemma3" else LLAMA_DEFAULTS
    get = lambda key: text.get(key, defaults.get(key))  # noqa: E731
    heads = get("num_attention_heads")
    layers = get("num_hidden_layers")
    tie = hf.get("tie_word_embeddings", text.get("tie_word_embeddings")) if arch.multimodal else None
    rope = _rope_params(text)
    common = dict(
        family=arch.family,
        vocab_size=get("vocab_size"),
        hidden_size=get("hidden_size"),
        intermediate_size=get("intermediate_size"),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads") or defaults.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim") or defaults.get("head_dim") or get("hidden_size") // heads,
        rms_norm_eps=get("rms_norm_eps"),
        rope=_rope_from(rope.get(FULL), get("rope_theta")),
        tie_word_embeddings=bool(tie if tie is not None else get("tie_word_embeddings")),
        attention_bias=bool(get("attention_bias")),
        max_position_embeddings=get("max_position_embeddings"),
        init_std=text.get("initializer_range", 0.02),
        pad_token_id=get("pad_token_id"),
    )
    if arch.family == "llama":
        return ModelConfig(**common, hidden_act=get("hidden_act"), mlp_bias=bool(get("mlp_bias")))
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if text.get(key) is not None:
            raise UnsupportedModelError(f"{source}: {key}={text[key]} is not supported (Gemma 3 has none)")
    if text.get("use_bidirectional_attention"):
        raise UnsupportedModelError(f"{source}: use_bidirectional_attention is not supported")
    pattern = get("sliding_window_pattern")
    layer_types = text.get("layer_types") or [
        SLIDING if (i + 1) % pattern else FULL for i in range(layers)
    ]
    # Local layers: base `rope_local_base_freq`, never scaled (scaling applies to global layers only).
    local = _rope_from(rope.get(SLIDING), get("rope_local_base_freq"))
    return ModelConfig(
        **common,
        hidden_act=get("hidden_activation") or get("hidden_act"),
        rope_local=local,
        layer_types=tuple(layer_types),
        sliding_window=get("sliding_window"),
        query_pre_attn_scalar=get("query_pre_attn_scalar"),
    )


def _rope_to_hf(rope: RopeConfig) -> dict | None:
    if rope.rope_type == "default":
        return None
    if rope.rope_type == "linear":
        return {"rope_type": "linear", "factor": rope.factor}
    return {
        "rope_type": "llama3",
        "factor": rope.factor,
        "low_freq_factor": rope.low_freq_factor,
        "high_freq_factor": rope.high_freq_factor,
        "original_max_position_embeddings": rope.original_max_position_embeddings,
    }


def config_to_hf(config: ModelConfig, dtype: str = "bfloat16") -> dict:
    """A text-only HF config.json (4.x key spelling, which transformers 4.x and 5.x both read)."""
    out = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope.theta,
        rope_scaling=_rope_to_hf(config.rope),
        tie_word_embeddings=config.tie_word_embeddings,
        attention_bias=config.attention_bias,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.init_std,
        pad_token_id=config.pad_token_id,
        torch_dtype=dtype,
    )
    if config.family == "llama":
        return dict(architectures=["LlamaForCausalLM"], model_type="llama", **out,
                    hidden_act=config.hidden_act, mlp_bias=config.mlp_bias)
    return dict(
        architectures=["Gemma3ForCausalLM"],
        model_type="gemma3_text",
        **out,
        hidden_activation=config.hidden_act,
        rope_local_base_freq=(config.rope_local or config.rope).theta,
        layer_types=list(config.layer_types),
        sliding_window=config.sliding_window,
        query_pre_attn_scalar=config.query_pre_attn_scalar or config.head_dim,
    )
