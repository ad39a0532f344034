"""One declarative name table per family, read in both directions (import and export).

Each row pairs a minibridge parameter name with its HF name; `{i}` stands for the layer index. HF
names are relative to the architecture's text prefix (`model.`, `model.language_model.`, ...), except
the output layer, which sits under the head prefix. Rows whose parameter the model does not have
(biases, an untied output layer) simply do not apply. No name handling outside this package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .hf_config import Architecture

HEAD = "head:"  # marks rows whose HF name hangs off the head prefix rather than the text prefix

_ATTN = [(f"attn.{p}_proj.{t}", f"self_attn.{p}_proj.{t}") for p in "qkvo" for t in ("weight", "bias")]
_MLP = [(f"mlp.{p}_proj.{t}", f"mlp.{p}_proj.{t}") for p in ("gate", "up", "down") for t in ("weight", "bias")]
_ENDS = [
    ("embed_tokens.weight", "embed_tokens.weight"),
    ("norm.weight", "norm.weight"),
    ("lm_head.weight", HEAD + "lm_head.weight"),
]


def _layer_rows(pairs):
    return [(f"layers.{{i}}.{a}", f"layers.{{i}}.{b}") for a, b in pairs]


TABLES: dict[str, list[tuple[str, str]]] = {
    "llama": _ENDS
    + _layer_rows(
        [("attn_norm.weight", "input_layernorm.weight"), ("mlp_norm.weight", "post_attention_layernorm.weight")]
        + _ATTN
        + _MLP
    ),
    "gemma3": _ENDS
    + _layer_rows(
        [
            ("attn_norm.weight", "input_layernorm.weight"),
            ("post_attn_norm.weight", "post_attention_layernorm.weight"),
            ("mlp_norm.weight", "pre_feedforward_layernorm.weight"),
            ("post_mlp_norm.weight", "post_feedforward_layernorm.weight"),
            ("attn.q_norm.weight", "self_attn.q_norm.weight"),
            ("attn.k_norm.weight", "self_attn.k_norm.weight"),
        ]
        + _ATTN
        + _MLP
    ),
}

# Tensors some checkpoints carry that are recomputed here, never loaded.
IGNORED_HF = re.compile(r".*rotary_emb\.inv_freq$")


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


@dataclass
class WeightMapping:
    """Name translation for one architecture and one prefix spelling."""

    family: str
    text_prefix: str = "model."
    head_prefix: str = ""

    def __post_init__(self):
        self.rows = [(_compile(local), _compile(hf.removeprefix(HEAD)), local, hf) for local, hf in TABLES[self.family]]

    def _hf_full(self, hf: str) -> str:
        return self.head_prefix + hf[len(HEAD) :] if hf.startswith(HEAD) else self.text_prefix + hf

    def to_hf(self, local_name: str) -> str:
        for local_re, _, _, hf in self.rows:
            m = local_re.match(local_name)
            if m:
                return self._hf_full(hf).replace("{i}", m.groupdict().get("i") or "")
        raise KeyError(f"parameter {local_name!r} has no HF name in the {self.family} mapping table")

    def to_local(self, hf_name: str) -> str | None:
        """The minibridge name, or None for a tensor outside the text model (a vision tower, say)."""
        for _, hf_re, local, hf in self.rows:
            prefix = self.head_prefix if hf.startswith(HEAD) else self.text_prefix
            if hf_name.startswith(prefix):
                m = hf_re.match(hf_name[len(prefix) :])
                if m:
                    return local.replace("{i}", m.groupdict().get("i") or "")
        return None

    def is_text(self, hf_name: str) -> bool:
        return hf_name.startswith(self.text_prefix) or hf_name == self.head_prefix + "lm_head.weight"

    @classmethod
    def detect(cls, arch: Architecture, hf_names) -> "WeightMapping":
        """Pick the prefix spelling the checkpoint uses (multimodal Gemma has two)."""
        names = list(hf_names)
        for text, head in zip(arch.text_prefixes, arch.head_prefixes):
            if any(n.startswith(text) for n in names):
                return cls(arch.family, text, head)
        return cls(arch.family, arch.text_prefixes[0], arch.head_prefixes[0])
