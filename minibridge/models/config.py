"""The model configuration shared by every family.

One flat dataclass rather than one class per family: the families differ in a handful of switches
(norm flavour, activation, q/k norms, sliding windows), and a flat config keeps recipes and overrides
simple (`model.num_layers=4`). Translation from and to HF `config.json` lives in `minibridge.bridge`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from ..errors import ConfigError, reject_unknown_keys
from .registry import family

FULL = "full_attention"
SLIDING = "sliding_attention"
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


@dataclass
class RopeConfig:
    """Rotary embedding of one layer type.

    `rope_type` is "default", "linear" (positions divided by `factor`) or "llama3" (frequency-dependent
    scaling of Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth ramp between).
    """

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in ("default", "linear", "llama3"):
            raise ConfigError(f"rope_type {self.rope_type!r} is not supported; expected default, linear or llama3")


@dataclass
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    rope: RopeConfig = field(default_factory=lambda: RopeConfig(theta=500000.0))
    # Gemma 3 only: RoPE of the sliding-window layers (theta 10k, never scaled).
    rope_local: RopeConfig | None = None
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    # Gemma 3: attention scale is query_pre_attn_scalar ** -0.5 (not head_dim ** -0.5 on 27B).
    query_pre_attn_scalar: float | None = None
    max_position_embeddings: int = 8192
    init_std: float = 0.02
    # transformers builds nn.Embedding(padding_idx=pad_token_id): that row gets no gradient from the
    # input side (Gemma's <pad> is 0; Llama 3 has none). Kept for gradient parity.
    pad_token_id: int | None = None

    def __post_init__(self):
        family(self.family)  # registered by its model module (models/registry.py)
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported; expected one of {ACTIVATIONS}")
        if not self.layer_types:
            self.layer_types = (FULL,) * self.num_layers
        self.layer_types = tuple(self.layer_types)
        if len(self.layer_types) != self.num_layers:
            raise ConfigError(f"layer_types has {len(self.layer_types)} entries but num_layers is {self.num_layers}")
        for kind in self.layer_types:
            if kind not in (FULL, SLIDING):
                raise ConfigError(f"layer type {kind!r} is not supported; expected {FULL!r} or {SLIDING!r}")
        if SLIDING in self.layer_types and not self.sliding_window:
            raise ConfigError("sliding_attention layers need a positive sliding_window")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def window_of(self, layer: int) -> int | None:
        return self.sliding_window if self.layer_types[layer] == SLIDING else None

    def replace(self, **changes) -> "ModelConfig":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict, where: str = "model.config.") -> "ModelConfig":
        """The inverse of dataclasses.asdict, as run.json and configuration files store it; an unknown
        key is a ConfigError naming `where + key`."""
        data = dict(data)
        reject_unknown_keys(where, data, [f.name for f in fields(cls)])
        for key in ("rope", "rope_local"):
            if isinstance(data.get(key), dict):
                reject_unknown_keys(f"{where}{key}.", data[key], [f.name for f in fields(RopeConfig)])
                data[key] = RopeConfig(**data[key])
        data["layer_types"] = tuple(data.get("layer_types") or ())
        return cls(**data)


def layer_pattern(layer_types: tuple[str, ...]) -> int | None:
    """The Gemma `sliding_window_pattern` p that generated `layer_types` (layer i global iff
    (i + 1) % p == 0), 0 for all-global, None when the types follow no such pattern."""
    if all(kind == FULL for kind in layer_types):
        return 0
    for p in range(2, len(layer_types) + 2):
        if tuple(layer_types) == pattern_layer_types(p, len(layer_types)):
            return p
    return None


def pattern_layer_types(pattern: int, num_layers: int) -> tuple[str, ...]:
    if pattern == 0:
        return (FULL,) * num_layers
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers))
