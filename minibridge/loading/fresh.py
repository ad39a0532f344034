"""Fresh initialisation (pretraining from scratch): the loader without a source.

Every parameter's full tensor comes from a generator seeded by (seed, name), and a rank keeps its block of
it, so a model is initialised identically under every parallel layout (TP, PP, FSDP2), one full tensor in
memory at a time, as Megatron's use_cpu_initialization.
"""

from __future__ import annotations

import zlib

import torch

from ..models import CausalLM, ModelChunks
from ..models.common import RMSNorm
from ..parallel.fsdp import local_rows
from ..parallel.sharding import take_block
from ..peft import adapter_parameters


def base_parameters(model: CausalLM) -> dict[str, torch.nn.Parameter]:
    """name -> parameter of the model without its LoRA/DoRA adapters (the loaders fill these)."""
    adapters = adapter_parameters(model)
    return {n: p for n, p in model.named_parameters() if n not in adapters}


@torch.no_grad()
def initialize_fresh(chunks: ModelChunks, seed: int) -> None:
    """Norm weights 1 (Gemma's 0: it scales by 1 + w), biases 0, every matrix N(0, init_std) from its own
    generator (the pad token's embedding row 0); this rank's block of each (its dp rows under FSDP2)."""
    specs = chunks.specs
    config = chunks.config
    for chunk in chunks:
        for name, param in base_parameters(chunk).items():
            spec = specs.get(name)
            shape = spec.full_shape if spec is not None else tuple(param.shape)
            if param.ndim < 2:  # norms and biases
                module = chunk.get_submodule(name.rsplit(".", 1)[0])
                unit = isinstance(module, RMSNorm) and not module.gemma
                full = torch.ones(shape) if unit else torch.zeros(shape)
            else:
                generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
                full = torch.randn(shape, generator=generator) * config.init_std
                if name == "embed_tokens.weight" and config.pad_token_id is not None:
                    full[config.pad_token_id] = 0
            out, rows = local_rows(param)
            out.copy_(take_block(full, spec, rows))
