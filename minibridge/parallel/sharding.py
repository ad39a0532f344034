"""How one parameter is split over the tensor-parallel ranks, and how to put it back together.

Kinds (Megatron's names in brackets):
    column      split dim 0 (ColumnParallelLinear weight and bias)
    row         split dim 1 (RowParallelLinear weight; its bias is replicated)
    vocab       split dim 0 after padding the vocabulary to a multiple of tp (VocabParallelEmbedding);
                padded rows are zero, masked out of the loss and never exported
    kv          k/v projections: split by KV head when tp <= num_kv_heads, otherwise each head is
                replicated on tp / num_kv_heads neighbouring ranks (Megatron's query-group replication)
    replicated  every rank holds the whole tensor; `grad_reduce` says its gradient is a partial sum per
                rank (norms under sequence parallelism, Gemma's per-head q/k norms, SP row biases)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ShardSpec:
    kind: str
    full_shape: tuple[int, ...]
    rank: int = 0
    size: int = 1
    replicas: int = 1  # ranks that hold the same block (kv heads under tp > num_kv_heads)
    padded_rows: int = 0  # vocab: rows after padding (>= full_shape[0])
    grad_reduce: bool = False

    @property
    def dim(self) -> int | None:
        return {"column": 0, "vocab": 0, "kv": 0, "row": 1}.get(self.kind)

    @property
    def parts(self) -> int:
        return self.size // self.replicas

    @property
    def index(self) -> int:
        return self.rank // self.replicas

    def local_range(self) -> tuple[int, int]:
        """[start, stop) of this rank's block along `dim`, in padded coordinates for vocab."""
        total = self.padded_rows if self.kind == "vocab" else self.full_shape[self.dim]
        step = total // self.parts
        return self.index * step, (self.index + 1) * step

    def local_shape(self) -> tuple[int, ...]:
        if self.dim is None:
            return self.full_shape
        start, stop = self.local_range()
        shape = list(self.full_shape)
        shape[self.dim] = stop - start
        return tuple(shape)


@dataclass
class Sharding:
    """How one model chunk is split: its layout's dims (ParallelDims) and a ShardSpec per parameter
    name (a parameter without one is whole on every rank). Set as `chunk.sharding` by the TP pass."""

    dims: object
    specs: dict[str, ShardSpec] = field(default_factory=dict)
    fsdp: object = None  # minibridge.parallel.fsdp.FsdpSettings once FSDP2 shards the chunk over dp

    def full_shape(self, name: str, param: torch.Tensor) -> tuple[int, ...]:
        spec = self.specs.get(name)
        return tuple(spec.full_shape) if spec is not None else tuple(param.shape)


def take_block(full: torch.Tensor, spec: ShardSpec | None, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """This rank's block of a whole tensor (the inverse of `gather_full`); vocab padding is zeros.
    `rows` = (first, last): only those rows (dim 0) of the block, an FSDP2 dp shard of it."""
    block = full
    if spec is not None and spec.dim is not None and spec.size > 1:
        if spec.kind == "vocab" and spec.padded_rows > full.shape[0]:
            full = torch.cat([full, full.new_zeros(spec.padded_rows - full.shape[0], *full.shape[1:])])
        start, stop = spec.local_range()
        block = full.narrow(spec.dim, start, stop - start)
    return block if rows is None else block.narrow(0, rows[0], rows[1] - rows[0])


def assemble(blocks: list[torch.Tensor], spec: ShardSpec) -> torch.Tensor:
    """The whole tensor from the blocks of ranks 0..size-1: replicas dropped, vocab padding cut."""
    full = torch.cat(blocks[:: spec.replicas], dim=spec.dim)
    return full[: spec.full_shape[0]] if spec.kind == "vocab" else full


def gather_full(local: torch.Tensor, spec: ShardSpec | None, group) -> torch.Tensor:
    """The whole tensor from every rank's block (every rank receives it)."""
    if spec is None or spec.dim is None or spec.size == 1:
        return local
    blocks = [torch.empty_like(local) for _ in range(spec.size)]
    dist.all_gather(blocks, local.contiguous(), group=group)
    return assemble(blocks, spec)
