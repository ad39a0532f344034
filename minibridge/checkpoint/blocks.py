"""What DCP sees of a model and its optimizer: blocks of full tensors, placed at their offsets.

Each rank contributes its parameter blocks as `ShardedBlock`s: a local tensor placed at an offset of
the full (unpadded) tensor. DCP stores the chunks with those coordinates, deduplicates identical
chunks held by several ranks (replicated norms, KV heads replicated under tp, dp replicas), and on
load reads whatever overlaps each rank's block under the *current* layout: that is the resharding.
Under FSDP2 a rank's block is its dp shard of its TP block (`block_of`), so every layout stores the
same global tensors under the same names and reads every other layout's checkpoints.

Keys: `model.<name>` for parameters, and the optimizer in torch's layout (what
`torch.distributed.checkpoint.state_dict.get_optimizer_state_dict` returns, under `optim.`):
`optim.state.<name>.<exp_avg|exp_avg_sq|step|master>` and `optim.param_groups` (the groups' settings
with parameter names, which DCP pickles as `optim.param_groups.<i>.<key>`), so `dcp_to_torch_save`
hands torch tools the dicts they know; `rng.rank<N>`. A load checks the stored groups against the
run's but keeps the run's settings: its configuration and schedules set them (lr and weight decay
at every step), as a resumed Megatron run's schedulers do.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.checkpoint import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

from ..errors import CheckpointMismatchError
from ..models import ModelChunks
from ..parallel.fsdp import shard_rows
from ..parallel.sharding import ShardSpec
from .reader import PARAM_GROUP_ENTRY, SafeBytesPlanner


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


class LazyChunks:
    """Several chunks of one logical tensor from this rank, each planned from its shape and read by its
    `read()` when DCP writes it: a stacked Megatron key, one chunk per layer (or per half of a layer)."""

    def __init__(self, chunks: list[LazyBlock]):
        self.chunks = {tuple(c.offsets): c for c in chunks}

    def __create_write_items__(self, fqn: str, obj) -> list[WriteItem]:
        return [item for c in self.chunks.values() for item in c.__create_write_items__(fqn, obj)]

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        return [chunk for c in self.chunks.values() for chunk in c.__create_chunk_list__()]

    def data(self, offsets) -> torch.Tensor:
        return self.chunks[tuple(offsets)].data()


class BlockSavePlanner(DefaultSavePlanner):
    """DCP's default save planner, taught to fetch a ShardedBlock's data (it only looks in tensors)."""

    def lookup_object(self, index):
        block = self.state_dict[index.fqn]
        if isinstance(block, LazyChunks):
            return block.data(index.offset)
        return block.data() if isinstance(block, ShardedBlock) else super().lookup_object(index)


class BlockLoadPlanner(SafeBytesPlanner):
    """DCP's default load planner (param_groups entries unpickled safely), minus its state-dict
    pre-pass: that pass (`_init_state_dict`) replaces objects it does not know, ShardedBlocks included,
    with None (torch 2.13). Our state is flat and already allocated, so the pass has nothing to do."""

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
    Vocabulary padding rows are cut off, so checkpoints do not depend on the padding.

    Under FSDP2 `tensor` is a DTensor over the dp ranks whose global shape is the TP-local block:
    this rank holds rows [row, row + n) of that block, so its offsets are the block's plus `row`."""
    row = 0
    if isinstance(tensor, DTensor):
        block_shape = tuple(tensor.shape)
        tensor, row = shard_rows(tensor)
        if spec is None or spec.dim is None or spec.size == 1:
            return ShardedBlock(tensor, (row,) + (0,) * (tensor.ndim - 1), block_shape)
    elif spec is None or spec.dim is None or spec.size == 1:
        return tensor
    start, stop = spec.local_range()
    offsets = [0] * tensor.ndim
    offsets[spec.dim] = start
    offsets[0] += row
    if spec.kind == "vocab":  # rows of this shard past the real vocabulary are padding
        tensor = tensor[: max(0, min(tensor.shape[0], spec.full_shape[0] - offsets[0]))]
    return ShardedBlock(tensor, tuple(offsets), spec.full_shape)


def optimizer_key(name: str, key: str) -> str:
    """The DCP key of one optimizer state entry: torch's layout (`state.<fqn>.<key>`, what
    torch.distributed.checkpoint.state_dict.get_optimizer_state_dict returns) under `optim.`."""
    return f"optim.state.{name}.{key}"


PARAM_GROUPS = "optim.param_groups"


def torch_layout(state: dict) -> dict:
    """The flat state nested as torch's state dicts are ({"model": {fqn: ...}, "optim": {"state": {fqn:
    {"exp_avg": ...}}}}). DCP flattens it back to the same keys when it saves and records the nesting,
    so `dcp_to_torch_save` rebuilds these dicts."""
    out: dict = {}
    for key, value in state.items():
        if key.startswith("optim.state."):
            name, entry = key[len("optim.state."):].rsplit(".", 1)
            out.setdefault("optim", {}).setdefault("state", {}).setdefault(name, {})[entry] = value
        elif key == PARAM_GROUPS:
            out.setdefault("optim", {})["param_groups"] = value
        elif key.startswith("model."):
            out.setdefault("model", {})[key[len("model."):]] = value
        else:
            out[key] = value
    return out


def legacy_key(key: str) -> str:
    """Where checkpoints before the torch layout stored an optimizer entry (`optim.<fqn>.<key>`)."""
    return "optim." + key[len("optim.state."):] if key.startswith("optim.state.") else key


def training_state(model, optimizer=None, rank: int | None = None, trainable_only: bool = False) -> dict:
    """The flat DCP state: model blocks, this rank's optimizer state blocks, this rank's RNG.
    `trainable_only` (PEFT): only parameters that train, i.e. the adapters; the frozen base is not saved."""
    chunks = ModelChunks.of(model)
    specs = chunks.specs
    # FSDP2 computing in bf16 stores what a plain bf16 run does: bf16 weights (a copy, whose load is
    # dropped), its fp32 shards as the optimizer's masters
    fsdp = chunks.sharding.fsdp if chunks.sharding is not None else None
    low = fsdp.param_dtype if fsdp is not None and optimizer is not None else None
    state = {f"model.{n}": block_of(p.data if low is None else p.data.to(low), specs.get(n))
             for c in chunks for n, p in c.named_parameters() if p.requires_grad or not trainable_only}
    if optimizer is not None:
        for name, entries in optimizer.named_state().items():
            for key, value in entries.items():
                state[optimizer_key(name, key)] = value if key == "step" else block_of(value.data, specs.get(name))
        state[PARAM_GROUPS] = optimizer.named_param_groups()
    if rank is not None:
        state[f"rng.rank{rank}"] = torch.get_rng_state()
    return state


def stored_param_groups(stored: dict) -> dict:
    """Placeholders for the stored `optim.param_groups.<i>.<key>` entries, which a load fills."""
    return {key: None for key in stored if PARAM_GROUP_ENTRY.fullmatch(key)}


def check_param_groups(folder, loaded: dict, groups: list[dict]) -> None:
    """The stored groups (`loaded`: the filled placeholders) hold every parameter this rank trains, with
    the weight-decay multiplier it has now: else the checkpoint is of another model or setup."""
    stored: dict[int, dict] = {}
    for key, value in loaded.items():
        index, entry = key[len(PARAM_GROUPS) + 1:].split(".", 1)
        stored.setdefault(int(index), {})[entry] = value
    mult = {name: g.get("wd_mult") for g in stored.values() for name in g.get("params") or []}
    for group in groups:
        for name in group["params"]:
            if name not in mult:
                raise CheckpointMismatchError(f"{folder}: the optimizer's param_groups do not hold {name!r}, which "
                                              f"this run trains (a checkpoint of another model, or of adapters?)")
            if mult[name] is not None and mult[name] != group["wd_mult"]:
                raise CheckpointMismatchError(f"{folder}: {name!r} is in a param group with wd_mult {mult[name]} "
                                              f"in the checkpoint but {group['wd_mult']} in this run")


def other_master_forms(state: dict, stored, model, optimizer) -> list:
    """Masters stored in the other form than this run keeps them (an fp32 master, or the int16 remainder
    of the precision-aware optimizer: minibridge.training.precision_aware): `state`'s entries swapped in
    place for tensors in the stored form; returns the functions that take them in after the load."""
    forms = getattr(optimizer, "master_forms", None)
    if forms is None:
        return []
    specs, takes = ModelChunks.of(model).specs, []
    for name, (have, other, make) in forms().items():
        key, alt = optimizer_key(name, have), optimizer_key(name, other)
        if key in state and key not in stored and alt in stored:
            del state[key]
            tensor, take = make()
            state[alt] = block_of(tensor, specs.get(name))
            takes.append(take)
    return takes
