"""Hugging Face <-> minibridge: config translation, name tables, safetensors streaming, AutoBridge."""

from .auto_bridge import AutoBridge
from .hf_config import UnsupportedModelError, config_from_hf, config_to_hf
from .safetensors_io import CorruptCheckpointError

__all__ = ["AutoBridge", "CorruptCheckpointError", "UnsupportedModelError", "config_from_hf", "config_to_hf"]
