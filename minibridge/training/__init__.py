"""Training: config sections and overrides, data, optimizer and schedules, checkpoints, logging, the loop.

    from minibridge.recipes import build_config
    from minibridge.training import pretrain
    result = pretrain(build_config("llama3_debug_pretrain_config", overrides=["train.train_iters=50"]))
"""

from .config import ConfigContainer, ConfigError
from .loop import Trainer, TrainResult, finetune, pretrain
from .optimizer import MixedPrecisionAdamW

__all__ = ["ConfigContainer", "ConfigError", "MixedPrecisionAdamW", "TrainResult", "Trainer", "finetune", "pretrain"]
