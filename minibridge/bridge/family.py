"""The Hugging Face side of a model family, described once as data (minibridge/bridge/families/<name>.py):

- its HF architectures (names, model_type, where the text weights live),
- transformers' defaults for the config keys a config.json may omit,
- its config keys as one table read in both directions (HF key <-> ModelConfig field, and the kind of
  value), plus a `read` / `write` pair for the keys that are not one-to-one (Gemma's layer pattern),
- its weight-name table (minibridge name <-> HF name, `{i}` for the layer index).

hf_config.py and mappings.py are generic over these; the model side is models/<name>.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class Architecture:
    """One supported HF architecture: its family and where its text weights live."""

    name: str
    family: str
    model_type: str
    text_prefixes: tuple[str, ...] = ("model.",)  # the first is what export writes when there is no source
    head_prefixes: tuple[str, ...] = ("",)
    multimodal: bool = False


@dataclass(frozen=True)
class Key:
    """A config.json key that is one ModelConfig field: read with the json_checks getter of `kind`
    ("int", "number", "bool", "activation") and written back under the same name."""

    hf: str
    field: str
    kind: str


@dataclass(frozen=True)
class HFFamily:
    name: str  # the family of minibridge.models.registry
    architectures: tuple[Architecture, ...]  # the first is what an export without a source writes
    defaults: dict  # transformers' class defaults, by HF key
    keys: tuple[Key, ...] = ()  # family keys beyond the decoder's common ones (hf_config.COMMON_KEYS)
    weights: tuple[tuple[str, str], ...] = ()  # (minibridge name, HF name) rows
    read: Callable | None = None  # (text Fields, values read so far, defaults) -> more ModelConfig fields
    write: Callable | None = None  # ModelConfig -> more config.json keys


HF_FAMILIES: dict[str, HFFamily] = {}
ARCHITECTURES: dict[str, Architecture] = {}
MODEL_TYPES: dict[str, str] = {}  # model_type -> architecture name, for configs without `architectures`


def register(family: HFFamily) -> HFFamily:
    HF_FAMILIES[family.name] = family
    for arch in family.architectures:
        ARCHITECTURES[arch.name] = arch
        MODEL_TYPES[arch.model_type] = arch.name
    return family


def hf_family(name: str) -> HFFamily:
    try:
        return HF_FAMILIES[name]
    except KeyError:
        raise UnsupportedModelError(f"model family {name!r} has no Hugging Face description; expected one of "
                                    f"{sorted(HF_FAMILIES)}") from None
