"""`ConfigContainer.validate()`: the checks of a training configuration that need no world size (that happens at
launch), each raising a ConfigError that names the keys involved. It imports nothing from config.py, which calls it.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError
from ..peft.apply import DEFAULT_TARGETS, MEGATRON_NAMES
from .data.presets import PRESETS
from .optimizer_config import validate_optimizer

if TYPE_CHECKING:
    from .config import CheckpointConfig, ConfigContainer, DatasetConfig, ModelSettings, PeftConfig

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
# LoRA/DoRA targets: Megatron's names of the four linear layers of a block (minibridge.peft's defaults) or HF's
# (q_proj, ...); wildcards also allowed.
PEFT_TARGETS = DEFAULT_TARGETS + tuple(MEGATRON_NAMES)


# Settings of a type, checked first (the later checks compute with them); model.X of the architecture too.
# A key ending in `?` may also be null.
TYPED = {
    "a positive integer": (
        "model.tensor_model_parallel_size", "model.pipeline_model_parallel_size", "model.context_parallel_size",
        "model.seq_length", "model.make_vocab_size_divisible_by", "model.vocab_size", "model.hidden_size",
        "model.intermediate_size", "model.num_layers", "model.num_heads", "model.num_kv_heads", "model.head_dim",
        "train.train_iters", "train.global_batch_size", "train.micro_batch_size", "train.eval_iters",
        "checkpoint.save_interval", "logger.log_interval", "dataset.seq_length", "peft.dim",
        "model.virtual_pipeline_model_parallel_size?", "train.eval_interval?", "train.exit_interval?",
        "checkpoint.keep_last?", "scheduler.lr_decay_iters?", "ddp.bucket_size?", "scheduler.lr_wsd_decay_iters?"),
    "an integer >= 0": ("train.max_skipped_steps", "dataset.num_workers", "scheduler.lr_warmup_iters"),
    "a finite number": ("optimizer.lr", "optimizer.min_lr", "scheduler.lr_warmup_init"),
    "a number >= 0": ("optimizer.weight_decay", "optimizer.adam_eps", "optimizer.clip_grad",
                      "scheduler.start_weight_decay?", "scheduler.end_weight_decay?"),
    "a number in [0, 1)": ("optimizer.adam_beta1", "optimizer.adam_beta2", "peft.dropout"),
    "a positive number": ("peft.alpha", "train.exit_duration_in_mins?"),
    "true or false": ("dist.use_torch_fsdp2", "dist.reshard_after_forward", "ddp.overlap_grad_reduce"),
}
_IS = {"a positive integer": lambda v: type(v) is int and v >= 1,
       "an integer >= 0": lambda v: type(v) is int and v >= 0,
       "a finite number": lambda v: type(v) in (int, float) and math.isfinite(v),
       "a number >= 0": lambda v: type(v) in (int, float) and 0 <= v < math.inf,
       "a number in [0, 1)": lambda v: type(v) in (int, float) and 0 <= v < 1,
       "a positive number": lambda v: type(v) in (int, float) and 0 < v < math.inf,
       "true or false": lambda v: type(v) is bool}


def _check_types(c) -> None:
    for kind, keys in TYPED.items():
        for key in keys:
            section, name = key.rstrip("?").split(".")
            owner = getattr(c, section)  # None: the peft section of full training
            owner = owner.config if section == "model" and not hasattr(owner, name) else owner
            value = None if owner is None else getattr(owner, name)
            if not (value is None and (owner is None or key.endswith("?")) or _IS[kind](value)):
                raise ConfigError(f"{key.rstrip('?')}={value!r}: expected {kind}")


def validate(c) -> None:
    """Every check of a ConfigContainer `c`."""
    m, t, d, ck = c.model, c.train, c.dataset, c.checkpoint
    _check_types(c)
    _check_context_length(m)
    if t.global_batch_size % t.micro_batch_size:
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} is not divisible by train.micro_batch_size="
                          f"{t.micro_batch_size}; the global batch is micro_batch_size * data_parallel_size * "
                          f"accumulation steps")
    if d.seq_length != m.seq_length:
        raise ConfigError(f"dataset.seq_length={d.seq_length} differs from model.seq_length={m.seq_length}; set one "
                          f"(an override of either sets both)")
    m.validate_layout()  # the layout against the model and seq_length (a LayoutError is a ConfigError)
    _validate_optimizer(c)
    _validate_data(d, ck)
    fine_tuning = d.kind == "sft" or (d.kind == "hf" and not d.text_column)  # answers only carry the loss
    if m.context_parallel_size > 1 and fine_tuning and not m.calculate_per_token_loss:
        raise ConfigError(f"fine-tuning (dataset.kind={d.kind}) with model.context_parallel_size="
                          f"{m.context_parallel_size} needs model.calculate_per_token_loss=true (Megatron Bridge "
                          f"refuses it too): answers fall unevenly over the cp ranks, so a mean over each rank's "
                          f"own tokens weighs them unevenly, and a rank whose share holds no answer token has none "
                          f"to average")
    if d.packing and m.context_parallel_size > 1:
        raise ConfigError(f"dataset.packing=true with model.context_parallel_size={m.context_parallel_size} is not "
                          f"supported yet; set one of them off")
    if c.mixed_precision not in PRECISIONS:
        raise ConfigError(choice_message("mixed_precision", c.mixed_precision, PRECISIONS))
    if c.mixed_precision in LOW_PRECISION:
        _check_low_precision(c.mixed_precision)
    if c.mixed_precision == "fp16_mixed":
        raise ConfigError("mixed_precision='fp16_mixed' needs dynamic loss scaling (Megatron's DynamicGradScaler), "
                          "which minibridge does not implement, and fp16 gradients overflow without it; use "
                          "mixed_precision=bf16_mixed (the same memory, no loss scaling needed) or fp32")
    if c.peft is not None:
        _validate_peft(c.peft, ck)
    if ck.export_hf_on_finish is True and not ck.save:
        raise ConfigError("checkpoint.export_hf_on_finish=true exports to <checkpoint.save>/hf, but checkpoint.save "
                          "is not set; set checkpoint.save or give export_hf_on_finish a folder")


def _check_context_length(m: ModelSettings) -> None:
    """Positions past max_position_embeddings were never trained (and RoPE scaling is tuned to it)."""
    limit = m.config.max_position_embeddings
    if limit is not None and m.seq_length > limit:
        raise ConfigError(f"model.seq_length={m.seq_length} exceeds the model's max_position_embeddings={limit}; to "
                          f"extend the context, raise model.max_position_embeddings together with a RoPE scaling "
                          f"(model.rope.rope_type=linear with model.rope.factor={-(-m.seq_length // limit)}, or llama3 "
                          f"scaling), or lower model.seq_length")


def _validate_optimizer(c: ConfigContainer) -> None:
    where = "scheduler.lr_decay_iters" if c.scheduler.lr_decay_iters else "train.train_iters"
    validate_optimizer(c.optimizer, c.scheduler, c.lr_decay_iters, where)
    precision = c.optimizer.state_precision()
    if precision is not None and c.dist.use_torch_fsdp2 and precision.main_grads_dtype != "fp32":
        raise ConfigError(f"optimizer.main_grads_dtype={c.optimizer.main_grads_dtype!r} with "
                          f"dist.use_torch_fsdp2=true: FSDP2 reduces gradients into its fp32 parameter shards; "
                          f"set main_grads_dtype=fp32")


def _validate_data(d: DatasetConfig, ck: CheckpointConfig) -> None:
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
    if p.scheme == "dora" and p.dropout_position != "pre":
        raise ConfigError("peft.dropout_position='post' is not supported by DoRA (Megatron Bridge asserts 'pre')")
    if not p.target_modules:
        raise ConfigError("peft.target_modules is empty: nothing would be trained")
    for name in p.target_modules + p.exclude_modules:
        if name not in PEFT_TARGETS and "*" not in name and "." not in name:
            raise ConfigError(choice_message("peft.target_modules entry", name, PEFT_TARGETS,
                                              extra=" (or a wildcard pattern such as '*.layers.0.*.linear_qkv')"))
    if not ck.pretrained_checkpoint:
        raise ConfigError(f"peft.scheme={p.scheme!r} trains adapters on frozen weights, so it needs "
                          f"checkpoint.pretrained_checkpoint (--pretrained-checkpoint DIR); "
                          f"for full training set peft=none")


def _check_low_precision(name: str) -> None:
    """FP8 / FP4 training (Transformer Engine's recipes in Megatron Bridge) is out of scope: refused by name on
    every machine, never a silent plain-bf16 run recorded under the low-precision name."""
    need = LOW_PRECISION[name]
    where = (f"this GPU ({torch.cuda.get_device_name()}) could run its FP8/FP4 matmuls, but "
             if torch.cuda.is_available() and torch.cuda.get_device_capability() >= need else "")
    raise ConfigError(f"mixed_precision={name!r}: {where}minibridge does not implement FP8/FP4 training (Megatron "
                      f"Bridge does it with Transformer Engine, on compute capability >= {need[0]}.{need[1]}); it "
                      f"would run in plain bf16 under that name. Use mixed_precision=bf16_mixed")


def choice_message(key: str, value, choices, extra: str = "") -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{key}={value!r}: expected one of {', '.join(map(str, choices))}{extra}{hint}"
