"""Step two of the one way a model is made: parallelize the meta model, then allocate it.

    build (models.build_on_meta) -> parallelize (here) -> load (the bridge, a checkpoint) or initialize

`parallelize` applies the passes in one fixed order, all on the meta device, so each rank later
allocates only its own blocks (torchtitan's `parallelize_llama` orders its passes the same way):

    1. tensor (+ sequence) parallelism   plan.apply_tensor_parallel: blocks, ShardSpecs, collectives
    2. context parallelism               context.apply_context_parallel: the ring / halo attention core
    3. activation recomputation          CausalLM.set_recompute ("none", "selective", "full")
    4. the output head                   the fused, chunked output layer + loss (the model's default)
                                         with another chunk budget; the TP head never gathers logits
    5. torch.compile                     per block, as torchtitan does (one graph per layer type, reused
                                         by every layer; names and parameters unchanged), when asked
    6. FSDP2 over dp                     fsdp.apply_fsdp (`fsdp=FsdpSettings(...)`, the trainer's
                                         dist.use_torch_fsdp2): fully_shard per block, then per chunk,
                                         as torchtitan's apply_fsdp, on the meta chunks (`build_model`
                                         runs it over all of this rank's chunks). fully_shard fixes the
                                         parameters it manages when it wraps, so LoRA/DoRA adapter
                                         modules are attached just before it (`adapters`, on meta too;
                                         their values are set after loading: peft.init_adapters).

`build_model` runs build -> parallelize -> cast -> (adapters) -> (FSDP2) -> allocate for every chunk this
rank holds and returns them as `ModelChunks`; allocation comes last, so under FSDP2 `to_empty` creates
only this rank's dp shard of each parameter and the loaders fill the shards in place (peak memory: the
shards plus the tensor being read, never the whole TP-local model). The bridge, the checkpoint importer,
the trainer and generation all make their models here.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import LayoutError
from ..models import CausalLM, ModelChunks, ModelConfig, Stage, build_on_meta
from ..models.output import ChunkedOutputHead
from .context import apply_context_parallel
from .dims import ParallelDims
from .fsdp import FsdpSettings, apply_fsdp
from .pipeline import chunk_stages, layout_stages
from .plan import apply_tensor_parallel


def pipeline_stages(config: ModelConfig, dims: ParallelDims | None) -> list[Stage]:
    """The stages of the chunks this rank holds: the whole model without pipeline parallelism."""
    if dims is None or dims.config.pp == 1:
        return [Stage.whole(config)]
    pp, vp = dims.config.pp, dims.config.vp
    layers = layout_stages(config.num_layers, dims.config)
    return [Stage(layers[s], s == 0, s == pp * vp - 1) for s in chunk_stages(pp, vp, dims.pp_rank)]


def parallelize(model: CausalLM, dims: ParallelDims | None, recompute: str = "none",
                loss_chunk_bytes: int | None = None, compile: bool = False) -> CausalLM:
    """Apply passes 1-5 above, in that order, to `model` (a meta chunk). `loss_chunk_bytes`: logits
    (in the output layer's dtype) held at once by the fused output layer + loss (None: the default,
    models.output.LOSS_CHUNK_BYTES)."""
    if dims is not None:
        apply_tensor_parallel(model, dims)
        apply_context_parallel(model, dims)
    model.set_recompute(recompute)
    if loss_chunk_bytes and model.is_last and (dims is None or dims.tp == 1):
        model.head = ChunkedOutputHead(loss_chunk_bytes)
    if compile:
        for block in model.layers.values():
            block.compile()  # nn.Module.compile: compiled in place, compiled on first call
    return model


def build_model(config: ModelConfig, dims: ParallelDims | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None, recompute: str = "none",
                loss_chunk_bytes: int | None = None, compile: bool = False, meta: bool = False,
                fsdp: FsdpSettings | None = None,
                adapters: Callable[[ModelChunks], object] | None = None) -> ModelChunks:
    """This rank's chunks of the model of `config` under `dims`, parallelized and allocated (their
    values uninitialised: load or initialize them next). `meta=True` stops before allocation (shapes,
    specs and dtypes only, as the checkpoint importer needs). `adapters(chunks)` attaches LoRA/DoRA
    modules to the meta chunks (`functools.partial(minibridge.peft.attach_peft, ...)`); `fsdp` shards
    them over the dp ranks with FSDP2 (pass 6; `dtype` must then be float32, the sharded masters)."""
    device = device or (dims.device if dims is not None else "cpu")
    chunks = ModelChunks()
    for stage in pipeline_stages(config, dims):
        model = parallelize(build_on_meta(config, stage), dims, recompute, loss_chunk_bytes, compile)
        chunks.append(model.to(dtype=dtype))
    if adapters is not None:
        adapters(chunks)
    if fsdp is not None:
        if dims is None:
            raise LayoutError("FSDP2 shards over the dp ranks of a parallel layout: pass dims as well as fsdp")
        apply_fsdp(chunks, dims, fsdp.param_dtype, fsdp.reshard_after_forward)
    if not meta:
        for chunk in chunks:  # uninitialised storage, once, on `device` (under FSDP2 the dp shards only)
            chunk.to_empty(device=device)
    return chunks
