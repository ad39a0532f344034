"""Megatron-Core `torch_dist` checkpoints (written by Megatron Bridge or Megatron-LM), read without Megatron-Core.

    <save>/latest_checkpointed_iteration.txt    as ours
    <save>/iter_NNNNNNN/.metadata, __R_W.distcp DCP files
    <save>/iter_NNNNNNN/metadata.json           {"sharded_backend": "torch_dist", ...}: the Megatron marker
    <save>/iter_NNNNNNN/run_config.yaml         Megatron Bridge only: the resolved configuration

The same safety as our own checkpoints (reader.py), widened by exactly what Megatron's writer pickles:
`.metadata` may hold torch's save plans (`all_local_plans`: SavePlan, WriteItem, WriteItemType,
TensorWriteData) and, from older Megatron-Core, `MCoreMetadata`, which is met here by an inert stand-in
of that name (a Metadata with one more field). The `.distcp` files hold pickled items, `common_state/*`
(iteration, checkpoint version) and each layer's `<module>._extra_state/*` (Transformer Engine's FP8
state): both are allowed to be listed and never read (nothing here needs them), and `common.pt`
(older versions) is never opened. Model keys carry no `model.` prefix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

from ..errors import CorruptCheckpointError
from .folder import hf_hint
from .names import MEGATRON_MARKER, RUN_FILE, iteration_folder
from .reader import SafeFileSystemReader

MARKER = MEGATRON_MARKER
BACKEND = "torch_dist"
MCORE_STRATEGY_MODULE = "megatron.core.dist_checkpointing.strategies.torch"


@dataclass
class MCoreMetadata(Metadata):
    """Stand-in for Megatron-Core's Metadata subclass (older versions pickle it): data only."""

    mcore_data: dict | None = None


_PLAN_CLASSES = (SavePlan, WriteItem, TensorWriteData)
_MEGATRON_GLOBALS = dict(SafeFileSystemReader.ALLOWED_GLOBALS)
_MEGATRON_GLOBALS.update({(c.__module__, c.__qualname__): c for c in (*_PLAN_CLASSES, WriteItemType)})
_MEGATRON_GLOBALS[(MCORE_STRATEGY_MODULE, "MCoreMetadata")] = MCoreMetadata
# pickled items of the .distcp files, listed in .metadata and never read
UNREAD = re.compile(r"common_state(/.*)?|.*\._extra_state(/.*)?")


class MegatronReader(SafeFileSystemReader):
    ALLOWED_GLOBALS = _MEGATRON_GLOBALS
    FILLABLE = (*SafeFileSystemReader.FILLABLE, *_PLAN_CLASSES, MCoreMetadata)
    UNREAD_BYTES = UNREAD

    def read_metadata(self, *args, **kwargs):  # read once for the many single-tensor loads of a conversion
        if getattr(self, "_metadata", None) is None:
            self._metadata = super().read_metadata(*args, **kwargs)
        return self._metadata


def megatron_backend(folder: Path) -> str | None:
    """The `sharded_backend` of an iteration folder's metadata.json, or None where there is none."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({err})") from None
    backend = data.get("sharded_backend") if isinstance(data, dict) else None
    return backend if isinstance(backend, str) else None


def checkpoint_kind(path: str | Path) -> tuple[Path, str]:
    """(iteration folder, "minibridge" or "megatron") of a save folder or an iteration folder; a folder
    with neither marker (run.json: ours; metadata.json's sharded_backend: Megatron's) is refused."""
    folder = iteration_folder(path)
    if (folder / RUN_FILE).is_file():
        return folder, "minibridge"
    backend = megatron_backend(folder)
    if backend is None:
        raise FileNotFoundError(f"{folder}: found neither {RUN_FILE} (a minibridge checkpoint) nor {MARKER} with a "
                                f"sharded_backend (a Megatron checkpoint){hf_hint(folder)}")
    if backend != BACKEND:
        raise CorruptCheckpointError(f"{folder / MARKER}: sharded_backend {backend!r}; minibridge reads Megatron's "
                                     f"{BACKEND!r} checkpoints only (convert other formats with Megatron-LM first)")
    if not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"{folder}: incomplete Megatron checkpoint, the DCP .metadata file is missing")
    return folder, "megatron"
