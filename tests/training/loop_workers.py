"""Training runs used by the loop tests, importable by spawned ranks."""

from __future__ import annotations

import json

from minibridge.recipes import build_config
from minibridge.training.loop import Trainer


def run(recipe: str, overrides: list[str], out_file: str | None = None) -> list[float]:
    result = Trainer(build_config(recipe, overrides=overrides)).run()
    if out_file is not None:
        import torch.distributed as dist

        if dist.get_rank() == 0:
            with open(out_file, "w") as f:
                json.dump(result.losses, f)
    return result.losses
