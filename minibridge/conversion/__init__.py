"""Checkpoint conversion between Hugging Face folders and minibridge checkpoints (the DCP format training
saves and resumes from), and loading such a checkpoint for generation.

    from minibridge.conversion import import_checkpoint, export_checkpoint, roundtrip, load_megatron_model
    import_checkpoint("hf/Llama-3.2-1B", "ckpt/llama")                       # = AutoBridge.import_ckpt
    export_checkpoint("hf/Llama-3.2-1B", "ckpt/llama", "out/hf")             # = bridge.export_ckpt
    export_checkpoint("hf/Llama-3.2-1B", "runs/lora", "out/adapter", adapter_only=True)
    model = load_megatron_model(AutoBridge.from_hf_pretrained("hf/Llama-3.2-1B"), "ckpt/llama")

It sits above the bridge and the checkpoint package; `minibridge.AutoBridge` (auto_bridge.py) is the
bridge with `import_ckpt` / `export_ckpt` from here.
"""

from ..errors import CheckpointMismatchError
from .auto_bridge import AutoBridge

__all__ = [
    "AutoBridge", "CheckpointMismatchError", "TensorComparison", "compare_folders", "export_checkpoint",
    "export_with_bridge", "import_checkpoint", "load_megatron_model", "read_checkpoint", "resolve_checkpoint", "roundtrip",
]


def __getattr__(name: str):
    """The conversions, imported on first use (PEP 562) with the checkpoint package they need, so that
    `import minibridge` stays without torch.distributed.checkpoint (see auto_bridge.py)."""
    if name in ("read_checkpoint", "resolve_checkpoint"):
        from .. import checkpoint

        return getattr(checkpoint, name)
    if name == "load_megatron_model":
        from .checkpoints import load_megatron_model

        return load_megatron_model
    if name == "import_checkpoint":
        from .importer import import_checkpoint

        return import_checkpoint
    if name in ("TensorComparison", "compare_folders", "export_checkpoint", "export_with_bridge", "roundtrip"):
        from . import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
