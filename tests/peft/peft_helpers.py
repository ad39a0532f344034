"""Shared by the PEFT tests (importable by spawned ranks): deterministic non-zero adapters."""

from __future__ import annotations

import zlib

import torch

from minibridge.parallel.sharding import take_block
from minibridge.peft import adapter_parameters


@torch.no_grad()
def randomize_adapters(model, scale: float = 0.1) -> None:
    """Non-zero B (so a wrong formula shows) and DoRA magnitudes away from ||W||, identical under
    every layout: each full tensor comes from a generator seeded by its name, each rank keeps its block."""
    chunks = model if isinstance(model, list) else [model]
    for chunk in chunks:
        specs = chunk.sharding.specs if chunk.sharding is not None else {}
        for name, p in adapter_parameters(chunk).items():
            spec = specs.get(name)
            shape = spec.full_shape if spec is not None else p.shape
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            full = torch.randn(shape, generator=g) * scale
            if name.endswith("lora_magnitude_vector"):
                full = 0.3 + full.abs()  # positive, unlike ||W|| row norms
            p.copy_(take_block(full, spec))


def batch(vocab: int, shape=(2, 16), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))
