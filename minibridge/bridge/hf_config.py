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

from pathlib import Path

import torch

from ..errors import ConfigError, UnsupportedModelError
from ..models.config import ACTIVATIONS, FULL, SLIDING, ModelConfig, RopeConfig
from . import families  # noqa: F401  (registers every family's HF description)
from .family import ARCHITECTURES, MODEL_TYPES, Architecture, HFFamily, Key, hf_family
from .hf_folder import inside
from .json_checks import MAX_INT, REQUIRED, Fields, parse_json


# The keys every decoder family shares that are one ModelConfig field each (read and written by the
# same table); a family adds its own (bridge/families/<name>.py).
COMMON_KEYS = (
    Key("rms_norm_eps", "rms_norm_eps", "number"),
    Key("attention_bias", "attention_bias", "bool"),
    Key("max_position_embeddings", "max_position_embeddings", "int"),
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


def _read_key(text: Fields, key: Key, default):
    if key.kind == "int":
        return text.int(key.hf, default)
    if key.kind == "number":
        return float(text.number(key.hf, default))
    if key.kind == "bool":
        return text.bool(key.hf, default)
    return text.string(key.hf, default, ACTIVATIONS)  # "activation"


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """The ModelConfig of an HF config.json (as a dict; `source` names the file in every error)."""
    top = Fields(hf, source)
    arch = architecture_of(hf, source)
    quantized = hf.get("quantization_config") or (hf.get("text_config") or {}).get("quantization_config")
    if quantized:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else "?"
        raise UnsupportedModelError(
            f"{source}: quantization_config (quant_method {method!r}): a quantized checkpoint's weights are stored "
            f"scaled (FP8 or integer blocks beside *_scale tensors), and minibridge loads only unquantized float "
            f"weights; use the bf16 release of the model, or dequantize it first (transformers' from_pretrained, "
            f"then save_pretrained)")
    family: HFFamily = hf_family(arch.family)
    text = top
    if arch.multimodal:
        text = top.object("text_config") or Fields({}, source, "text_config.")
    defaults = family.defaults
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
    values = dict(
        family=arch.family, vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, tie_word_embeddings=tie, pad_token_id=pad,
        rope=_rope_from(rope.get(FULL), text.number("rope_theta", defaults["rope_theta"])),
        init_std=float(text.number("initializer_range", 0.02, positive=False)),
    )
    for key in COMMON_KEYS + family.keys:
        values[key.field] = _read_key(text, key, defaults[key.hf])
    if family.read is not None:
        values.update(family.read(text, values, defaults, _rope_from, rope))
    return _model_config(source, **values)


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
    family = hf_family(config.family)
    arch = next(a for a in family.architectures if not a.multimodal)
    out = dict(
        architectures=[arch.name], model_type=arch.model_type,
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
        rope_theta=config.rope.theta, rope_scaling=_rope_to_hf(config.rope),
        tie_word_embeddings=config.tie_word_embeddings, initializer_range=config.init_std,
        pad_token_id=config.pad_token_id, torch_dtype=dtype,
    )
    out.update({key.hf: getattr(config, key.field) for key in COMMON_KEYS + family.keys})
    if family.write is not None:
        out.update(family.write(config))
    return out


# dtype names a user may give (transformers' torch_dtype spellings and their short forms); "auto": the
# checkpoint's own dtype (None)
DTYPE_NAMES = {"auto": None, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
               "half": torch.float16}


def parse_dtype(name, label: str = "dtype=") -> torch.dtype | None:
    """torch.dtype of a name in DTYPE_NAMES (None and "auto": keep the checkpoint's; a torch.dtype as it
    is); anything else is a ConfigError starting with `label` and the name (`dtype='int8': ...`)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if str(name) not in DTYPE_NAMES:
        raise ConfigError(f"{label}{name!r}: expected one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[str(name)]
