"""Learning-rate and weight-decay schedules: Megatron-Core's OptimizerParamScheduler, as pure functions.

Megatron counts its schedule in samples: `num_steps` grows by train.global_batch_size after each
successful update (Megatron Bridge steps the scheduler only then; a skipped iteration does not advance
it), and iteration k trains at the value for `num_steps = (k - 1) x global_batch_size`. So the first
iteration runs at `lr_warmup_init` (default 0), the second at lr / warmup_iters, and warmup ends at
exactly lr. `LRSchedule(updates)` takes the number of updates done so far and follows Megatron-Core
0.19's get_lr expression by expression (samples, not iterations; `min_lr + coeff * delta_lr` with
`coeff = 0.5 * (cos(pi * ratio) + 1)`), so the floats are Megatron's own
(tests/training/test_megatron_schedule.py compares them with values its real code produced):
  warmup    init + (lr - init) * num_steps / warmup_steps            while num_steps <= warmup_steps
  cosine    min + 0.5 * (cos(pi * ratio) + 1) * (lr - min)           ratio = (num - warmup) / (decay - warmup)
  linear    min + (1 - ratio) * (lr - min)
  constant  lr
  WSD       warmup, stable at lr, then the last `wsd_decay_iters` iterations decay (linear, cosine,
            exponential or minus_sqrt) to min_lr: the warmup-stable-decay schedule of MiniCPM.
  past decay_steps: min_lr
WeightDecaySchedule does the same for the weight decay (scheduler.start/end_weight_decay).
Being functions of the update count, the schedules need no state in a checkpoint beyond it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

STYLES = ("cosine", "linear", "constant", "WSD")
WSD_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")
WEIGHT_DECAY_STYLES = ("constant", "linear", "cosine")


@dataclass
class LRSchedule:
    lr: float
    min_lr: float = 0.0
    warmup_iters: int = 0
    decay_iters: int = 1
    style: str = "cosine"
    wsd_decay_iters: int = 0
    wsd_decay_style: str = "linear"
    warmup_init: float = 0.0  # scheduler.lr_warmup_init: the first iteration's learning rate
    samples_per_iter: int = 1  # train.global_batch_size: Megatron's num_steps unit
    warmup_fraction: float | None = None  # scheduler.lr_warmup_fraction: warmup = fraction x decay samples

    def __post_init__(self):
        if self.style not in STYLES:
            raise ConfigError(f"lr_decay_style {self.style!r}: expected one of {STYLES}")
        if self.wsd_decay_style not in WSD_STYLES:
            raise ConfigError(f"lr_wsd_decay_style {self.wsd_decay_style!r}: expected one of {WSD_STYLES}")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr {self.min_lr} is above lr {self.lr}")
        if not 0 <= self.warmup_init <= self.lr:
            raise ConfigError(f"lr_warmup_init {self.warmup_init}: expected 0 <= lr_warmup_init <= lr {self.lr}")
        g = self.samples_per_iter
        self.decay_steps = self.decay_iters * g
        self.wsd_decay_steps = self.wsd_decay_iters * g
        # Megatron Bridge: lr_warmup_steps = lr_warmup_fraction * lr_decay_steps (a float), else iters x batch
        self.warmup_steps = (self.warmup_fraction * self.decay_steps if self.warmup_fraction is not None
                             else self.warmup_iters * g)

    def __call__(self, updates: int) -> float:
        """Learning rate of the iteration that follows `updates` successful optimizer updates."""
        num_steps = updates * self.samples_per_iter
        if self.warmup_steps > 0 and num_steps <= self.warmup_steps:
            return self.warmup_init + ((self.lr - self.warmup_init) * float(num_steps) / float(self.warmup_steps))
        if self.style == "constant":
            return self.lr
        if num_steps > self.decay_steps:
            return self.min_lr
        decay_ratio = float(num_steps - self.warmup_steps) / float(self.decay_steps - self.warmup_steps)
        delta_lr = self.lr - self.min_lr
        if self.style == "linear":
            coeff = 1.0 - decay_ratio
        elif self.style == "cosine":
            coeff = 0.5 * (math.cos(math.pi * decay_ratio) + 1.0)
        else:  # WSD
            anneal_start = self.decay_steps - self.wsd_decay_steps
            coeff = 1.0 if num_steps <= anneal_start else _wsd_coeff(
                self.wsd_decay_style, float(num_steps - anneal_start) / float(self.wsd_decay_steps))
        return self.min_lr + coeff * delta_lr


def _wsd_coeff(style: str, ratio: float) -> float:
    if style == "linear":
        return 1.0 - ratio
    if style == "cosine":
        return 0.5 * (math.cos(math.pi * ratio) + 1.0)
    if style == "exponential":
        return (2.0 * math.pow(0.5, ratio)) - 1.0
    return 1.0 - math.sqrt(ratio)  # minus_sqrt


@dataclass
class WeightDecaySchedule:
    """Weight decay for optimizer step `step` (0-based), as Megatron's OptimizerParamScheduler.get_wd with
    `step` steps already taken: from `start` to `end` over `incr_iters` steps, then `end`.

      constant  end (start == end)
      linear    start + (end - start) * ratio
      cosine    start + (end - start) * 0.5 * (cos(pi * (1 - ratio)) + 1)      ratio = step / incr_iters
    """

    start: float
    end: float
    incr_iters: int
    style: str = "constant"

    def __post_init__(self):
        if self.style not in WEIGHT_DECAY_STYLES:
            raise ConfigError(f"weight_decay_incr_style {self.style!r}: expected one of {WEIGHT_DECAY_STYLES}")
        if not 0 <= self.start <= self.end:
            raise ConfigError(f"weight decay from {self.start} to {self.end}: expected 0 <= start <= end")
        if self.style == "constant" and self.start != self.end:
            raise ConfigError(f"constant weight decay needs start == end, got {self.start} and {self.end}")

    def __call__(self, step: int) -> float:
        # Megatron divides samples by samples ((step x batch) / (incr_iters x batch)): the same exact
        # rational as step / incr_iters, so the same correctly rounded float.
        if step > self.incr_iters or self.style == "constant":
            return self.end
        ratio = float(step) / float(max(1, self.incr_iters))
        coeff = ratio if self.style == "linear" else 0.5 * (math.cos(math.pi * (1 - ratio)) + 1.0)
        return self.start + coeff * (self.end - self.start)


def schedules_of(config) -> tuple[LRSchedule, WeightDecaySchedule]:
    """The learning-rate and weight-decay schedules of a ConfigContainer (training.config), as the trainer
    steps them: both take the number of successful updates so far."""
    c, s = config, config.scheduler
    lr = LRSchedule(lr=c.optimizer.lr, min_lr=c.optimizer.min_lr, warmup_iters=s.lr_warmup_iters,
                    decay_iters=c.lr_decay_iters, style=s.lr_decay_style, wsd_decay_iters=s.lr_wsd_decay_iters or 0,
                    wsd_decay_style=s.lr_wsd_decay_style, warmup_init=s.lr_warmup_init,
                    samples_per_iter=c.train.global_batch_size, warmup_fraction=s.lr_warmup_fraction)
    weight_decay = WeightDecaySchedule(*s.weight_decay_range(c.optimizer), incr_iters=c.train.train_iters,
                                       style=s.weight_decay_incr_style)
    return lr, weight_decay
