"""The optimizer, scheduler and ddp sections of the training configuration (import them from
`minibridge.training.config`), and their checks. Field names and defaults are Megatron Bridge's (its
SchedulerConfig extends Megatron-LM's). Weight decay is scheduled as Megatron's OptimizerParamScheduler does:
each step sets the optimizer's `weight_decay` from start_weight_decay to end_weight_decay (training.scheduler).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from .precision_aware import PRECISION_KEYS, StatePrecision, canonical_dtype, check_precision
from .scheduler import WEIGHT_DECAY_STYLES


@dataclass
class OptimizerConfig:
    # Defaults of Megatron Bridge's distributed_fused_adam_with_cosine_annealing (recipes/utils/optimizer_utils.py).
    optimizer: Literal["adam"] = "adam"
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1  # the param groups' initial value; the scheduler's start/end_weight_decay rule
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = True  # ZeRO-1 over data-parallel ranks (subsumed by dist.use_torch_fsdp2)
    # Megatron-Core's precision-aware optimizer (minibridge.training.precision_aware): storage dtypes of the
    # state, as Megatron-LM's flags spell them ("bf16", "bfloat16" and "torch.bfloat16" alike)
    use_precision_aware_optimizer: bool = False
    store_param_remainders: bool = True  # bf16 models: keep only the lower 16 bits of each fp32 master
    main_grads_dtype: str = "fp32"
    main_params_dtype: str = "fp32"
    exp_avg_dtype: str = "fp32"
    exp_avg_sq_dtype: str = "fp32"
    moment_rounding: Literal["nearest", "stochastic"] = "nearest"  # minibridge's: how fp32 moments become bf16

    def state_precision(self) -> StatePrecision | None:
        """The precision-aware optimizer's settings, dtype names made canonical; None when it is off."""
        if not self.use_precision_aware_optimizer:
            return None
        names = {key: canonical_dtype(getattr(self, key), f"optimizer.{key}") for key in PRECISION_KEYS}
        return StatePrecision(**names, store_param_remainders=self.store_param_remainders,
                              moment_rounding=self.moment_rounding)


@dataclass
class DistributedDataParallelConfig:
    # Megatron Core's names and defaults (megatron/core/distributed/distributed_data_parallel_config.py).
    overlap_grad_reduce: bool = False  # all-reduce gradient buckets during backward (minibridge.parallel.overlap)
    bucket_size: int | None = None  # parameters per bucket; None: 25 MB of fp32 gradients (torch DDP's size)

    def bucket_bytes(self) -> int:
        from ..parallel.data import BUCKET_BYTES

        return BUCKET_BYTES if self.bucket_size is None else 4 * self.bucket_size  # fp32 gradients


@dataclass
class SchedulerConfig:
    lr_warmup_iters: int = 2000
    lr_warmup_fraction: float | None = None  # warmup as a fraction of the decay (Megatron's; lr_warmup_iters=0)
    lr_warmup_init: float = 0.0  # the learning rate warmup starts from (the first iteration's)
    lr_decay_iters: int | None = None  # None: decay over train.train_iters (Megatron's default)
    lr_decay_style: Literal["cosine", "linear", "constant", "WSD"] = "cosine"
    lr_wsd_decay_iters: int | None = None  # WSD only: length of the final decay phase
    lr_wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = "exponential"
    # Weight decay of the param groups that take it, from start to end over train.train_iters (see above).
    start_weight_decay: float | None = None  # None: optimizer.weight_decay
    end_weight_decay: float | None = None  # None: optimizer.weight_decay
    weight_decay_incr_style: Literal["constant", "linear", "cosine"] = "constant"

    def weight_decay_range(self, optimizer: OptimizerConfig) -> tuple[float, float]:
        """(start, end) weight decay, the optimizer's weight_decay standing in for an unset end."""
        start = optimizer.weight_decay if self.start_weight_decay is None else self.start_weight_decay
        end = optimizer.weight_decay if self.end_weight_decay is None else self.end_weight_decay
        return start, end


def validate_optimizer(o: OptimizerConfig, s: SchedulerConfig, decay_iters: int, decay_source: str) -> None:
    """Checks of the two sections (their types: validation.TYPED); `decay_iters` is the lr decay length, named
    `decay_source` in errors."""
    if not (o.lr > 0 and 0 <= o.min_lr <= o.lr):
        raise ConfigError(f"optimizer.lr={o.lr}, optimizer.min_lr={o.min_lr}: expected 0 <= min_lr <= lr and lr > 0")
    _validate_weight_decay(o, s)
    _validate_precision(o)
    if not 0 <= s.lr_warmup_init <= o.lr:
        raise ConfigError(f"scheduler.lr_warmup_init={s.lr_warmup_init}: expected 0 <= lr_warmup_init <= "
                          f"optimizer.lr={o.lr} (warmup rises from it to lr)")
    if s.lr_warmup_fraction is not None:
        if s.lr_warmup_iters != 0:
            raise ConfigError(f"scheduler.lr_warmup_fraction={s.lr_warmup_fraction} with scheduler.lr_warmup_iters="
                              f"{s.lr_warmup_iters}: use one of them (set lr_warmup_iters=0), as Megatron Bridge asks")
        if not 0 <= s.lr_warmup_fraction < 1:
            raise ConfigError(f"scheduler.lr_warmup_fraction={s.lr_warmup_fraction}: expected 0 <= fraction < 1")
    if s.lr_warmup_iters >= decay_iters and s.lr_decay_style != "constant":
        raise ConfigError(f"scheduler.lr_warmup_iters={s.lr_warmup_iters} must be smaller than {decay_source}="
                          f"{decay_iters} (Megatron's scheduler asserts the same); lower the warmup or raise "
                          f"{decay_source}")
    if s.lr_decay_style == "WSD":
        if s.lr_wsd_decay_iters is None:  # (its type: validation.TYPED)
            raise ConfigError(f"scheduler.lr_wsd_decay_iters={s.lr_wsd_decay_iters!r}: expected a positive integer")
        if s.lr_wsd_decay_iters > decay_iters - s.lr_warmup_iters:
            raise ConfigError(f"scheduler.lr_wsd_decay_iters={s.lr_wsd_decay_iters} is longer than the "
                              f"{decay_iters - s.lr_warmup_iters} iterations left after warmup")


def _validate_weight_decay(o: OptimizerConfig, s: SchedulerConfig) -> None:
    """Megatron's asserts (0 <= start <= end; constant needs start == end), as errors naming the keys."""
    if s.weight_decay_incr_style not in WEIGHT_DECAY_STYLES:
        raise ConfigError(f"scheduler.weight_decay_incr_style={s.weight_decay_incr_style!r}: expected one of "
                          f"{', '.join(WEIGHT_DECAY_STYLES)}")
    start, end = s.weight_decay_range(o)
    if end < start:
        raise ConfigError(f"scheduler.end_weight_decay={end} is below scheduler.start_weight_decay={start}: "
                          f"Megatron's weight decay only increases; expected end >= start")
    if s.weight_decay_incr_style == "constant" and start != end:
        raise ConfigError(f"scheduler.weight_decay_incr_style='constant' with start_weight_decay={start} != "
                          f"end_weight_decay={end}; set both equal or use 'linear' / 'cosine'")


def _validate_precision(o: OptimizerConfig) -> None:
    """Megatron's rule: lower-precision state only with the precision-aware optimizer on."""
    precision = o.state_precision()
    if precision is not None:
        check_precision(precision)
        return
    for key in PRECISION_KEYS:
        if canonical_dtype(getattr(o, key), f"optimizer.{key}") != "fp32":
            raise ConfigError(f"optimizer.{key}={getattr(o, key)!r} needs optimizer.use_precision_aware_optimizer="
                              f"true (Megatron-Core asserts the same); without it the state is fp32")
