"""Weight names between minibridge and HF: each family's table (bridge/families/), read both ways.

Each row pairs a minibridge parameter name with its HF name; `{i}` stands for the layer index. HF
names are relative to the architecture's text prefix (`model.`, `model.language_model.`, ...), except
the output layer, which sits under the head prefix. Rows whose parameter the model does not have
(biases, an untied output layer) simply do not apply. No name handling outside this package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .family import Architecture, hf_family

HEAD = "head:"  # marks rows whose HF name hangs off the head prefix rather than the text prefix

# The rows every decoder family shares; a family's table (bridge/families/<name>.py) adds its norms.
ATTENTION_ROWS = [(f"attn.{p}_proj.{t}", f"self_attn.{p}_proj.{t}") for p in "qkvo" for t in ("weight", "bias")]
MLP_ROWS = [(f"mlp.{p}_proj.{t}", f"mlp.{p}_proj.{t}") for p in ("gate", "up", "down") for t in ("weight", "bias")]
DECODER_ENDS = [
    ("embed_tokens.weight", "embed_tokens.weight"),
    ("norm.weight", "norm.weight"),
    ("lm_head.weight", HEAD + "lm_head.weight"),
]


def layer_rows(pairs) -> list[tuple[str, str]]:
    """Per-layer rows: `{i}` in both names stands for the layer index."""
    return [(f"layers.{{i}}.{a}", f"layers.{{i}}.{b}") for a, b in pairs]


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
        self.rows = [(_compile(local), _compile(hf.removeprefix(HEAD)), local, hf) for local, hf in hf_family(self.family).weights]

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

    def hf_module_name(self, module: str) -> str:
        """'layers.0.attn.q_proj' -> 'model.layers.0.self_attn.q_proj' (modules named by their weight)."""
        return self.to_hf(f"{module}.weight").removesuffix(".weight")

    def local_module_name(self, hf_module: str) -> str | None:
        local = self.to_local(f"{hf_module}.weight")
        return None if local is None else local.removesuffix(".weight")

    def is_text(self, hf_name: str) -> bool:
        return hf_name.startswith((self.text_prefix, self.head_prefix + "lm_head."))  # lm_head.bias too: unexpected

    @classmethod
    def detect(cls, arch: Architecture, hf_names) -> "WeightMapping":
        """Pick the prefix spelling the checkpoint uses (multimodal Gemma has two)."""
        names = list(hf_names)
        for text, head in zip(arch.text_prefixes, arch.head_prefixes):
            if any(n.startswith(text) for n in names):
                return cls(arch.family, text, head)
        return cls(arch.family, arch.text_prefixes[0], arch.head_prefixes[0])
