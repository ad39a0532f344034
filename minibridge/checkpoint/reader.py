"""Reading torch.distributed.checkpoint folders without letting the checkpoint run code.

DCP loads `.metadata` with a bare `pickle.load`, so a crafted checkpoint runs code on train resume,
`convert export` and `generate --megatron_model_path`. `SafeFileSystemReader` closes the three ways in:

- The unpickler builds only the exact (module, name) globals a torch >= 2.4 `FileSystemWriter`
  pickles (listed with pickletools from real saves), and torch dtypes by plain attribute name.
  Nothing is imported or resolved by a dotted name: protocol 4 resolves ('<allowed module>',
  'os.system') to os.system. BUILD may only fill the metadata dataclasses: on a class or function
  it would set attributes process-wide (e.g. poison torch.serialization._get_layout.cache).
- A `BytesStorageMetadata` entry (a pickled object) is refused, except the optimizer's
  `param_groups` entries (`optim.param_groups.<i>.<key>`: numbers, flags, tuples and parameter
  names), and those only through `SafeBytesPlanner`, which unpickles them with
  `torch.load(weights_only=True)` instead of DefaultLoadPlanner.load_bytes' `weights_only=False`.
  Tensor entries are read with `torch.load(weights_only=True)` (torch 2.4 to 2.13).
- Each storage entry must name a data file DCP writes (`__<rank>_<n>.distcp`) inside the folder,
  at an offset and length that are non-negative ints, so no file outside the folder is read.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import re
import zlib

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    _MEM_FORMAT_ENCODING, BytesStorageMetadata, ChunkStorageMetadata, Metadata, MetadataIndex, StorageMeta,
    TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadItemType
from torch.serialization import _get_layout

from ..errors import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError
from .integrity import check_item, read_checksums

# The objects BUILD may fill (with their pickled state) ...
_DATACLASSES = (Metadata, TensorStorageMetadata, BytesStorageMetadata, ChunkStorageMetadata, TensorProperties,
                MetadataIndex, StorageMeta, _StorageInfo)
# ... and every global DCP pickles, by the (module, qualified name) pickle writes for it. torch.layout
# pickles as _get_layout("torch.strided"); TensorProperties stores its memory format as the enum;
# StorageMeta.checkpoint_id is the writer's Path (pickled from module pathlib._local by Python 3.13 only).
_GLOBALS = {(obj.__module__, obj.__qualname__): obj for obj in (*_DATACLASSES, _MEM_FORMAT_ENCODING, torch.Size,
                                                                   _get_layout)}  # see also megatron.py
_GLOBALS.update({(module, cls.__name__): cls for module in ("pathlib", "pathlib._local")
                 for cls in (pathlib.Path, pathlib.PosixPath)})
_DATA_FILE = re.compile(r"__\d+_\d+\.distcp")
# The only pickled entries a minibridge checkpoint holds: DCP's flattening of torch's optimizer
# `param_groups` list (optim.param_groups.0.lr, optim.param_groups.0.params, ...)
PARAM_GROUP_ENTRY = re.compile(r"optim\.param_groups\.\d+\.[A-Za-z_][A-Za-z0-9_]*")
_PLAIN = (str, int, float, bool, type(None))


class _MetadataUnpickler(pickle._Unpickler):  # the Python implementation: only there can BUILD be checked
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path, allowed: dict | None = None, fillable: tuple = _DATACLASSES):
        super().__init__(file)
        self.path, self.allowed, self.fillable = path, _GLOBALS if allowed is None else allowed, fillable

    def find_class(self, module: str, name: str):
        obj = self.allowed.get((module, name))
        if obj is None and module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            obj = vars(torch)[name]  # vars(): a plain name only, no dotted path, no lazy import of torch.<name>
        if obj is None:
            raise UnsafeCheckpointError(f"{self.path}: refers to {module}.{name}; DCP metadata holds only its own "
                                        "classes, torch.Size and dtypes (a crafted checkpoint that would run code?)")
        return obj

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(f"{self.path}: holds a persistent id {pid!r}, which DCP metadata never holds")

    def _build(self):
        if not isinstance(self.stack[-2], self.fillable):
            raise UnsafeCheckpointError(f"{self.path}: sets attributes of {self.stack[-2]!r}; DCP metadata only "
                                        "fills its own dataclasses")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _build


def _check(metadata, path, unread_bytes=None) -> None:
    """Refuse what DCP's reader would act on unsafely; anything else off the format is corrupt.
    `unread_bytes`: a pattern of pickled entries a reader may find but never reads (Megatron's)."""
    if not (isinstance(metadata, Metadata) and isinstance(metadata.state_dict_metadata, dict)
            and isinstance(metadata.storage_data, dict)
            and isinstance(getattr(metadata, "storage_meta", None), (StorageMeta, type(None)))):
        raise CorruptCheckpointError(f"{path}: expected DCP checkpoint metadata, found {type(metadata).__name__}")
    for key, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            if isinstance(key, str) and PARAM_GROUP_ENTRY.fullmatch(key) and MetadataIndex(key) in metadata.storage_data:
                continue  # read only by SafeBytesPlanner (weights_only=True)
            if unread_bytes is not None and isinstance(key, str) and unread_bytes.fullmatch(key):
                continue  # never read: SafeFileSystemReader.read_data refuses every other pickled entry
            raise UnsafeCheckpointError(
                f"{path}: entry {key!r} is a pickled object (BytesStorageMetadata), which DCP would load with "
                "torch.load(weights_only=False); minibridge checkpoints hold tensors, and the optimizer's "
                "param_groups (optim.param_groups.<i>.<key>) only")
        if not (isinstance(key, str) and isinstance(entry, TensorStorageMetadata)
                and isinstance(entry.properties, TensorProperties) and isinstance(entry.properties.dtype, torch.dtype)
                and isinstance(entry.size, torch.Size) and isinstance(entry.chunks, list)
                and all(isinstance(c, ChunkStorageMetadata) and isinstance(c.offsets, torch.Size)
                        and isinstance(c.sizes, torch.Size) and len(c.offsets) == len(c.sizes) == len(entry.size)
                        and MetadataIndex(key, c.offsets) in metadata.storage_data for c in entry.chunks)):
            raise CorruptCheckpointError(f"{path}: entry {key!r} is not tensor metadata with a stored chunk list")
    for index, info in metadata.storage_data.items():
        if not (isinstance(index, MetadataIndex) and isinstance(info, _StorageInfo)):
            raise CorruptCheckpointError(f"{path}: storage entry {index!r} is not a DCP file location")
        if not (isinstance(info.relative_path, str) and _DATA_FILE.fullmatch(info.relative_path)):
            raise UnsafeCheckpointError(f"{path}: {index.fqn!r} is stored in {info.relative_path!r}; expected a "
                                        "data file of the checkpoint folder such as __0_0.distcp")
        if not all(type(n) is int and n >= 0 for n in (info.offset, info.length)):
            raise CorruptCheckpointError(f"{path}: {index.fqn!r} has offset {info.offset!r} and length "
                                         f"{info.length!r}; expected non-negative ints")


def _plain(value) -> bool:
    """A param_groups value as torch's optimizers hold them: numbers, flags, strings, lists and tuples."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


class SafeBytesPlanner(DefaultLoadPlanner):
    """Loads the allowed pickled entries with torch's restricted unpickler (`weights_only=True`: no
    globals beyond torch's tensor types) and accepts only plain values from it."""

    def load_bytes(self, read_item, value) -> None:
        fqn = read_item.dest_index.fqn
        try:
            loaded = torch.load(value, weights_only=True)
        except Exception as err:  # weights_only refuses any global it does not know (a crafted payload)
            raise UnsafeCheckpointError(f"{fqn}: not a plain param_groups value ({type(err).__name__}: "
                                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
        if not _plain(loaded):
            raise UnsafeCheckpointError(f"{fqn}: holds a {type(loaded).__name__}; param_groups entries are "
                                        "numbers, flags, strings and lists of them")
        self.state_dict[fqn] = loaded


class SafeFileSystemReader(FileSystemReader):
    # what a subclass widens for another writer's metadata (checkpoint/megatron.py): the globals, the
    # objects BUILD may fill, and pickled entries allowed to be present (and never read)
    ALLOWED_GLOBALS: dict = _GLOBALS
    FILLABLE: tuple = _DATACLASSES
    UNREAD_BYTES: re.Pattern | None = None

    def read_metadata(self, *args, **kwargs) -> Metadata:
        rank = kwargs.get("rank")  # the name FileSystemReader._get_metadata_path gives (torch 2.4 has no such method)
        path = self.fs.concat_path(self.path, ".metadata" if rank is None else f"__{rank}.metadata")
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = _MetadataUnpickler(f, path, self.ALLOWED_GLOBALS, self.FILLABLE).load()
                _check(metadata, path, self.UNREAD_BYTES)
            except CheckpointError:
                raise
            except Exception as err:  # broken bytes fail in many ways (EOFError, KeyError, struct.error, a
                # dataclass built without its fields, ...): all of them mean a corrupt file
                raise CorruptCheckpointError(
                    f"{path}: not readable DCP metadata ({type(err).__name__}: {err})") from err
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        self._checksums = read_checksums(pathlib.Path(self.path))  # integrity.py: verified as items are read
        self._names = {(i.relative_path, i.offset): index.fqn for index, i in (metadata.storage_data or {}).items()}
        return metadata

    def _slice_file(self, file, sinfo):
        """One stored item's bytes, read whole (as DCP reads it) and checked against checksums.json."""
        checksums = getattr(self, "_checksums", None)
        if checksums is None:
            return super()._slice_file(file, sinfo)
        file.seek(sinfo.offset)
        data = file.read(sinfo.length)
        check_item(pathlib.Path(self.path), sinfo.relative_path, sinfo.offset, zlib.crc32(data), checksums,
                   self._names.get((sinfo.relative_path, sinfo.offset), sinfo.relative_path))
        return io.BytesIO(data)

    def read_data(self, plan, planner):
        # other bytes entries are refused above; this keeps DCP's torch.load(weights_only=False) unreachable
        # regardless: a pickled entry is read only by SafeBytesPlanner, and only a param_groups entry
        for item in plan.items:
            fqn = item.storage_index.fqn
            if item.type == LoadItemType.BYTE_IO and not (isinstance(planner, SafeBytesPlanner)
                                                          and PARAM_GROUP_ENTRY.fullmatch(fqn)):
                raise UnsafeCheckpointError(f"{self.path}: {fqn!r} would be unpickled with "
                                            "torch.load(weights_only=False); minibridge reads pickled entries "
                                            "only of the optimizer's param_groups, with weights_only=True")
        return super().read_data(plan, planner)
