"""Hugging Face <-> minibridge: config translation, name tables, safetensors streaming, HFBridge."""

from .auto_bridge import HFBridge
from .hf_config import UnsupportedModelError, config_from_hf, config_to_hf
from .safetensors_io import CorruptCheckpointError

__all__ = ["HFBridge", "CorruptCheckpointError", "UnsupportedModelError", "config_from_hf", "config_to_hf"]
