"""Reading torch.distributed.checkpoint folders without letting the checkpoint run code.

DCP loads `.metadata` with a bare `pickle.load`, so a crafted checkpoint runs code on train resume,
`convert export` and `generate --megatron_model_path`. `SafeFileSystemReader` closes the three ways in:

- The unpickler builds only the exact (module, name) globals a torch >= 2.4 `FileSystemWriter`
  pickles (listed with pickletools from real saves), and torch dtypes by plain attribute name.
  Nothing is imported or resolved by a dotted name: protocol 4 resolves ('<allowed module>',
  'os.system') to os.system. BUILD may only fill the metadata dataclasses: on a class or function
  it would set attributes process-wide (e.g. poison torch.serialization._get_layout.cache).
- A `BytesStorageMetadata` entry is refused: DCP reads it with `torch.load(weights_only=False)`
  (DefaultLoadPlanner.load_bytes) from whatever file its storage entry names. minibridge saves
  tensors only. Tensor entries are read with `torch.load(weights_only=True)` (torch 2.4 to 2.13).
- Each storage entry must name a data file DCP writes (`__<rank>_<n>.distcp`) inside the folder,
  at an offset and length that are non-negative ints, so no file outside the folder is read.
"""

from __future__ import annotations

import pathlib
import pickle
import re

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    _MEM_FORMAT_ENCODING, BytesStorageMetadata, ChunkStorageMetadata, Metadata, MetadataIndex, StorageMeta,
    TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadItemType
from torch.serialization import _get_layout

from ..errors import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError

# The objects BUILD may fill (with their pickled state) ...
_DATACLASSES = (Metadata, TensorStorageMetadata, BytesStorageMetadata, ChunkStorageMetadata, TensorProperties,
                MetadataIndex, StorageMeta, _StorageInfo)
# ... and every global DCP pickles, by the (module, qualified name) pickle writes for it. torch.layout
# pickles as _get_layout("torch.strided"); TensorProperties stores its memory format as the enum;
# StorageMeta.checkpoint_id is the writer's Path (pickled from module pathlib._local by Python 3.13 only).
_GLOBALS = {(obj.__module__, obj.__qualname__): obj for obj in (*_DATACLASSES, _MEM_FORMAT_ENCODING, torch.Size,
                                                                   _get_layout)}
_GLOBALS.update({(module, cls.__name__): cls for module in ("pathlib", "pathlib._local")
                 for cls in (pathlib.Path, pathlib.PosixPath)})
_DATA_FILE = re.compile(r"__\d+_\d+\.distcp")


class _MetadataUnpickler(pickle._Unpickler):  # the Python implementation: only there can BUILD be checked
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        obj = _GLOBALS.get((module, name))
        if obj is None and module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            obj = vars(torch)[name]  # vars(): a plain name only, no dotted path, no lazy import of torch.<name>
        if obj is None:
            raise UnsafeCheckpointError(f"{self.path}: refers to {module}.{name}; DCP metadata holds only its own "
                                        "classes, torch.Size and dtypes (a crafted checkpoint that would run code?)")
        return obj

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(f"{self.path}: holds a persistent id {pid!r}, which DCP metadata never holds")

    def _build(self):
        if not isinstance(self.stack[-2], _DATACLASSES):
            raise UnsafeCheckpointError(f"{self.path}: sets attributes of {self.stack[-2]!r}; DCP metadata only "
                                        "fills its own dataclasses")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _build


def _check(metadata, path) -> None:
    """Refuse what DCP's reader would act on unsafely; anything else off the format is corrupt."""
    if not (isinstance(metadata, Metadata) and isinstance(metadata.state_dict_metadata, dict)
            and isinstance(metadata.storage_data, dict)
            and isinstance(getattr(metadata, "storage_meta", None), (StorageMeta, type(None)))):
        raise CorruptCheckpointError(f"{path}: expected DCP checkpoint metadata, found {type(metadata).__name__}")
    for key, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            raise UnsafeCheckpointError(
                f"{path}: entry {key!r} is a pickled object (BytesStorageMetadata), which DCP would load with "
                "torch.load(weights_only=False); minibridge checkpoints hold tensors only")
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


class SafeFileSystemReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs) -> Metadata:
        rank = kwargs.get("rank")  # the name FileSystemReader._get_metadata_path gives (torch 2.4 has no such method)
        path = self.fs.concat_path(self.path, ".metadata" if rank is None else f"__{rank}.metadata")
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = _MetadataUnpickler(f, path).load()
                _check(metadata, path)
            except CheckpointError:
                raise
            except Exception as err:  # broken bytes fail in many ways (EOFError, KeyError, struct.error, a
                # dataclass built without its fields, ...): all of them mean a corrupt file
                raise CorruptCheckpointError(
                    f"{path}: not readable DCP metadata ({type(err).__name__}: {err})") from err
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan, planner):
        # bytes entries are refused above; this keeps DCP's torch.load(weights_only=False) unreachable regardless
        for item in plan.items:
            if item.type == LoadItemType.BYTE_IO:
                raise UnsafeCheckpointError(f"{self.path}: {item.storage_index.fqn!r} would be unpickled with "
                                            "torch.load(weights_only=False); minibridge checkpoints hold tensors only")
        return super().read_data(plan, planner)
