"""A Hugging Face model folder: its config, its (possibly sharded) safetensors, its side files.

Every file read from a folder is named through `inside`, which refuses a name or a symbolic link that
leads outside it: an index naming `../x.safetensors` or `/etc/passwd`, or a `tokenizer.json` linked to
a file elsewhere, is an UnsafeCheckpointError rather than a read (or a copy into an export). A
huggingface_hub cache snapshot, `.../models--org--name/snapshots/<revision>/`, is made of links into
`../../blobs/`: for such a folder that blobs folder is inside too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ConfigError, UnsafeCheckpointError
from .json_checks import Fields, parse_json
from .safetensors_io import CorruptCheckpointError, TensorInfo, read_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Files an export copies from the source folder so the result is a complete HF model folder.
SIDE_FILES = (
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json", "processor_config.json",
)
# The side files that make up a tokenizer (and its chat template): a run trained with another tokenizer
# replaces these, never mixing its files with the source's (a stale tokenizer.model would win over them).
TOKENIZER_FILES = tuple(name for name in SIDE_FILES if name.startswith(("tokenizer", "special_tokens", "added_tokens",
                                                                         "chat_template")))


def tokenizer_files(folder: str | Path) -> list[Path]:
    """The tokenizer files of `folder` (each checked to stay inside it); empty when it holds none."""
    return [path for path in (inside(folder, name) for name in TOKENIZER_FILES) if path.is_file()]


def resolve_model_path(path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (safetensors and small files only) at
    `revision` (a branch, tag or commit; None: the default branch).

    `HF_TOKEN` and `HF_HOME` are honoured by huggingface_hub itself.
    """
    local = Path(path)
    if local.is_dir():
        if revision is not None:
            raise ConfigError(f"--hf-revision {revision}: {path} is a local folder, which has no revisions; drop "
                              f"--hf-revision, or pass a hub id (org/name) to download that revision")
        return local
    name = str(path)
    if local.exists() or name.count("/") != 1 or name.startswith((".", "/")):
        raise FileNotFoundError(f"{name}: not a model folder (and not a hub id of the form org/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{name}: no such folder, and huggingface_hub is not installed to fetch it") from None
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.jinja"]
    return Path(snapshot_download(name, allow_patterns=patterns, token=os.environ.get("HF_TOKEN"), revision=revision))


def allowed_roots(folder: str | Path) -> tuple[Path, ...]:
    """The real folders that files of `folder` may resolve into: itself, and for a hub cache snapshot
    the blobs of its repository."""
    real = Path(folder).resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real, real.parent.parent / "blobs"
    return (real,)


def inside(folder: str | Path, name: str) -> Path:
    """`folder / name`, after checking that it resolves (links followed) inside `folder`'s allowed roots."""
    path = Path(folder) / name
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as err:  # a link loop
        raise UnsafeCheckpointError(f"{path}: cannot be resolved ({err}); expected a file inside {folder}") from None
    roots = allowed_roots(folder)
    if not any(real.is_relative_to(root) for root in roots):
        target = " (a symbolic link)" if path.is_symlink() else ""
        raise UnsafeCheckpointError(f"{path}{target} leads to {real}, outside {roots[0]}; expected a file inside "
                                    f"the model folder")
    return path


def check_contained(folder: str | Path) -> Path:
    """Every entry of `folder` resolves inside it: for folders a library reads for us (transformers'
    AutoTokenizer picks tokenizer.json, vocab.json, merges.txt, ... itself), so no file it opens is a
    link to elsewhere. Returns `folder`."""
    folder = Path(folder)
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            inside(folder, entry.name)
    return folder


# A shard name of an index: one file name, no folder part, no drive, not "." or "..".
_PLAIN_NAME = re.compile(r"(?!\.\.?$)[^/\\\x00]+")


def shard_name(index: Path, tensor: str, file) -> str:
    if not isinstance(file, str):
        raise CorruptCheckpointError(f"{index}: weight_map[{tensor!r}]={file!r}: expected a file name (a string)")
    if not _PLAIN_NAME.fullmatch(file) or re.match(r"[A-Za-z]:", file):
        raise UnsafeCheckpointError(f"{index}: weight_map[{tensor!r}]={file!r}: expected a plain file name inside "
                                    f"{index.parent} (no folder, drive or '..')")
    return file


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
        index = inside(self.folder, INDEX_NAME)
        if index.is_file():
            self.weight_map = self._read_index(index)
            paths = [inside(self.folder, f) for f in dict.fromkeys(self.weight_map.values())]
            for p in paths:
                if not p.is_file():
                    raise FileNotFoundError(f"{index} names shard {p.name}, which is missing from {self.folder}")
            return paths
        self.weight_map = None
        single = inside(self.folder, SINGLE_NAME)
        if single.is_file():
            return [single]
        found = [inside(self.folder, p.name) for p in sorted(self.folder.glob("*.safetensors"))]
        if not found:
            raise FileNotFoundError(f"{self.folder}: no {SINGLE_NAME}, {INDEX_NAME} or other *.safetensors file")
        return found

    @staticmethod
    def _read_index(index: Path) -> dict[str, str]:
        """The index's weight_map {tensor name: shard file name}, every entry checked."""
        fields = Fields(parse_json(index.read_bytes(), str(index)), str(index), error=CorruptCheckpointError)
        weight_map = fields.object("weight_map", null="error")
        if weight_map is None:
            raise CorruptCheckpointError(f"{index}: missing required key 'weight_map' (tensor name -> shard file)")
        return {name: shard_name(index, name, file) for name, file in weight_map.obj.items()}

    def _check_index(self):
        for name, file in (self.weight_map or {}).items():
            info = self.tensors.get(name)
            if info is None or info.path.name != file:
                raise CorruptCheckpointError(f"{self.folder / INDEX_NAME} lists {name!r} in {file}, which lacks it")

    def side_files(self) -> list[Path]:
        """The tokenizer and generation files an export copies; one that leads outside the folder is
        refused (UnsafeCheckpointError), since an export must be complete and must not leak a file."""
        return [path for path in (inside(self.folder, n) for n in SIDE_FILES) if path.is_file()]

    def total_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())


def load_hf_tokenizer(folder: str | Path, hint: str = "", error: type[Exception] = ConfigError, **options):
    """transformers' AutoTokenizer of the folder (or hub id) `folder`, never with remote code, after checking
    that no file of it leads outside. Any failure is one `error` naming the folder: a missing file, or a
    tokenizer.json of another structure (transformers raises KeyError there, tokenizers its own Exception)."""
    from transformers import AutoTokenizer

    check_contained(folder)
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, **options)
    except Exception as err:  # noqa: BLE001 - a file the user handed us: every failure becomes one line
        raise error(f"{folder}: no usable tokenizer ({type(err).__name__}: {err})" + (f"; {hint}" if hint else "")
                    ) from None
