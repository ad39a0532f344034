"""minibridge checkpoint -> HF folder (`convert export`, `bridge.export_ckpt`), and the `roundtrip` check.

A full-model checkpoint is streamed: for each tensor of the HF layout, DCP reads just that tensor
(whatever layout wrote it: its chunks are put back together) and it is written to the safetensors
file at once, so memory is bounded by the largest tensor. Tensors take the dtypes of the `--hf-model`
folder's files, which also supplies config.json, the tokenizer and generation files, and (for a
multimodal Gemma) the vision tower passed through. Under torchrun, rank 0 streams; the others wait.

An adapter-only (LoRA/DoRA) checkpoint needs its base model: the adapters are attached to it (under
torchrun, sharded over the ranks) and either merged into a full HF folder or written alone as an HF
PEFT adapter (`adapter_only`). Output folders are written under a temporary name and renamed when
complete.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from ..bridge import HFBridge
from ..bridge.auto_bridge import HF_DEFAULT_MAX_SHARD_SIZE
from ..bridge.hf_folder import TOKENIZER_FILES, HFFolder, tokenizer_files
from ..bridge.megatron_config import megatron_tokenizer
from ..bridge.safetensors_io import read_tensor
from ..checkpoint import BlockLoadPlanner, SafeFileSystemReader, read_checkpoint
from ..checkpoint.megatron import checkpoint_kind
from ..errors import CheckpointMismatchError, ConfigError
from ..models import ModelConfig, whole_model_shapes
from ..parallel.dims import barrier, from_rank0, global_rank
from .checkpoints import check_same_model, load_megatron_model, stored_model_config, trained_tokenizer
from .importer import import_checkpoint, parallel_layout


class _CachedReader(SafeFileSystemReader):
    """Reads (and safely unpickles) the DCP metadata once for the many single-tensor loads."""

    _metadata = None

    def read_metadata(self, *args, **kwargs):
        if self._metadata is None:
            self._metadata = super().read_metadata(*args, **kwargs)
        return self._metadata


def export_checkpoint(hf_model: str | os.PathLike | None, megatron_path: str | os.PathLike,
                      hf_path: str | os.PathLike, adapter_only: bool = False, **kwargs) -> Path:
    """Write the minibridge checkpoint at `megatron_path` as an HF folder at `hf_path`; `hf_model` is
    the HF folder of the same model (config, tokenizer, dtypes), or None for a model trained from
    scratch (its configuration is in run.json; see `bridge_of_checkpoint`). See `export_with_bridge`."""
    folder, kind = checkpoint_kind(megatron_path)
    if kind == "megatron":
        bridge = HFBridge.from_hf_pretrained(hf_model) if hf_model is not None else bridge_of_checkpoint(folder)
        return export_megatron(bridge, folder, hf_path, adapter_only, **kwargs)
    bridge = HFBridge.from_hf_pretrained(hf_model) if hf_model is not None else bridge_of_checkpoint(megatron_path)
    return export_with_bridge(bridge, megatron_path, hf_path, adapter_only, **kwargs)


def export_megatron(bridge: HFBridge, folder: Path, hf_path, adapter_only: bool = False,
                    dtype: torch.dtype | None = None, max_shard_size: int | str = HF_DEFAULT_MAX_SHARD_SIZE,
                    overwrite: bool = False, progress: bool = True, tp: int = 1, strict: bool = True,
                    tokenizer: str | os.PathLike | None = None) -> Path:
    """A Megatron-Core torch_dist checkpoint as an HF folder, streamed one layer slice at a time (rank 0)."""
    from ..checkpoint.megatron_weights import megatron_parameters

    if adapter_only:
        raise ConfigError(f"{folder} is a Megatron checkpoint: --adapter-only exports minibridge LoRA/DoRA checkpoints")
    _, weights = megatron_parameters(folder, bridge.config)
    side = _tokenizer_folder(tokenizer, folder) if tokenizer is not None else megatron_tokenizer(folder)
    target = Path(hf_path)
    if global_rank() == 0:
        dtypes = {name: weights.stored[weights.where(name)[0]].properties.dtype for name in
                  whole_model_shapes(bridge.config)}
        _stream_export(bridge, folder, None, target, dtype, max_shard_size, overwrite, progress, (), strict, side,
                       dtypes=dtypes, read=weights.tensor)
    barrier()
    return target


def bridge_of_checkpoint(megatron_path) -> HFBridge:
    """A bridge without an HF folder, for the architecture a checkpoint's run.json records (a Megatron
    checkpoint's run_config.yaml)."""
    folder, kind = checkpoint_kind(megatron_path)
    if kind == "megatron":
        from ..bridge.megatron_config import config_from_run_config

        return HFBridge.from_config(config_from_run_config(folder))
    _, info, _ = read_checkpoint(megatron_path)
    fields = dict(stored_model_config(info) or {})
    if not fields:
        raise ConfigError(f"{megatron_path}: run.json records no model configuration; pass --hf-model DIR")
    try:
        return HFBridge.from_config(ModelConfig.from_dict(fields, where=f"{megatron_path}: run.json model."))
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{megatron_path}: run.json's model configuration is not valid ({err})") from None


def export_with_bridge(bridge: HFBridge, megatron_path, hf_path, adapter_only: bool = False,
                       dtype: torch.dtype | None = None, max_shard_size: int | str = HF_DEFAULT_MAX_SHARD_SIZE,
                       overwrite: bool = False, progress: bool = True, tp: int = 1, strict: bool = True,
                       tokenizer: str | os.PathLike | None = None) -> Path:
    """The export itself. A LoRA/DoRA checkpoint is merged into its base (or, with `adapter_only`,
    written as an HF PEFT adapter folder), sharded over `tp` ranks under torchrun; `dtype` overrides
    the tensors' dtype. Without an HF folder (`bridge.source` None) config.json is written from the
    recorded architecture and the tokenizer files come from `tokenizer`, else from the folder the run
    trained with. `strict=False` (Megatron Bridge's --not-strict) writes what the checkpoint holds when
    parameters are missing, and ignores tensors of the HF folder the export does not produce."""
    folder, info, stored = read_checkpoint(megatron_path)
    peft = info.get("peft")
    if bridge.source is None and peft is not None:
        raise ConfigError(f"{folder} holds {peft.get('scheme')} adapters: exporting them needs their base model; "
                          f"pass --hf-model DIR (the HF folder they were trained on)")
    missing = check_same_model(bridge.config, bridge.source, folder, info, stored, adapters_only=peft is not None,
                               strict=strict)
    dims = parallel_layout(bridge.config, tp, command="export")
    if peft is not None:
        return _export_peft(bridge, folder, hf_path, adapter_only, dims, dtype, max_shard_size, overwrite, progress)
    if adapter_only:
        raise ConfigError(f"{folder} is a full-model checkpoint: it holds no LoRA/DoRA adapters for --adapter-only "
                         "(that exports the adapters of a PEFT fine-tuning checkpoint)")
    side = _tokenizer_folder(tokenizer if tokenizer is not None else
                             None if bridge.source is not None else trained_tokenizer(info), folder)
    if bridge.source is None and side is None and global_rank() == 0:
        print(f"warning: {folder} was trained without a tokenizer (mock data), so the export has none; "
              f"pass --tokenizer DIR to include one", file=sys.stderr, flush=True)
    target = Path(hf_path)
    if global_rank() == 0:
        _stream_export(bridge, folder, stored, target, dtype, max_shard_size, overwrite, progress, missing, strict,
                       side)
    barrier()
    return target


def _tokenizer_folder(source, checkpoint: Path) -> Path | None:
    """`source`, checked to hold tokenizer files (None: none to add)."""
    if source is None:
        return None
    if not tokenizer_files(source):
        raise ConfigError(f"{source}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) to export with "
                          f"{checkpoint}; pass --tokenizer DIR (the tokenizer the run was trained with)")
    return Path(source)


def _stream_export(bridge, folder, stored, target, dtype, max_shard_size, overwrite, progress, missing=(),
                   strict=True, tokenizer=None, dtypes=None, read=None) -> None:
    """`stored`: our checkpoint's metadata; or `dtypes` and `read` (name -> stored dtype / tensor) for
    another source (a Megatron checkpoint)."""
    reader = _CachedReader(str(folder))
    local_of, entries = {}, []
    for name, shape in whole_model_shapes(bridge.config).items():
        if name in missing:
            continue
        hf_name = bridge.mapping.to_hf(name)
        kept = dtypes[name] if dtypes is not None else stored[f"model.{name}"].properties.dtype
        entries.append((hf_name, bridge.hf_dtype(hf_name, kept, dtype), shape))
        local_of[hf_name] = (name, shape, kept)
    if missing:
        print(f"warning: --not-strict: {folder} lacks {len(missing)} parameters, left out of the export: "
              f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}", file=sys.stderr, flush=True)
    out_dtype = {hf_name: d for hf_name, d, _ in entries}
    for hf_name in bridge.passthrough_names():  # outside the text model (a multimodal Gemma's vision tower)
        info = bridge.folder.tensors[hf_name]
        entries.append((hf_name, info.dtype, info.shape))
    if bridge.source is not None:
        unwritten = sorted(set(bridge.folder.tensors) - {e[0] for e in entries} - set(bridge.mapping.to_hf(n)
                                                                                         for n in missing))
        if unwritten and strict:
            raise CheckpointMismatchError(
                f"{bridge.source} holds {len(unwritten)} tensors the export of {folder} does not produce "
                f"({', '.join(unwritten[:5])}); --not-strict writes the export without them")
        if unwritten:
            print(f"warning: --not-strict: {len(unwritten)} tensors of {bridge.source} are not in the export: "
                  f"{', '.join(unwritten[:8])}", file=sys.stderr, flush=True)

    def tensor_of(hf_name: str) -> torch.Tensor:
        if hf_name not in local_of:
            return read_tensor(bridge.folder.tensors[hf_name])
        name, shape, kept = local_of[hf_name]
        if read is not None:
            return read(name).to(out_dtype[hf_name])
        tensor = torch.empty(shape, dtype=kept)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is .*")
            dcp.load({f"model.{name}": tensor}, storage_reader=reader, planner=BlockLoadPlanner(), no_dist=True)
        return tensor.to(out_dtype[hf_name])

    bridge.write_hf_folder(target, entries, tensor_of, max_shard_size, overwrite, progress, tokenizer)


def _export_peft(bridge, folder, hf_path, adapter_only, dims, dtype, max_shard_size, overwrite, progress) -> Path:
    """Base + adapters as a model (this rank's shard under torchrun), then the collective writers."""
    rank0 = dims is None or dims.rank == 0
    model = load_megatron_model(bridge, folder, parallel=dims, dtype=dtype, merge_adapters=not adapter_only,
                                progress=progress and rank0)
    if adapter_only:
        return bridge.save_hf_adapter(model, hf_path, overwrite=overwrite)
    return bridge.save_hf_pretrained(model, hf_path, max_shard_size=max_shard_size, overwrite=overwrite,
                                     progress=progress and rank0)


# ------------------------------------------------------------------------------------- round trip


@dataclass
class TensorComparison:
    name: str
    status: str  # "identical", "values differ", "dtype differs", "shape differs", "missing", "unexpected"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "identical"


def compare_folders(reference: str | Path, candidate: str | Path) -> list[TensorComparison]:
    """Every tensor of two HF folders, compared bit for bit, one tensor at a time."""
    ref, cand = HFFolder(reference).tensors, HFFolder(candidate).tensors
    out = []
    for name in sorted(set(ref) | set(cand)):
        if name not in cand:
            out.append(TensorComparison(name, "missing", f"in {reference} only"))
            continue
        if name not in ref:
            out.append(TensorComparison(name, "unexpected", f"in {candidate} only"))
            continue
        a, b = ref[name], cand[name]
        if a.dtype != b.dtype:
            out.append(TensorComparison(name, "dtype differs", f"{a.dtype} vs {b.dtype}"))
        elif tuple(a.shape) != tuple(b.shape):
            out.append(TensorComparison(name, "shape differs", f"{list(a.shape)} vs {list(b.shape)}"))
        else:
            x, y = read_tensor(a), read_tensor(b)
            if torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
                out.append(TensorComparison(name, "identical"))
            else:
                diff = (x.double() - y.double()).abs()
                out.append(TensorComparison(name, "values differ", f"max abs diff {diff.max().item():.3g}, "
                                            f"{int((diff != 0).sum())} of {diff.numel()} elements"))
    return out


def roundtrip(hf_model: str | os.PathLike, tp: int = 1, pp: int = 1, work_dir: str | os.PathLike | None = None,
              progress: bool = True) -> list[TensorComparison]:
    """Import `hf_model`, export it back and compare every tensor with the source (on rank 0; other ranks
    get an empty list). Intermediate folders live in a temporary folder under `work_dir`, removed after."""
    bridge = HFBridge.from_hf_pretrained(hf_model)
    parallel_layout(bridge.config, tp, pp, command="roundtrip")
    work = Path(from_rank0(tempfile.mkdtemp(prefix="minibridge-roundtrip-", dir=work_dir) if global_rank() == 0
                           else None))
    try:
        import_checkpoint(hf_model, work / "megatron", tp=tp, pp=pp, progress=progress)
        exported = export_with_bridge(bridge, work / "megatron", work / "hf", progress=progress)
        return compare_folders(hf_model, exported) if global_rank() == 0 else []
    finally:
        barrier()
        if global_rank() == 0:
            shutil.rmtree(work, ignore_errors=True)
