"""Single-device model definitions. Nothing here imports torch.distributed."""

from .causal_lm import CausalLM
from .config import FULL, SLIDING, ModelConfig, RopeConfig
from .gemma3 import Gemma3ForCausalLM
from .kv_cache import KVCache
from .llama import LlamaForCausalLM

MODEL_CLASSES = {"llama": LlamaForCausalLM, "gemma3": Gemma3ForCausalLM}


def model_class(config: ModelConfig) -> type[CausalLM]:
    return MODEL_CLASSES[config.family]


__all__ = ["CausalLM", "FULL", "SLIDING", "Gemma3ForCausalLM", "KVCache", "LlamaForCausalLM", "ModelConfig", "RopeConfig", "model_class"]
