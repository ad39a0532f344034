"""Parallel layout: sizes, process groups and this rank's coordinates.

Ranks are laid out as Megatron does, tensor-parallel fastest, then context, data, pipeline:

    rank = tp_rank + tp * (cp_rank + cp * (dp_rank + dp * pp_rank))

so the ranks of one TP group are neighbours (one node, NVLink) and pipeline stages are farthest apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist

from ..errors import LayoutError
from ..models.config import ModelConfig


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    vp: int = 1  # virtual pipeline stages per rank (interleaved 1F1B)
    cp: int = 1
    sequence_parallel: bool = False
    # The vocabulary is padded to a multiple of this times tp (Megatron's make_vocab_size_divisible_by).
    vocab_multiple: int = 1
    # Pipeline split: layers per virtual stage, or an even split where the embedding and the loss may
    # each count as a layer (Megatron's account_for_embedding/loss_in_pipeline_split).
    pipeline_layout: tuple[int, ...] | None = None
    account_for_embedding: bool = False
    account_for_loss: bool = False

    def __post_init__(self):
        for name in ("tp", "pp", "vp", "cp", "vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise LayoutError(f"{name}={value!r}: expected a positive integer")
        if self.sequence_parallel and self.tp == 1:
            self.sequence_parallel = False  # nothing to split; Megatron silently does the same

    def check_supported(self):
        if self.vp > 1 and self.pp == 1:
            raise LayoutError(f"virtual pipeline stages (vp={self.vp}) need pipeline parallelism (pp > 1)")

    def validate(self, model: ModelConfig, seq_length: int | None = None) -> "ParallelConfig":
        """Every check of this layout against `model` (and a sequence length), before anything is
        allocated: the one place layouts are validated (training config, provider, conversion)."""
        self.check_supported()
        validate_model_layout(model, self)
        from .pipeline import layout_stages

        layout_stages(model.num_layers, self)  # raises when the layers do not split over pp * vp stages
        if seq_length is not None:
            if seq_length % (2 * self.cp):
                raise LayoutError(f"seq_length={seq_length} must be divisible by 2 * cp = {2 * self.cp} "
                                  f"(context_parallel_size={self.cp}: each cp rank takes two balanced chunks)")
            if self.sequence_parallel and (seq_length // self.cp) % self.tp:
                raise LayoutError(f"sequence_parallel: seq_length / cp = {seq_length // self.cp} must be divisible "
                                  f"by tp={self.tp} (tensor_model_parallel_size)")
        return self


@dataclass
class MegatronLayout:
    """A model and its layout over ranks under Megatron's names, declared once: the training configuration's
    `model` section (training.config.ModelSettings) and the provider (bridge.provider.ModelProvider) extend it,
    so `model.tensor_model_parallel_size=2` and `provider.tensor_model_parallel_size = 2` set the same field.
    `parallel_config()` is the one translation to ParallelConfig's short names."""

    config: ModelConfig
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    context_parallel_size: int = 1
    sequence_parallel: bool = False
    seq_length: int | None = None  # None: the layout is not checked against a sequence length
    # Activation recomputation, a pass of parallelize.build_model (Megatron spells "none" None).
    recompute_granularity: Literal["none", "selective", "full"] = "none"
    # The vocabulary is padded to a multiple of this times TP (Megatron's default 128).
    make_vocab_size_divisible_by: int = 128
    # Count the embedding / the loss as one layer each when splitting layers over pipeline stages
    # (the 405B recipes set both so 126 layers + 2 split evenly into 8 or 16 stages).
    account_for_embedding_in_pipeline_split: bool = False
    account_for_loss_in_pipeline_split: bool = False
    pipeline_layout: list[int] | None = None  # layers per virtual stage; None: an even split

    def __post_init__(self):
        if self.recompute_granularity is None:
            self.recompute_granularity = "none"

    def parallel_config(self) -> ParallelConfig:
        layout = self.pipeline_layout
        return ParallelConfig(
            tp=self.tensor_model_parallel_size, pp=self.pipeline_model_parallel_size,
            vp=self.virtual_pipeline_model_parallel_size or 1, cp=self.context_parallel_size,
            sequence_parallel=self.sequence_parallel, vocab_multiple=self.make_vocab_size_divisible_by,
            pipeline_layout=tuple(layout) if layout else None,
            account_for_embedding=self.account_for_embedding_in_pipeline_split,
            account_for_loss=self.account_for_loss_in_pipeline_split,
        )

    def validate_layout(self) -> ParallelConfig:
        """The layout checked against the model and seq_length (ParallelConfig.validate)."""
        return self.parallel_config().validate(self.config, self.seq_length)


@dataclass
class ParallelDims:
    """Sizes, this rank's coordinates and the process groups of one layout."""

    config: ParallelConfig
    world_size: int
    rank: int
    dp: int
    tp_group: object = None
    dp_group: object = None
    cp_group: object = None
    pp_group: object = None
    embedding_group: object = None  # first and last pipeline rank: they share tied embeddings
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def tp(self) -> int:
        return self.config.tp

    @property
    def sequence_parallel(self) -> bool:
        return self.config.sequence_parallel

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def cp(self) -> int:
        return self.config.cp

    @property
    def cp_rank(self) -> int:
        return (self.rank // self.tp) % self.config.cp

    @property
    def pp(self) -> int:
        return self.config.pp

    @property
    def pp_rank(self) -> int:
        c = self.config
        return self.rank // (c.tp * c.cp * self.dp)

    @property
    def dp_rank(self) -> int:
        c = self.config
        return (self.rank // (c.tp * c.cp)) % self.dp

    def padded_vocab(self, vocab_size: int) -> int:
        multiple = self.tp * self.config.vocab_multiple
        return -(-vocab_size // multiple) * multiple

    def validate_model(self, model: ModelConfig) -> None:
        validate_model_layout(model, self.config)


def validate_model_layout(model: ModelConfig, config: ParallelConfig) -> None:
    """Check before anything is allocated that the model splits evenly over the layout."""
    tp = config.tp
    for what, value in (("num_heads", model.num_heads), ("intermediate_size", model.intermediate_size)):
        if value % tp:
            raise LayoutError(f"{what}={value} is not divisible by tensor parallel size tp={tp}")
    kv = model.num_kv_heads
    if kv % tp and tp % kv:
        raise LayoutError(
            f"num_kv_heads={kv} and tp={tp}: one must divide the other (KV heads are split, or replicated "
            f"when tp exceeds them)"
        )


def data_parallel_size(config: ParallelConfig, world_size: int) -> int:
    """The data-parallel size implied by the world size; raises when the layout does not divide it."""
    model_parallel = config.tp * config.pp * config.cp
    if world_size % model_parallel:
        raise LayoutError(
            f"world size {world_size} is not divisible by tp*pp*cp = {config.tp}*{config.pp}*{config.cp} = {model_parallel}"
        )
    return world_size // model_parallel


def _group_ranks(config: ParallelConfig, dp: int) -> dict[str, list[list[int]]]:
    """All groups of each kind, as rank lists, from the rank formula in the module docstring."""
    sizes = {"tp": config.tp, "cp": config.cp, "dp": dp, "pp": config.pp}
    order = ["tp", "cp", "dp", "pp"]
    strides = {}
    stride = 1
    for name in order:
        strides[name] = stride
        stride *= sizes[name]
    world = stride
    groups = {}
    for name in order:
        seen, kind = set(), []
        for rank in range(world):
            base = rank - ((rank // strides[name]) % sizes[name]) * strides[name]
            if base not in seen:
                seen.add(base)
                kind.append([base + i * strides[name] for i in range(sizes[name])])
        groups[name] = kind
    return groups


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_STATE: ParallelDims | None = None


def initialize(config: ParallelConfig, backend: str | None = None) -> ParallelDims:
    """Create (or reuse) the default process group and the tp/cp/dp/pp groups for `config`.

    Works under torchrun (RANK, WORLD_SIZE, LOCAL_RANK from the environment): NCCL with CUDA, gloo on CPU.
    """
    global _STATE
    config.check_supported()
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if "RANK" in os.environ:  # torchrun (or srun) set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
            dist.init_process_group(backend)
        else:  # a plain `python` run: a world of one
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    world, rank = dist.get_world_size(), dist.get_rank()
    dp = data_parallel_size(config, world)
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        torch.cuda.set_device(device)
    dims = ParallelDims(config, world, rank, dp, device=device)
    for name, rank_lists in _group_ranks(config, dp).items():
        for ranks in rank_lists:
            group = dist.new_group(ranks)  # every rank creates every group, as new_group requires
            if rank in ranks:
                setattr(dims, f"{name}_group", group)
            if name == "pp" and config.pp > 1:
                ends = [ranks[0], ranks[-1]]
                group = dist.new_group(ends)
                if rank in ends:
                    dims.embedding_group = group
    _STATE = dims
    return dims


def current() -> ParallelDims | None:
    return _STATE


def global_rank() -> int:
    """This process's rank in the default group (0 without torch.distributed)."""
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def from_rank0(value):
    """Rank 0's `value` (any picklable object) on every rank: decisions rank 0 takes alone (what is on
    disk, whether a folder may be written) reach every rank, so none is left waiting in a collective."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def max_over_ranks(value: int) -> int:
    """The largest of every rank's `value` (one all-reduce on the default group): a decision any rank may
    take alone (a signal it received, a clock it read) reaches every rank in the same step."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    device = _STATE.device if _STATE is not None else torch.device("cpu")
    box = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


def gathered(value) -> list:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
