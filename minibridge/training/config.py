"""Training configuration: one dataclass per concern, grouped like Megatron Bridge's ConfigContainer.

    ConfigContainer
      model            ModelSettings: the architecture (ModelConfig) + parallel layout + seq_length
      train            TrainingConfig: iterations, batch sizes, eval cadence, seed
      optimizer        OptimizerConfig: Adam hyper-parameters, clipping, ZeRO-1   (optimizer_config.py)
      scheduler        SchedulerConfig: lr warmup / decay, weight-decay schedule  (optimizer_config.py)
      ddp              DistributedDataParallelConfig: overlapped gradient reduction, bucket size (optimizer_config.py)
      dataset          DatasetConfig: mock / indexed / jsonl / sft / Hugging Face data, tokenizer, packing
      checkpoint       CheckpointConfig: save / load / pretrained weights / HF export
      logger           LoggerConfig: log cadence, tensorboard, wandb
      peft             PeftConfig or None (full training)
      dist             DistributedInitConfig: use_torch_fsdp2 (FSDP2 over the dp ranks)
      mixed_precision  a Megatron Bridge recipe name: "bf16_mixed", "fp32", ...

Field names are Megatron Bridge's so its users' overrides (`train.global_batch_size=64`) work unchanged.
`validate()` checks what can be checked without knowing the world size (that happens at launch).
`to_dict()` / `from_dict()` round-trip through JSON, for saving next to checkpoints.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field, fields
from typing import Literal

import torch

from ..errors import ConfigError, reject_unknown_keys
from ..models.config import ModelConfig
from ..peft.apply import DEFAULT_ALPHA, DEFAULT_RANK, DEFAULT_TARGETS, MEGATRON_NAMES, SCHEMES
from .data.presets import PRESETS
from .optimizer_config import (  # sections re-exported here
    DistributedDataParallelConfig, OptimizerConfig, SchedulerConfig, validate_optimizer,
)

# Megatron Bridge's mixed-precision recipe names (megatron/bridge/training/mixed_precision.py) plus "fp32".
# Low-precision ones map to the smallest CUDA compute capability that has the number format.
MIXED_PRECISION = ("fp32", "bf16_mixed", "fp16_mixed")
LOW_PRECISION = {
    "bf16_with_fp8_delayed_scaling_mixed": (8, 9),
    "bf16_with_fp8_current_scaling_mixed": (8, 9),
    "bf16_with_fp8_subchannel_scaling_mixed": (9, 0),
    "bf16_with_mxfp8_mixed": (10, 0),
    "bf16_with_nvfp4_mixed": (10, 0),
}
PRECISIONS = MIXED_PRECISION + tuple(LOW_PRECISION)
# LoRA/DoRA targets: Megatron's names of the four linear layers of a block, or ours / HF's short names
# (wildcards also allowed); the defaults are minibridge.peft's.
PEFT_TARGETS = DEFAULT_TARGETS
PEFT_MODULES = tuple(MEGATRON_NAMES)


@dataclass
class ModelSettings:
    config: ModelConfig
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    context_parallel_size: int = 1
    sequence_parallel: bool = False
    seq_length: int = 8192
    recompute_granularity: Literal["none", "selective", "full"] = "none"
    # The vocabulary is padded to a multiple of this times TP (Megatron's default 128).
    make_vocab_size_divisible_by: int = 128
    # Count the embedding / the loss as one layer each when splitting layers over pipeline stages
    # (Megatron's knobs; the 405B recipes set both so 126 layers + 2 split evenly into 8 or 16 stages).
    account_for_embedding_in_pipeline_split: bool = False
    account_for_loss_in_pipeline_split: bool = False
    pipeline_layout: list[int] | None = None  # layers per virtual stage; None: an even split
    compile: bool = False  # torch.compile each block (minibridge.parallel.parallelize)
    # Megatron's deterministic_mode: torch.use_deterministic_algorithms + a fixed cuBLAS workspace (training.loop).
    deterministic_mode: bool = False

    def __post_init__(self):
        if self.recompute_granularity is None:  # Megatron spells "no recomputation" None
            self.recompute_granularity = "none"

    def parallel_config(self):
        """The `minibridge.parallel.ParallelConfig` of this layout."""
        from ..parallel import ParallelConfig

        return ParallelConfig.from_megatron(self)


@dataclass
class TrainingConfig:
    train_iters: int = 1000
    global_batch_size: int = 512
    micro_batch_size: int = 1
    eval_interval: int | None = 2000  # None: no evaluation
    eval_iters: int = 32
    seed: int = 1234
    # Megatron's check_for_nan_in_loss_and_grad: a NaN/Inf gradient norm stops the run. This many steps
    # with one may be skipped (no update, counted in metrics.jsonl's skipped_steps) before it does.
    max_skipped_steps: int = 0

    def num_samples(self) -> tuple[int, int | None]:
        """(train, validation) samples a run reads, by Megatron's rule (get_train_valid_test_num_samples):
        train_iters x global_batch_size, and for validation (train_iters // eval_interval + 1) x eval_iters
        x global_batch_size (None without evaluation). Megatron-style datasets are built for at least
        that many samples: data shorter than that is repeated in more epochs, each drawn as Megatron does."""
        valid = None
        if self.eval_interval:
            valid = (self.train_iters // self.eval_interval + 1) * self.eval_iters * self.global_batch_size
        return self.train_iters * self.global_batch_size, valid


@dataclass
class DatasetConfig:
    # mock: random tokens, no files. indexed: Megatron .bin/.idx prefixes. jsonl: raw text, one JSON
    # object per line. sft: prompt/answer pairs (loss on answers only). hf: a Hugging Face dataset (below).
    kind: Literal["mock", "indexed", "jsonl", "sft", "hf"] = "mock"
    data_paths: list[str] = field(default_factory=list)
    blend_weights: list[float] | None = None  # one per data path; None: proportional to size
    split: str = "9999,8,2"  # train,valid,test proportions (Megatron's default for a data_paths blend)
    seq_length: int = 8192  # mirrors model.seq_length; an override of either sets both
    tokenizer: str | None = None  # HF tokenizer folder; None: the pretrained checkpoint's, if any
    packing: bool = False  # pack several documents into one sequence (sft: packed sequences)
    # megatron: mock/indexed/jsonl samples as Megatron Core's GPTDataset; legacy: disjoint padded windows
    sample_layout: Literal["megatron", "legacy"] = "megatron"
    num_workers: int = 8
    # kind hf (training.data.hf): a Megatron Bridge preset (squad, gsm8k, tulu3, openmathinstruct2[-thinking]) and/or
    # hf_path; without a preset, the columns to train on (None: messages, prompt + completion, or text, as present)
    preset: str | None = None
    hf_path: str | None = None  # hub id, save_to_disk folder, parquet/json/arrow files; None: the preset's hub id
    hf_split: str | None = None  # None: the preset's split, else train
    hf_subset: str | None = None
    prompt_column: str | None = None
    completion_column: str | None = None
    messages_column: str | None = None
    text_column: str | None = None
    val_proportion: float | None = None  # validation rows out of the split; None: the preset's (squad 0.1)
    cache_dir: str | None = None  # tokenized rows; None: <checkpoint.save>/data_cache, else not cached


@dataclass
class CheckpointConfig:
    save: str | None = None
    load: str | None = None  # resume from here when it holds a checkpoint
    save_interval: int = 500
    keep_last: int | None = None  # keep only the most recent N checkpoints; None keeps all
    pretrained_checkpoint: str | None = None  # HF folder or minibridge checkpoint to start from
    export_hf_on_finish: str | bool = False  # True: <save>/hf; a string: that folder


@dataclass
class LoggerConfig:
    log_interval: int = 10
    # "auto": <log_dir>/tb_logs when the tensorboard package is installed (silently none otherwise);
    # a folder: there (a warning when the package is missing); None: no TensorBoard.
    tensorboard_dir: str | None = "auto"
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_exp_name: str | None = None
    log_dir: str | None = None  # metrics.jsonl and plots; None: checkpoint.save


@dataclass
class PeftConfig:
    """LoRA / DoRA with Megatron Bridge's field names (megatron/bridge/peft/lora.py, dora.py)."""

    scheme: Literal["lora", "dora"] = "lora"
    dim: int = DEFAULT_RANK
    alpha: float = DEFAULT_ALPHA["lora"]
    dropout: float = 0.0
    dropout_position: Literal["pre", "post"] = "pre"
    target_modules: list[str] = field(default_factory=lambda: list(PEFT_TARGETS))
    exclude_modules: list[str] = field(default_factory=list)
    lora_A_init_method: Literal["xavier", "uniform", "normal"] = "xavier"
    lora_B_init_method: Literal["zero"] = "zero"

    @classmethod
    def default(cls, scheme: str, **changes) -> "PeftConfig":
        """Megatron Bridge's defaults (minibridge.peft: LoRA dim 32 alpha 32, DoRA dim 32 alpha 64)."""
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise ConfigError(f"peft scheme {scheme!r} is not supported; expected 'lora', 'dora' or None")
        return cls(scheme=scheme, **{"alpha": DEFAULT_ALPHA[scheme], **changes})


@dataclass
class DistributedInitConfig:
    """Megatron Bridge's `dist` section (megatron/bridge/training/config.py, DistributedInitConfig)."""

    # torch FSDP2 (fully_shard) over the data-parallel ranks instead of the bucketed all-reduce:
    # parameters, gradients and optimizer state sharded (minibridge.parallel.fsdp); ZeRO-1
    # (optimizer.use_distributed_optimizer) is subsumed and ignored.
    use_torch_fsdp2: bool = False
    # Free each block's gathered parameters after its forward and gather them again in backward.
    # Megatron-LM keeps this on TorchFullyShardedDataParallelConfig (a ddp config, which we lack).
    reshard_after_forward: bool = True


SECTIONS = {
    "model": ModelSettings, "train": TrainingConfig, "optimizer": OptimizerConfig, "scheduler": SchedulerConfig,
    "dataset": DatasetConfig, "checkpoint": CheckpointConfig, "logger": LoggerConfig, "peft": PeftConfig,
    "dist": DistributedInitConfig, "ddp": DistributedDataParallelConfig,
}


@dataclass
class ConfigContainer:
    model: ModelSettings
    train: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ddp: DistributedDataParallelConfig = field(default_factory=DistributedDataParallelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    peft: PeftConfig | None = None
    mixed_precision: str = "bf16_mixed"
    dist: DistributedInitConfig = field(default_factory=DistributedInitConfig)

    @property
    def lr_decay_iters(self) -> int:
        return self.scheduler.lr_decay_iters or self.train.train_iters

    def validate(self) -> "ConfigContainer":
        """Cross-checks that need no world size; raises ConfigError naming the keys involved."""
        _validate(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # tuples (layer_types) become lists; json.dumps takes it as is

    @classmethod
    def from_dict(cls, data: dict) -> "ConfigContainer":
        data = dict(data)
        reject_unknown_keys("", data, [f.name for f in fields(cls)])
        kwargs = {}
        for name, section in SECTIONS.items():
            if name in data and data[name] is not None:
                kwargs[name] = _section_from_dict(name, section, data[name])
        if "model" not in kwargs:
            raise ConfigError("from_dict: the 'model' section is missing; expected the output of to_dict()")
        if "mixed_precision" in data:
            kwargs["mixed_precision"] = data["mixed_precision"]
        return cls(**kwargs)


def _section_from_dict(name: str, section: type, data: dict):
    data = dict(data)
    reject_unknown_keys(f"{name}.", data, [f.name for f in fields(section)])
    if section is ModelSettings:
        data["config"] = ModelConfig.from_dict(data["config"])
    return section(**data)


# ---------------------------------------------------------------------------------------------------
# validate()
# ---------------------------------------------------------------------------------------------------


def _positive(key: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r}: expected a positive integer")


def _validate(c: ConfigContainer) -> None:
    m, t, d, ck = c.model, c.train, c.dataset, c.checkpoint
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
                "seq_length", "make_vocab_size_divisible_by"):
        _positive(f"model.{key}", getattr(m, key))
    _positive("model.virtual_pipeline_model_parallel_size", m.virtual_pipeline_model_parallel_size, allow_none=True)
    for key in ("train_iters", "global_batch_size", "micro_batch_size", "eval_iters"):
        _positive(f"train.{key}", getattr(t, key))
    _positive("train.eval_interval", t.eval_interval, allow_none=True)
    _positive("checkpoint.save_interval", ck.save_interval)
    _positive("checkpoint.keep_last", ck.keep_last, allow_none=True)
    _positive("logger.log_interval", c.logger.log_interval)
    if isinstance(t.max_skipped_steps, bool) or not isinstance(t.max_skipped_steps, int) or t.max_skipped_steps < 0:
        raise ConfigError(f"train.max_skipped_steps={t.max_skipped_steps!r}: expected an integer >= 0")
    _check_context_length(m)
    if t.global_batch_size % t.micro_batch_size:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} is not divisible by train.micro_batch_size="
            f"{t.micro_batch_size}; the global batch is micro_batch_size * data_parallel_size * accumulation steps"
        )
    if d.seq_length != m.seq_length:
        raise ConfigError(f"dataset.seq_length={d.seq_length} differs from model.seq_length={m.seq_length}; set one "
                          f"(an override of either sets both)")
    _validate_layout(m)
    for key in ("use_torch_fsdp2", "reshard_after_forward"):
        if not isinstance(getattr(c.dist, key), bool):
            raise ConfigError(f"dist.{key}={getattr(c.dist, key)!r}: expected true or false")
    _validate_optimizer(c)
    _validate_data(d, ck)
    if d.packing and m.context_parallel_size > 1:
        raise ConfigError(f"dataset.packing=true with model.context_parallel_size={m.context_parallel_size} is not "
                          f"supported yet; set one of them off")
    if c.mixed_precision not in PRECISIONS:
        raise ConfigError(choice_message("mixed_precision", c.mixed_precision, PRECISIONS))
    if c.mixed_precision in LOW_PRECISION:
        _check_low_precision(c.mixed_precision)
    if c.peft is not None:
        _validate_peft(c.peft, ck)
    if ck.export_hf_on_finish is True and not ck.save:
        raise ConfigError("checkpoint.export_hf_on_finish=true exports to <checkpoint.save>/hf, but checkpoint.save "
                          "is not set; set checkpoint.save or give export_hf_on_finish a folder")


def _check_context_length(m: ModelSettings) -> None:
    """Positions past max_position_embeddings were never trained (and RoPE scaling is tuned to it)."""
    limit = m.config.max_position_embeddings
    if limit is not None and m.seq_length > limit:
        raise ConfigError(
            f"model.seq_length={m.seq_length} exceeds the model's max_position_embeddings={limit}; to extend the "
            f"context, raise model.max_position_embeddings together with a RoPE scaling (model.rope.rope_type="
            f"linear with model.rope.factor={-(-m.seq_length // limit)}, or llama3 scaling), or lower model.seq_length")


def _validate_layout(m: ModelSettings) -> None:
    """The layout against the model and seq_length (a LayoutError is a ConfigError): parallel/dims.py."""
    for key in ("pipeline_model_parallel_size", "tensor_model_parallel_size"):
        _positive(f"model.{key}", getattr(m, key))
    m.parallel_config().validate(m.config, m.seq_length)


def _validate_optimizer(c: ConfigContainer) -> None:
    _positive("scheduler.lr_decay_iters", c.scheduler.lr_decay_iters, allow_none=True)
    where = "scheduler.lr_decay_iters" if c.scheduler.lr_decay_iters else "train.train_iters"
    validate_optimizer(c.optimizer, c.scheduler, c.lr_decay_iters, where)
    _positive("ddp.bucket_size", c.ddp.bucket_size, allow_none=True)
    if not isinstance(c.ddp.overlap_grad_reduce, bool):
        raise ConfigError(f"ddp.overlap_grad_reduce={c.ddp.overlap_grad_reduce!r}: expected true or false")


def _validate_data(d: DatasetConfig, ck: CheckpointConfig) -> None:
    _positive("dataset.seq_length", d.seq_length)
    if d.num_workers < 0:
        raise ConfigError(f"dataset.num_workers={d.num_workers}: expected >= 0")
    _validate_hf(d) if d.kind == "hf" else None
    if d.kind not in ("mock", "hf") and not d.data_paths:
        raise ConfigError(f"dataset.kind={d.kind!r} needs dataset.data_paths (a list of files or prefixes); "
                          f"use dataset.kind=mock for random tokens")
    if d.blend_weights is not None and len(d.blend_weights) != len(d.data_paths):
        raise ConfigError(f"dataset.blend_weights has {len(d.blend_weights)} entries but dataset.data_paths has "
                          f"{len(d.data_paths)}; give one weight per path")
    if d.blend_weights is not None and (min(d.blend_weights, default=1) < 0 or sum(d.blend_weights) <= 0):
        raise ConfigError(f"dataset.blend_weights={d.blend_weights}: expected non-negative weights with a positive sum")
    if not re.fullmatch(r"\s*\d+(\.\d+)?\s*(,\s*\d+(\.\d+)?\s*){0,2}", d.split):
        raise ConfigError(f"dataset.split={d.split!r}: expected up to three comma-separated numbers, e.g. '9999,8,2'")
    if d.kind in ("jsonl", "sft", "hf") and not (d.tokenizer or ck.pretrained_checkpoint):
        raise ConfigError(f"dataset.kind={d.kind!r} tokenizes text: set dataset.tokenizer (an HF tokenizer folder) "
                          f"or checkpoint.pretrained_checkpoint (its tokenizer is used)")


def _validate_hf(d: DatasetConfig) -> None:
    if d.data_paths:  # a fine-tuning recipe's SQuAD default, then data_paths given: say which kind they are
        raise ConfigError(f"dataset.data_paths={d.data_paths} with dataset.kind=hf: set dataset.kind=sft for prompt/"
                          f"completion JSONL (--dataset local-jsonl), indexed for .bin/.idx, jsonl for raw text")
    if d.preset is not None and d.preset not in PRESETS:
        raise ConfigError(choice_message("dataset.preset", d.preset, tuple(PRESETS)))
    if not (d.preset or d.hf_path) or (d.val_proportion is not None and not 0 <= d.val_proportion < 1):
        raise ConfigError(f"dataset.kind=hf needs dataset.hf_path (hub id, local folder or file) or dataset.preset "
                          f"(squad, gsm8k, tulu3, ...), and val_proportion in [0, 1) (got {d.val_proportion})")


def _validate_peft(p: PeftConfig, ck: CheckpointConfig) -> None:
    _positive("peft.dim", p.dim)
    if p.alpha <= 0:
        raise ConfigError(f"peft.alpha={p.alpha}: expected a positive number")
    if not 0 <= p.dropout < 1:
        raise ConfigError(f"peft.dropout={p.dropout}: expected a value in [0, 1)")
    if p.scheme == "dora" and p.dropout_position != "pre":
        raise ConfigError("peft.dropout_position='post' is not supported by DoRA (Megatron Bridge asserts 'pre')")
    if not p.target_modules:
        raise ConfigError("peft.target_modules is empty: nothing would be trained")
    for name in p.target_modules + p.exclude_modules:
        if name not in PEFT_TARGETS + PEFT_MODULES and "*" not in name and "." not in name:
            raise ConfigError(choice_message("peft.target_modules entry", name, PEFT_TARGETS + PEFT_MODULES,
                                              extra=" (or a wildcard pattern such as '*.layers.0.*.linear_qkv')"))
    if not ck.pretrained_checkpoint:
        raise ConfigError(f"peft.scheme={p.scheme!r} trains adapters on frozen weights, so it needs "
                          f"checkpoint.pretrained_checkpoint (--pretrained-checkpoint DIR); "
                          f"for full training set peft=none")


def _check_low_precision(name: str) -> None:
    need = LOW_PRECISION[name]
    if not torch.cuda.is_available():
        raise ConfigError(f"mixed_precision={name!r} needs a CUDA GPU with compute capability >= "
                          f"{need[0]}.{need[1]} (FP8/FP4 matmuls have no CPU implementation); on CPU use "
                          f"mixed_precision=bf16_mixed or fp32")
    have = torch.cuda.get_device_capability()
    if have < need:
        raise ConfigError(f"mixed_precision={name!r} needs compute capability >= {need[0]}.{need[1]}; this GPU "
                          f"({torch.cuda.get_device_name()}) has {have[0]}.{have[1]}; use mixed_precision=bf16_mixed")


def choice_message(key: str, value, choices, extra: str = "") -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{key}={value!r}: expected one of {', '.join(map(str, choices))}{extra}{hint}"
