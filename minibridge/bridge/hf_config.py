"""HF `config.json` <-> `ModelConfig`.

Accepts both spellings transformers has used: 4.x (`rope_theta`, `rope_scaling`, `rope_local_base_freq`,
`sliding_window_pattern`) and 5.x (`rope_parameters`, per layer type for Gemma, and `layer_types`), and
the nested `text_config` of multimodal Gemma 3. Missing keys take transformers' class defaults, which
is what `from_pretrained` does (the gemma-3-4b config, for example, omits most text sizes), except the
sizes of a text-only config, which must be stated. Every value is type- and range-checked first
(json_checks.Fields): a bad one is a ConfigError naming the file and the key path, an unsupported
feature an UnsupportedModelError.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, UnsupportedModelError
from ..models.config import ACTIVATIONS, FULL, SLIDING, ModelConfig, RopeConfig
from .hf_folder import inside
from .json_checks import MAX_INT, REQUIRED, Fields, parse_json


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
# The sizes a text-only config.json must state (what each means, for the error message).
SIZES = dict(
    vocab_size="the vocabulary size", hidden_size="the model's width", intermediate_size="the MLP's width",
    num_hidden_layers="the number of layers", num_attention_heads="the number of attention heads",
)
ROPE_TYPES = ("default", "linear", "llama3")
MAXIMA = {"num_hidden_layers": 100_000}  # a list entry per layer is built from it (the largest has 126)


def read_config_json(folder: str | Path) -> dict:
    path = inside(folder, "config.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a Hugging Face model folder")
    return parse_json(path.read_bytes(), str(path))


def architecture_of(hf: dict, source: str = "config.json") -> Architecture:
    top = Fields(hf, source)
    names = top.strings("architectures", [], null="default")
    model_type = top.string("model_type", None, null="default")
    if not names and model_type in MODEL_TYPES:
        names = [MODEL_TYPES[model_type]]
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    found = names or [model_type]
    raise UnsupportedModelError(
        f"{source}: architecture {found} is not supported; supported architectures: {sorted(ARCHITECTURES)}"
    )


def _rope_from(params: Fields | None, theta: float) -> RopeConfig:
    if params is None:
        return RopeConfig(theta=float(theta))
    kind = params.string("rope_type", None, ROPE_TYPES, null="default") or params.string(
        "type", "default", ROPE_TYPES, null="default")
    values = {k: float(params.number(k)) for k in ("factor", "low_freq_factor", "high_freq_factor") if k in params.obj}
    if "original_max_position_embeddings" in params.obj:
        values["original_max_position_embeddings"] = params.int("original_max_position_embeddings")
    rope = RopeConfig(theta=float(params.number("rope_theta", theta)), rope_type=kind, **values)
    if kind == "llama3" and rope.high_freq_factor <= rope.low_freq_factor:
        params.fail("high_freq_factor", rope.high_freq_factor, f"more than low_freq_factor={rope.low_freq_factor}")
    return rope


def _rope_params(text: Fields) -> dict[str, Fields | None]:
    """Per-layer-type rope parameters from either spelling (5.x `rope_parameters` or 4.x keys)."""
    params = text.object("rope_parameters")
    if params is not None and (FULL in params.obj or SLIDING in params.obj):
        return {FULL: params.object(FULL), SLIDING: params.object(SLIDING)}
    if params is not None and params.obj:
        return {FULL: params}
    return {FULL: text.object("rope_scaling")}


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """The ModelConfig of an HF config.json (as a dict; `source` names the file in every error)."""
    top = Fields(hf, source)
    arch = architecture_of(hf, source)
    text = top
    if arch.multimodal:
        text = top.object("text_config") or Fields({}, source, "text_config.")
    defaults = GEMMA3_DEFAULTS if arch.family == "gemma3" else LLAMA_DEFAULTS
    # A text-only config must state its sizes: transformers' defaults would describe another model,
    # and loading would fail later on a misleading shape. The multimodal text_config legitimately
    # relies on Gemma3TextConfig's defaults (the gemma-3-4b config omits most sizes).
    sizes = [text.int(key, defaults[key] if arch.multimodal else REQUIRED, what=what, maximum=MAXIMA.get(key, MAX_INT))
             for key, what in SIZES.items()]
    vocab, hidden, inter, layers, heads = sizes
    kv_heads = text.int("num_key_value_heads", defaults.get("num_key_value_heads", heads), null="default")
    if heads % kv_heads:
        text.fail("num_key_value_heads", kv_heads, f"a divisor of num_attention_heads={heads}")
    head_dim = text.int("head_dim", defaults.get("head_dim"), null="default")
    head_dim = head_dim or hidden // heads  # transformers' rule, rounding down when heads do not divide hidden
    if head_dim % 2:
        text.fail("head_dim", head_dim, "an even number (rotary embeddings turn pairs of channels)")
    pad = text.int("pad_token_id", defaults.get("pad_token_id"), minimum=-vocab, null="keep")
    if pad is not None and pad >= vocab:
        text.fail("pad_token_id", pad, f"a token id below vocab_size={vocab}, or null")
    tie = text.bool("tie_word_embeddings", defaults["tie_word_embeddings"])
    if arch.multimodal:
        tie = top.bool("tie_word_embeddings", tie, null="default")
    rope = _rope_params(text)
    common = dict(
        family=arch.family, vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=float(text.number("rms_norm_eps", defaults["rms_norm_eps"])),
        rope=_rope_from(rope.get(FULL), text.number("rope_theta", defaults["rope_theta"])),
        tie_word_embeddings=tie,
        attention_bias=text.bool("attention_bias", defaults["attention_bias"]),
        max_position_embeddings=text.int("max_position_embeddings", defaults["max_position_embeddings"]),
        init_std=float(text.number("initializer_range", 0.02, positive=False)),
        pad_token_id=pad,
    )
    if arch.family == "llama":
        activation = text.string("hidden_act", defaults["hidden_act"], ACTIVATIONS)
        mlp_bias = text.bool("mlp_bias", defaults["mlp_bias"])
        return _model_config(source, **common, hidden_act=activation, mlp_bias=mlp_bias)
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if text.obj.get(key) is not None:
            text.fail(key, text.obj[key], "null (Gemma 3 has no softcapping; it is not supported)",
                      UnsupportedModelError)
    if text.bool("use_bidirectional_attention", False, null="default"):
        text.fail("use_bidirectional_attention", True, "false (bidirectional attention is not supported)",
                  UnsupportedModelError)
    layer_types = text.strings("layer_types", None, choices=(FULL, SLIDING), null="default")
    if layer_types is None:
        pattern = text.int("sliding_window_pattern", defaults["sliding_window_pattern"])
        layer_types = [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
    elif len(layer_types) != layers:
        text.fail("layer_types", layer_types, f"{layers} entries, one per layer (num_hidden_layers={layers})")
    window = text.int("sliding_window", defaults["sliding_window"], null="keep")
    if window is None and SLIDING in layer_types:
        text.fail("sliding_window", window, "a positive integer (the config has sliding_attention layers)")
    activation = text.string("hidden_activation", defaults["hidden_activation"], ACTIVATIONS, null="keep")
    # Local layers: base `rope_local_base_freq`, never scaled (scaling applies to global layers only).
    local = _rope_from(rope.get(SLIDING), text.number("rope_local_base_freq", defaults["rope_local_base_freq"]))
    return _model_config(
        source,
        **common,
        hidden_act=activation or text.string("hidden_act", REQUIRED, ACTIVATIONS),
        rope_local=local,
        layer_types=tuple(layer_types),
        sliding_window=window,
        query_pre_attn_scalar=text.number("query_pre_attn_scalar", defaults["query_pre_attn_scalar"]),
    )


def _model_config(source: str, **fields) -> ModelConfig:
    """ModelConfig's own checks come after ours; should one still fire, it names the file too."""
    try:
        return ModelConfig(**fields)
    except ValueError as err:  # a ConfigError, or a plain ValueError in older models/config.py
        raise (type(err) if isinstance(err, ConfigError) else ConfigError)(f"{source}: {err}") from None


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
