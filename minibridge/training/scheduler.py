"""Learning-rate schedules (Megatron's OptimizerParamScheduler, as a pure function of the step).

Linear warmup from 0 to `lr` over `warmup` steps, then decay to `min_lr` at `decay_iters`:
  cosine    min + (lr - min) * 0.5 * (1 + cos(pi * progress))
  linear    min + (lr - min) * (1 - progress)
  constant  lr
  WSD       warmup, stable at lr, then the last `wsd_decay_iters` steps decay (linear, cosine,
            exponential or minus_sqrt) to min_lr: the warmup-stable-decay schedule of MiniCPM.
WeightDecaySchedule does the same for the weight decay (scheduler.start/end_weight_decay).
Being functions of the step, the schedules need no state in a checkpoint beyond the step itself.
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

    def __post_init__(self):
        if self.style not in STYLES:
            raise ConfigError(f"lr_decay_style {self.style!r}: expected one of {STYLES}")
        if self.wsd_decay_style not in WSD_STYLES:
            raise ConfigError(f"lr_wsd_decay_style {self.wsd_decay_style!r}: expected one of {WSD_STYLES}")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr {self.min_lr} is above lr {self.lr}")

    def __call__(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based)."""
        if self.warmup_iters and step < self.warmup_iters:
            return self.lr * (step + 1) / self.warmup_iters
        if self.style == "constant":
            return self.lr
        if step >= self.decay_iters:
            return self.min_lr
        span = self.lr - self.min_lr
        if self.style == "WSD":
            decay_start = self.decay_iters - self.wsd_decay_iters
            if step < decay_start:
                return self.lr
            progress = (step - decay_start) / max(1, self.wsd_decay_iters)
            factor = {
                "linear": 1 - progress,
                "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
                "exponential": (2 * 0.5**progress) - 1,
                "minus_sqrt": 1 - math.sqrt(progress),
            }[self.wsd_decay_style]
            return self.min_lr + span * factor
        progress = (step - self.warmup_iters) / max(1, self.decay_iters - self.warmup_iters)
        if self.style == "linear":
            return self.min_lr + span * (1 - progress)
        return self.min_lr + span * 0.5 * (1 + math.cos(math.pi * progress))


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
        if step > self.incr_iters or self.style == "constant":
            return self.end
        ratio = step / max(1, self.incr_iters)
        coeff = ratio if self.style == "linear" else 0.5 * (math.cos(math.pi * (1 - ratio)) + 1.0)
        return self.start + coeff * (self.end - self.start)
