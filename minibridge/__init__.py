"""minibridge: Llama 3 and Gemma 3 training in plain PyTorch, loading and saving Hugging Face checkpoints."""

from .conversion import AutoBridge
from .models import Gemma3ForCausalLM, LlamaForCausalLM, ModelConfig

__version__ = "0.1.0"
__all__ = ["AutoBridge", "Gemma3ForCausalLM", "LlamaForCausalLM", "ModelConfig"]
