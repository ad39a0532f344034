"""Checkpoint conversion between Hugging Face folders and minibridge checkpoints (the DCP format training
saves and resumes from), and loading such a checkpoint for generation.

    from minibridge.conversion import import_checkpoint, export_checkpoint, roundtrip, load_megatron_model
    import_checkpoint("hf/Llama-3.2-1B", "ckpt/llama")                       # = AutoBridge.import_ckpt
    export_checkpoint("hf/Llama-3.2-1B", "ckpt/llama", "out/hf")             # = bridge.export_ckpt
    export_checkpoint("hf/Llama-3.2-1B", "runs/lora", "out/adapter", adapter_only=True)
    model = load_megatron_model(AutoBridge.from_hf_pretrained("hf/Llama-3.2-1B"), "ckpt/llama")

It sits beside `minibridge.training` (it reads and writes training's checkpoint format) and above the
bridge; `AutoBridge.import_ckpt` / `export_ckpt` reach it through imports inside those methods.
"""

from .checkpoints import CheckpointMismatchError, load_megatron_model, read_checkpoint, resolve_checkpoint
from .exporter import TensorComparison, compare_folders, export_checkpoint, export_with_bridge, roundtrip
from .importer import import_checkpoint

__all__ = [
    "CheckpointMismatchError", "TensorComparison", "compare_folders", "export_checkpoint", "export_with_bridge",
    "import_checkpoint", "load_megatron_model", "read_checkpoint", "resolve_checkpoint", "roundtrip",
]
