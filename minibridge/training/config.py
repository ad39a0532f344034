"""Training configuration: one dataclass per concern, grouped like Megatron Bridge's ConfigContainer (below).

Field names are Megatron Bridge's so its users' overrides (`train.global_batch_size=64`) work unchanged.
`validate()` checks what can be checked without knowing the world size (that happens at launch).
`to_dict()` / `from_dict()` round-trip through JSON, for saving next to checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Literal

from ..errors import ConfigError, reject_unknown_keys
from ..models.config import ModelConfig
from ..parallel.dims import MegatronLayout
from ..peft.apply import DEFAULT_ALPHA, DEFAULT_RANK, DEFAULT_TARGETS, SCHEMES
from .optimizer_config import (  # sections re-exported here
    DistributedDataParallelConfig, OptimizerConfig, SchedulerConfig,
)
from .validation import validate

@dataclass
class ModelSettings(MegatronLayout):
    """The architecture (`config`), its parallel layout (MegatronLayout's fields, in minibridge.parallel) and
    how it trains; `parallel_config()` gives the layout as ParallelConfig."""

    seq_length: int = 8192  # (MegatronLayout's field, here with Megatron Bridge's recipe default)
    compile: bool = False  # torch.compile each block (minibridge.parallel.parallelize)
    # Megatron's deterministic_mode: torch.use_deterministic_algorithms + a fixed cuBLAS workspace (training.loop).
    deterministic_mode: bool = False
    # How a global batch's loss is normalised for the gradient (Megatron-Core's name and default, which every
    # Llama 3 / Gemma 3 recipe of Megatron Bridge keeps). False: each micro-batch's loss is the mean over its
    # own loss tokens, divided by the number of micro-batches, and data-parallel ranks average. True: every
    # loss token of the global batch weighs the same (sum over it / its token count). The two agree when
    # every micro-batch holds as many loss tokens (pretraining); on SFT data they do not. training.loop.
    calculate_per_token_loss: bool = False


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
    # Planned and preempted stops (Megatron Bridge's names; training.stopping): on SIGTERM / SIGUSR1 / SIGINT /
    # SIGHUP, every `exit_interval` iterations, or after `exit_duration_in_mins` of training, the run saves
    # a checkpoint and exits 0. The signal handler is on by default here (Megatron Bridge's is off).
    exit_signal_handler: bool = True
    exit_interval: int | None = None
    exit_duration_in_mins: float | None = None

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
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
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
    model: ModelSettings  # the architecture (ModelConfig) + parallel layout + seq_length
    train: TrainingConfig = field(default_factory=TrainingConfig)  # iterations, batch sizes, eval cadence, seed
    # Adam hyper-parameters, clipping, ZeRO-1; lr warmup / decay, weight-decay schedule (optimizer_config.py)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # overlapped gradient reduction, bucket size (optimizer_config.py)
    ddp: DistributedDataParallelConfig = field(default_factory=DistributedDataParallelConfig)
    # mock / indexed / jsonl / sft / Hugging Face data, tokenizer, packing
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # save / load / pretrained / HF export
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # log cadence, tensorboard, wandb
    peft: PeftConfig | None = None  # None: full training
    mixed_precision: str = "bf16_mixed"  # a Megatron Bridge recipe name: "bf16_mixed", "fp32", ...
    dist: DistributedInitConfig = field(default_factory=DistributedInitConfig)  # use_torch_fsdp2 (FSDP2 over dp)

    @property
    def lr_decay_iters(self) -> int:
        return self.scheduler.lr_decay_iters or self.train.train_iters

    def validate(self) -> "ConfigContainer":
        """Cross-checks that need no world size; raises ConfigError naming the keys involved (validation.py)."""
        validate(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # tuples (layer_types) become lists; json.dumps takes it as is

    @classmethod
    def from_dict(cls, data: dict) -> "ConfigContainer":
        reject_unknown_keys("", data, [f.name for f in fields(cls)])
        if data.get("model") is None:
            raise ConfigError("from_dict: the 'model' section is missing; expected the output of to_dict()")
        return cls(**{name: _section_from_dict(name, SECTIONS[name], value) if name in SECTIONS else value
                      for name, value in data.items() if value is not None})


def _section_from_dict(name: str, section: type, data: dict):
    data = dict(data)
    reject_unknown_keys(f"{name}.", data, [f.name for f in fields(section)])
    if section is ModelSettings:
        data["config"] = ModelConfig.from_dict(data["config"])
    return section(**data)
