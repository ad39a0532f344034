"""Single-device model definitions. Nothing here imports torch.distributed.

Each family module (llama.py, gemma3.py, ...) registers itself in `registry.FAMILIES` when imported;
every module of this package is imported here, so a new family file is found without other edits.
"""

import importlib
import pkgutil

from .build import Stage, build_on_meta, parameter_count, whole_model_shapes
from .causal_lm import CausalLM
from .chunks import ModelChunks
from .config import FULL, SLIDING, ModelConfig, RopeConfig
from .gemma3 import Gemma3ForCausalLM
from .kv_cache import KVCache
from .llama import LlamaForCausalLM
from .registry import FAMILIES, Family, model_class

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CausalLM", "FAMILIES", "FULL", "Family", "Gemma3ForCausalLM", "KVCache", "LlamaForCausalLM", "ModelChunks",
    "ModelConfig", "RopeConfig", "SLIDING", "Stage", "build_on_meta", "model_class", "parameter_count",
    "whole_model_shapes",
]
