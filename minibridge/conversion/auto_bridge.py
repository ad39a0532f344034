"""`minibridge.AutoBridge`: the bridge between Hugging Face folders and minibridge models (HFBridge), with
the checkpoint conversions of Megatron Bridge's API on top.

    AutoBridge.import_ckpt("hf/Llama-3.2-1B", "ckpt/llama")                    # HF -> minibridge checkpoint
    AutoBridge.from_hf_pretrained("hf/Llama-3.2-1B").export_ckpt("runs/sft", "out/hf")   # and back

They live here, above the bridge, because they read and write the checkpoint format (minibridge.checkpoint).
That package (torch.distributed.checkpoint, DTensor, sympy: ~50 MB resident) is imported when a
conversion runs, not by `from minibridge import AutoBridge`, so a process that only loads HF weights
never holds it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..bridge import HFBridge


class AutoBridge(HFBridge):
    @classmethod
    def import_ckpt(cls, hf_model_path: str | os.PathLike, megatron_path: str | os.PathLike, **kwargs) -> Path:
        """Write the HF checkpoint at `hf_model_path` as a minibridge checkpoint (the format training
        saves and resumes from) at `megatron_path`; kwargs: tp, pp, dtype, overwrite, progress."""
        from .importer import import_checkpoint

        return import_checkpoint(hf_model_path, megatron_path, **kwargs)

    def export_ckpt(self, megatron_path: str | os.PathLike, hf_path: str | os.PathLike, adapter_only: bool = False,
                    **kwargs) -> Path:
        """Write the minibridge checkpoint at `megatron_path` as an HF folder at `hf_path` (LoRA/DoRA
        adapters merged), or with `adapter_only` its adapters as an HF PEFT folder; kwargs: dtype,
        max_shard_size, overwrite, progress."""
        from .exporter import export_with_bridge

        return export_with_bridge(self, megatron_path, hf_path, adapter_only=adapter_only, **kwargs)
