"""A Hugging Face model folder: its config, its (possibly sharded) safetensors, its side files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .safetensors_io import CorruptCheckpointError, TensorInfo, read_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Files an export copies from the source folder so the result is a complete HF model folder.
SIDE_FILES = (
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "processor_config.json",
)


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (safetensors and small files only).

    `HF_TOKEN` and `HF_HOME` are honoured by huggingface_hub itself.
    """
    local = Path(path)
    if local.is_dir():
        return local
    name = str(path)
    if local.exists() or name.count("/") != 1 or name.startswith((".", "/")):
        raise FileNotFoundError(f"{name}: not a model folder (and not a hub id of the form org/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{name}: no such folder, and huggingface_hub is not installed to fetch it") from None
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.jinja"]
    return Path(snapshot_download(name, allow_patterns=patterns, token=os.environ.get("HF_TOKEN")))


class HFFolder:
    """Tensor directory of a model folder: name -> TensorInfo, across every shard."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.tensors: dict[str, TensorInfo] = {}
        for path in self._shard_paths():
            for name, info in read_header(path).items():
                if name in self.tensors:
                    raise CorruptCheckpointError(f"{path}: tensor {name!r} also appears in {self.tensors[name].path}")
                self.tensors[name] = info
        self._check_index()

    def _shard_paths(self) -> list[Path]:
        index = self.folder / INDEX_NAME
        if index.is_file():
            self.weight_map = self._read_index(index)
            paths = [self.folder / f for f in dict.fromkeys(self.weight_map.values())]
            for p in paths:
                if not p.is_file():
                    raise FileNotFoundError(f"{index} names shard {p.name}, which is missing from {self.folder}")
            return paths
        self.weight_map = None
        if (self.folder / SINGLE_NAME).is_file():
            return [self.folder / SINGLE_NAME]
        found = sorted(self.folder.glob("*.safetensors"))
        if not found:
            raise FileNotFoundError(f"{self.folder}: no {SINGLE_NAME}, {INDEX_NAME} or other *.safetensors file")
        return found

    @staticmethod
    def _read_index(index: Path) -> dict[str, str]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CorruptCheckpointError(f"{index}: corrupt index, expected a 'weight_map' object ({err!r})") from None
        return weight_map

    def _check_index(self):
        for name, file in (self.weight_map or {}).items():
            if name not in self.tensors:
                raise CorruptCheckpointError(f"{self.folder / INDEX_NAME} lists {name!r} in {file}, which lacks it")

    def side_files(self) -> list[Path]:
        return [self.folder / n for n in SIDE_FILES if (self.folder / n).is_file()]

    def total_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())
