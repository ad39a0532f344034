"""The names of a checkpoint folder, ours and Megatron's alike (no torch here: recipes read them too).

    <save>/latest_checkpointed_iteration.txt      the last complete iteration
    <save>/iter_NNNNNNN/run.json                  marks ours
    <save>/iter_NNNNNNN/metadata.json             {"sharded_backend": "torch_dist", ...}: marks Megatron-Core's
    <save>/iter_NNNNNNN/run_config.yaml           the resolved configuration (Megatron Bridge's name; ours too)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CorruptCheckpointError

LATEST = "latest_checkpointed_iteration.txt"
RUN_FILE = "run.json"
RUN_CONFIG_FILE = "run_config.yaml"  # Megatron Bridge's name for the resolved configuration of a checkpoint
MEGATRON_MARKER = "metadata.json"  # {"sharded_backend": "torch_dist"} in every Megatron-Core iteration folder


def iteration_dir(save: str | Path, iteration: int) -> Path:
    return Path(save) / f"iter_{iteration:07d}"


def latest_iteration(save: str | Path) -> int | None:
    path = Path(save) / LATEST
    if not path.is_file():
        return None
    text = path.read_text(errors="replace").strip()
    if not text.isdigit() or not iteration_dir(save, int(text)).is_dir():
        raise CorruptCheckpointError(f"{path}: expected the number of a complete iteration folder, found {text!r}")
    return int(text)


def iteration_folder(path: str | Path) -> Path:
    """The latest iteration folder of a save folder, or `path` itself (any checkpoint's layout)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; expected a checkpoint (a save folder with "
                                f"{LATEST}, or one of its iter_NNNNNNN folders)")
    return iteration_dir(folder, latest_iteration(folder)) if (folder / LATEST).is_file() else folder
