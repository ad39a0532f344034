"""`ModelChunks`: what a rank holds of a model, always in one form.

A rank holds one `CausalLM` chunk, or several under interleaved pipeline parallelism (its virtual
stages, in stage order). Every chunk carries two declared attributes that passes set:

    chunk.sharding   how its parameters are split over ranks (minibridge.parallel.sharding.Sharding:
                     the layout's dims and a ShardSpec per parameter), or None on a single device
    chunk.adapters   its LoRA/DoRA settings (minibridge.peft.AdapterState), or None

Code that takes "a model" from a user (a module, or the list `to_model` returns with virtual stages)
turns it into ModelChunks once, with `ModelChunks.of(model)`, and then reads `chunks.dims`,
`chunks.specs` and friends instead of probing attributes.
"""

from __future__ import annotations

from .causal_lm import CausalLM


class ModelChunks(list):
    """This rank's chunks of one model (a list of CausalLM, in pipeline-stage order)."""

    @classmethod
    def of(cls, model) -> "ModelChunks":
        if isinstance(model, ModelChunks):
            return model
        chunks = cls(model) if isinstance(model, (list, tuple)) else cls([model])
        if not chunks or not all(isinstance(c, CausalLM) for c in chunks):
            raise TypeError(f"expected a minibridge model (CausalLM) or a list of its pipeline chunks, got {model!r}")
        return chunks

    @property
    def config(self):
        return self[0].config

    @property
    def sharding(self):
        return self[0].sharding

    @property
    def dims(self):
        """The parallel layout (minibridge.parallel.ParallelDims), or None for a single-device model."""
        return None if self.sharding is None else self.sharding.dims

    @property
    def specs(self) -> dict:
        """Parameter name -> ShardSpec over every chunk ({} for a single-device model)."""
        return {name: spec for chunk in self if chunk.sharding is not None for name, spec in chunk.sharding.specs.items()}

    @property
    def adapters(self):
        return self[0].adapters

    def named_parameters(self):
        """(name, parameter) over every chunk; a tied last stage's copy of the embedding appears once
        per chunk holding it (names never change across layouts)."""
        for chunk in self:
            yield from chunk.named_parameters()

    def public(self):
        """The form `AutoBridge.to_model` returns: the chunk itself, or the list with virtual stages."""
        return self[0] if len(self) == 1 else self
