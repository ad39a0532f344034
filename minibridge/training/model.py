"""The model a run trains, made the one way (minibridge.loading): `build_model` (TP, CP, recomputation,
compile, LoRA/DoRA adapters and FSDP2, all on meta, then this rank's blocks allocated: under FSDP2 only its dp
shards), then the loader of its source, checkpoint.pretrained_checkpoint: an HF folder (which also gives the
architecture), a minibridge or Megatron checkpoint (weights only: the architecture is model.config's), or
none: fresh weights from train.seed. No HFBridge is involved.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from ..bridge.hf_folder import HFFolder
from ..loading.checkpoints import load_pretrained
from ..loading.fresh import initialize_fresh
from ..loading.hf import build_hf_model, hf_folder_config, hf_mapping
from ..models import ModelChunks
from ..parallel.fsdp import FsdpSettings
from ..parallel.parallelize import build_model
from ..peft import adapters_hidden, attach_peft
from .config import ConfigContainer


def hf_source(config: ConfigContainer) -> str | None:
    """checkpoint.pretrained_checkpoint when it is an HF folder (else a checkpoint, or no source)."""
    source = config.checkpoint.pretrained_checkpoint
    return source if source and (Path(source) / "config.json").exists() else None


def build_trained_model(c: ConfigContainer, dims, dtype: torch.dtype) -> ModelChunks:
    """This rank's chunks of the run's model, its base weights loaded (adapters: `peft.init_adapters` next)."""
    source, hf = c.checkpoint.pretrained_checkpoint, hf_source(c)
    config = hf_folder_config(hf) if hf else c.model.config
    folder = HFFolder(hf) if hf else None
    mapping = hf_mapping(config, folder)
    fsdp = FsdpSettings(dtype if dtype != torch.float32 else None,
                        c.dist.reshard_after_forward) if c.dist.use_torch_fsdp2 else None
    p = c.peft
    adapters = None if p is None else partial(
        attach_peft, scheme=p.scheme, rank=p.dim, alpha=p.alpha, dropout=p.dropout, targets=p.target_modules,
        exclude=p.exclude_modules, dropout_position=p.dropout_position, init=p.lora_A_init_method, seed=c.train.seed,
        hf_name=mapping.hf_module_name)
    options = dict(recompute=c.model.recompute_granularity, compile=c.model.compile, fsdp=fsdp, adapters=adapters)
    dtype = torch.float32 if fsdp is not None else dtype  # FSDP2: fp32 shards, `dtype` compute
    if folder is not None:  # names, shapes and dtypes checked against the files before allocating
        return build_hf_model(config, folder, dims, dtype, progress=dims.rank == 0, mapping=mapping, **options)
    chunks = build_model(config, dims, dtype, **options)
    if source:
        with adapters_hidden(chunks):  # the base model's weights; the adapters start fresh
            load_pretrained(chunks, source)  # ours, or Megatron's (Megatron Bridge, Megatron-LM)
    else:
        initialize_fresh(chunks, c.train.seed)
    return chunks
