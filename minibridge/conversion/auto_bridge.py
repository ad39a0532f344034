"""`minibridge.AutoBridge`: the bridge between Hugging Face folders and minibridge models (HFBridge), with
making the model (`to_model`) and the checkpoint conversions of Megatron Bridge's API on top.

    model = AutoBridge.from_hf_pretrained("hf/Llama-3.2-1B").to_model(dtype=torch.bfloat16)   # HF weights
    model = AutoBridge.from_config(config).to_model(seed=1234)                               # fresh weights

    AutoBridge.import_ckpt("hf/Llama-3.2-1B", "ckpt/llama")                    # HF -> minibridge checkpoint
    AutoBridge.from_hf_pretrained("hf/Llama-3.2-1B").export_ckpt("runs/sft", "out/hf")   # and back

`to_model` makes a model as the trainer does: `build_model`, then a loader of minibridge.loading (the HF
folder's, or fresh initialisation). The conversions live here, above the bridge, because they read and write
the checkpoint format (minibridge.checkpoint). That package (torch.distributed.checkpoint, DTensor, sympy:
~50 MB resident) is imported when a conversion runs, not by `from minibridge import AutoBridge`, so a process
that only loads HF weights never holds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..bridge import HFBridge
from ..loading.fresh import initialize_fresh
from ..loading.hf import build_hf_model
from ..models import CausalLM, ModelChunks
from ..parallel.parallelize import build_model

if TYPE_CHECKING:
    from ..bridge.provider import ModelProvider


class AutoBridge(HFBridge):
    def to_model(self, parallel=None, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 progress: bool = True, seed: int = 1234, **options) -> CausalLM | ModelChunks:
        """The model with the HF weights loaded (or freshly initialised from `seed` without a source,
        identically whatever the parallel layout).

        With `parallel` (the ParallelDims of `minibridge.parallel.initialize`), this rank's shard, read
        slice by slice: under pipeline parallelism its stage, or its list of chunks (ModelChunks) with
        virtual stages. `dtype` defaults to the checkpoint's, as transformers 5.x `from_pretrained`
        does; `device` to the layout's device (CUDA under NCCL), else the CPU. `options` go to
        `minibridge.parallel.parallelize.build_model` (recompute, loss_chunk_bytes, compile; fsdp: FSDP2 on
        the meta model, the weights then read into each rank's dp shards; adapters: LoRA/DoRA modules
        attached on meta, whose values `minibridge.peft.init_adapters` sets after this returns).
        """
        return self.to_model_chunks(parallel, dtype, device, progress, seed, **options).public()

    def to_model_chunks(self, parallel=None, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None, progress: bool = True, seed: int = 1234,
                        **options) -> ModelChunks:
        """`to_model`, always as this rank's ModelChunks: `build_model`, then `load_hf_folder` or
        `initialize_fresh` (minibridge.loading), as the trainer makes its model."""
        if isinstance(parallel, (torch.dtype, str, torch.device)):
            raise TypeError("to_model's first argument is the parallel layout; pass dtype= and device= by name")
        dtype = dtype or self.checkpoint_dtype()
        if self.source is not None:
            progress = progress and (parallel is None or parallel.rank == 0)
            return build_hf_model(self.config, self.folder, parallel, dtype, device, progress, self.mapping, **options)
        chunks = build_model(self.config, parallel, dtype, device, **options)
        initialize_fresh(chunks, seed)
        return chunks

    def to_megatron_provider(self) -> "ModelProvider":
        """The provider object of the Megatron Bridge docs (set sizes, `finalize()`, provide the model)."""
        from ..bridge.provider import ModelProvider

        return ModelProvider(bridge=self, config=self.config, params_dtype=self.checkpoint_dtype())

    to_provider = to_megatron_provider

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
