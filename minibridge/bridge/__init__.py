"""Hugging Face <-> minibridge: config translation, name tables, safetensors streaming, HFBridge (no model
making: that is `build_model` and minibridge.loading), exports of a model to HF folders."""

from .auto_bridge import HFBridge, export_hf_adapter, export_hf_folder
from .hf_config import UnsupportedModelError, config_from_hf, config_to_hf
from .safetensors_io import CorruptCheckpointError

__all__ = ["HFBridge", "CorruptCheckpointError", "UnsupportedModelError", "config_from_hf", "config_to_hf",
           "export_hf_adapter", "export_hf_folder"]
