"""Megatron-Core `torch_dist` checkpoints as a source of minibridge parameters (checkpoint/megatron.py
reads the folder safely; megatron_names.py says where each parameter sits).

`MegatronWeights(folder, config).tensor(name)` returns one minibridge parameter, full size, reading only
the chunk of its layer: DCP reads the overlap of a block placed at offset (i, 0, ...) of the stacked key,
so memory stays bounded by one layer's slice (a 405B stacked linear_qkv is ~76 GB whole). The layer slice
last read is kept, so q, k and v (gate and up) cost one read.

The architecture comes from Megatron Bridge's run_config.yaml (`model:` section, the provider's fields),
or, for Megatron-LM runs that have none, from the HF folder given with the checkpoint.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from ..checkpoint import BlockLoadPlanner, ShardedBlock
from ..checkpoint.folder import RUN_CONFIG_FILE
from ..checkpoint.megatron import MegatronReader
from ..errors import ConfigError, MissingTensorError, UnsupportedModelError
from ..models import ModelConfig, whole_model_shapes
from ..models.config import FULL, SLIDING, RopeConfig
from .megatron_names import ALIASES, LAYER_PREFIX, TABLES

# provider classes (run_config.yaml model._target_) -> family; anything else is refused by name
PROVIDERS = {"GPTModelProvider": "llama", "Gemma3ModelProvider": "gemma3"}
PROVIDERS.update({f"Llama{v}ModelProvider{s}": "llama" for v in ("3", "31", "32") for s in ("", "8B", "70B", "405B",
                                                                                             "1B", "3B")})


def _rows(family: str):
    return [(re.compile("^" + re.escape(local).replace(r"\{i\}", r"(?P<i>\d+)") + "$"), key, kind)
            for local, key, kind in TABLES[family]]


class MegatronWeights:
    def __init__(self, folder: str | Path, config: ModelConfig):
        self.folder, self.config = Path(folder), config
        self.reader = MegatronReader(str(folder))
        self.stored = self.reader.read_metadata().state_dict_metadata
        self.rows = _rows(config.family)
        self._slice: tuple | None = None  # (key, layer, tensor) last read

    def where(self, name: str) -> tuple[str, str, int | None]:
        """(stored key, kind, layer index within a stacked key or None) of a minibridge parameter."""
        for pattern, key, kind in self.rows:
            m = pattern.match(name)
            if m is None:
                continue
            i = m.groupdict().get("i")
            if i is None:
                return key, kind, None
            suffix = key[len(LAYER_PREFIX):]
            for candidate in (suffix, ALIASES.get(suffix)):
                if candidate is None:
                    continue
                if LAYER_PREFIX + candidate in self.stored:
                    return LAYER_PREFIX + candidate, kind, int(i)
                if f"{LAYER_PREFIX}{i}.{candidate}" in self.stored:
                    return f"{LAYER_PREFIX}{i}.{candidate}", kind, None
            return key, kind, int(i)
        raise KeyError(f"parameter {name!r} has no Megatron name in the {self.config.family} table")

    def check(self, names) -> None:
        """Every parameter's key is stored, or one line naming what is missing and what was found."""
        missing = sorted({self.where(n)[0] for n in names} - set(self.stored))
        if missing:
            found = sorted(k for k in self.stored if "_extra_state" not in k and not k.startswith("common_state"))
            raise MissingTensorError(f"{self.folder}: Megatron checkpoint lacks {missing[:4]}"
                                     f"{' ...' if len(missing) > 4 else ''}; it holds {found[:6]}"
                                     f"{' ...' if len(found) > 6 else ''} (another model family or layout?)")

    def _read(self, key: str, layer: int | None, rows: int | None = None) -> torch.Tensor:
        if self._slice is not None and self._slice[:2] == (key, layer):
            return self._slice[2]
        meta = self.stored[key]
        size = tuple(meta.size)
        shape = size[1:] if layer is not None else ((min(rows, size[0]),) + size[1:] if rows else size)
        local = torch.empty((1, *shape) if layer is not None else shape, dtype=meta.properties.dtype)
        offsets = (layer,) + (0,) * len(shape) if layer is not None else (0,) * len(shape)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is .*")
            dcp.load({key: ShardedBlock(local, offsets, size)}, storage_reader=self.reader,
                     planner=BlockLoadPlanner(), no_dist=True)
        out = local[0] if layer is not None else local
        if layer is not None:
            self._slice = (key, layer, out)
        return out

    def tensor(self, name: str) -> torch.Tensor:
        key, kind, layer = self.where(name)
        c = self.config
        if kind == "vocab":
            return self._read(key, layer, rows=c.vocab_size).clone()
        value = self._read(key, layer)
        if kind in ("q", "k", "v"):  # per KV group: [q rows of its heads; k; v]
            per = c.num_heads // c.num_kv_heads
            grouped = value.reshape(c.num_kv_heads, (per + 2) * c.head_dim, *value.shape[1:])
            start, stop = {"q": (0, per), "k": (per, per + 1), "v": (per + 1, per + 2)}[kind]
            value = grouped[:, start * c.head_dim: stop * c.head_dim].reshape(-1, *value.shape[1:])
        elif kind in ("gate", "up"):
            half = value.shape[0] // 2
            value = value[:half] if kind == "gate" else value[half:]
        return value.clone()


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
    provider = target.rsplit(".", 1)[-1]
    family = PROVIDERS.get(provider)
    if model.get("num_moe_experts"):
        family = None
    if family is None:
        raise UnsupportedModelError(f"{path}: model {target or '(no _target_)'}"
                                    f"{' with ' + str(model['num_moe_experts']) + ' experts' if model.get('num_moe_experts') else ''}"
                                    f" is not supported; minibridge reads Llama 3 and Gemma 3 text models")
    heads = int(model["num_attention_heads"])
    sizes = dict(vocab_size=int(model["vocab_size"]), hidden_size=int(model["hidden_size"]),
                 intermediate_size=int(model["ffn_hidden_size"]), num_layers=int(model["num_layers"]),
                 num_heads=heads, num_kv_heads=int(model.get("num_query_groups") or heads),
                 head_dim=int(model.get("kv_channels") or int(model["hidden_size"]) // heads),
                 rms_norm_eps=float(model.get("layernorm_epsilon", 1e-5)),
                 tie_word_embeddings=bool(model.get("share_embeddings_and_output_weights", True)),
                 attention_bias=bool(model.get("add_qkv_bias", False)), mlp_bias=bool(model.get("add_bias_linear", False)),
                 max_position_embeddings=int(model.get("seq_length") or 8192))
    if family == "llama":
        rope = RopeConfig(theta=float(model.get("rotary_base", 10000.0)))
        if model.get("rope_scaling"):  # Megatron-Core's apply_rope_scaling: Llama 3.1's constants
            rope = RopeConfig(theta=rope.theta, rope_type="llama3", factor=float(model.get("rope_scaling_factor", 8.0)),
                              low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
        return ModelConfig(family=family, rope=rope, **sizes)
    local, theta = model.get("rotary_base", (10_000, 1_000_000))
    pattern = model.get("interleaved_attn_pattern") or (5, 1)
    every = int(pattern[0]) + int(pattern[1])
    factor = float(model.get("rope_scaling_factor") or 1.0)
    rope = RopeConfig(theta=float(theta), rope_type="linear", factor=factor) if factor != 1.0 else RopeConfig(float(theta))
    scale = model.get("softmax_scale")
    return ModelConfig(family=family, hidden_act="gelu_pytorch_tanh", rope=rope, rope_local=RopeConfig(float(local)),
                       layer_types=tuple(SLIDING if (i + 1) % every else FULL for i in range(sizes["num_layers"])),
                       sliding_window=int(model["window_size"]) if model.get("window_size") else None,
                       query_pre_attn_scalar=round(float(scale) ** -2, 6) if scale else sizes["head_dim"], **sizes)


def megatron_parameters(folder, config: ModelConfig):
    """(minibridge name, shape) of every parameter, checked to be stored; and the weights' source."""
    weights = MegatronWeights(folder, config)
    shapes = whole_model_shapes(config)
    weights.check(shapes)
    return shapes, weights
