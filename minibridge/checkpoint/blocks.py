"""What DCP sees of a model and its optimizer: blocks of full tensors, placed at their offsets.

Each rank contributes its parameter blocks as `ShardedBlock`s: a local tensor placed at an offset of
the full (unpadded) tensor. DCP stores the chunks with those coordinates, deduplicates identical
chunks held by several ranks (replicated norms, KV heads replicated under tp, dp replicas), and on
load reads whatever overlaps each rank's block under the *current* layout: that is the resharding.
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

from ..models import ModelChunks
from ..parallel.sharding import ShardSpec


class ShardedBlock:
    """A rank's block of a logical tensor, in the protocol DCP uses for DTensor (the three dunders)."""

    def __init__(self, local: torch.Tensor, offsets: tuple[int, ...], global_shape: tuple[int, ...]):
        self.local, self.offsets, self.global_shape = local, torch.Size(offsets), torch.Size(global_shape)

    def data(self) -> torch.Tensor:
        """The block's values, when DCP writes them."""
        return self.local

    def _chunk(self) -> ChunkStorageMetadata:
        return ChunkStorageMetadata(offsets=self.offsets, sizes=self.local.shape)

    def __create_write_items__(self, fqn: str, obj) -> list[WriteItem]:
        if self.local.numel() == 0:
            return []
        data = TensorWriteData(
            chunk=self._chunk(), properties=TensorProperties.create_from_tensor(self.local), size=self.global_shape
        )
        return [WriteItem(index=MetadataIndex(fqn, self.offsets), type=WriteItemType.SHARD, tensor_data=data)]

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        return [self._chunk()] if self.local.numel() else []

    def __get_tensor_shard__(self, index) -> torch.Tensor:
        return self.local


class LazyBlock(ShardedBlock):
    """A block DCP plans with its shape and dtype only (`local` is on meta) and reads with `read()`
    when it writes it: `convert import` writes a checkpoint without ever allocating the model."""

    def __init__(self, read, shape, dtype, offsets, global_shape):
        super().__init__(torch.empty(shape, dtype=dtype, device="meta"), offsets, global_shape)
        self.read = read

    def data(self) -> torch.Tensor:
        return self.read()


class BlockSavePlanner(DefaultSavePlanner):
    """DCP's default save planner, taught to fetch a ShardedBlock's data (it only looks in tensors)."""

    def lookup_object(self, index):
        block = self.state_dict[index.fqn]
        return block.data() if isinstance(block, ShardedBlock) else super().lookup_object(index)


class BlockLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, minus its state-dict pre-pass: that pass (`_init_state_dict`)
    replaces objects it does not know, ShardedBlocks included, with None (torch 2.13). Our state is
    flat and already allocated, so the pass has nothing to do anyway."""

    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def set_up_planner(self, state_dict, metadata=None, is_coordinator: bool = False) -> None:
        self.original_state_dict = self.state_dict = state_dict
        self.metadata, self.is_coordinator = metadata, is_coordinator

    def lookup_tensor(self, index):
        block = self.state_dict[index.fqn]
        return block.local if isinstance(block, ShardedBlock) else super().lookup_tensor(index)


def block_of(tensor: torch.Tensor, spec: ShardSpec | None):
    """What DCP should see for a parameter-shaped tensor: itself, or its block of the full tensor.
    Vocabulary padding rows are cut off, so checkpoints do not depend on the padding."""
    if spec is None or spec.dim is None or spec.size == 1:
        return tensor
    start, stop = spec.local_range()
    if spec.kind == "vocab":
        stop = min(stop, spec.full_shape[0])
        tensor = tensor[: max(0, stop - start)]
    offsets = [0] * tensor.ndim
    offsets[spec.dim] = start
    return ShardedBlock(tensor, tuple(offsets), spec.full_shape)


def training_state(model, optimizer=None, rank: int | None = None, trainable_only: bool = False) -> dict:
    """The flat DCP state: model blocks, this rank's optimizer state blocks, this rank's RNG.
    `trainable_only` (PEFT): only parameters that train, i.e. the adapters; the frozen base is not saved."""
    chunks = ModelChunks.of(model)
    specs = chunks.specs
    state = {f"model.{n}": block_of(p.data, specs.get(n)) for c in chunks for n, p in c.named_parameters()
             if p.requires_grad or not trainable_only}
    if optimizer is not None:
        for name, entries in optimizer.named_state().items():
            for key, value in entries.items():
                state[f"optim.{name}.{key}"] = value if key == "step" else block_of(value.data, specs.get(name))
    if rank is not None:
        state[f"rng.rank{rank}"] = torch.get_rng_state()
    return state
