"""HFBridge: between Hugging Face folders and minibridge models (config, name tables, export, adapters).

`minibridge.AutoBridge`, the public entry point, is this class plus making the model (`to_model`: build_model
and a loader of minibridge.loading) and the checkpoint conversions of Megatron Bridge's API (`import_ckpt`,
`export_ckpt`; minibridge/conversion/auto_bridge.py). HFBridge itself makes no model.

    bridge = AutoBridge.from_hf_pretrained("path/to/hf_dir")
    model = bridge.to_model(dtype=torch.float32, device="cpu")
    bridge.save_hf_pretrained(model, "out_dir")
    for name, tensor in bridge.export_hf_weights(model): ...
    bridge.save_hf_adapter(peft_model, "adapter_dir")          # LoRA/DoRA adapters (minibridge.peft)
    bridge.load_hf_adapter(model, "adapter_dir")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import torch

from ..errors import ConfigError
from ..files import busy_message
from ..models import ModelChunks, ModelConfig
from .exporting import atomic_folder, copy_side_files, write_config, write_weights
from .family import ARCHITECTURES, Architecture
from .hf_config import architecture_of, config_from_hf, config_to_hf, read_config_json
from .hf_folder import TOKENIZER_FILES, HFFolder, inside, resolve_model_path, tokenizer_files
from .mappings import WeightMapping
from .safetensors_io import DTYPE_NAMES, parse_size, read_tensor
from ..parallel.dims import from_rank0
from ..parallel.gather import full_parameters, parameter_inventory

HF_DEFAULT_MAX_SHARD_SIZE = "50GB"  # transformers 5.x save_pretrained's default


class HFBridge:
    """Holds a model configuration and, when it came from one, the source HF folder."""

    def __init__(self, config: ModelConfig, hf_config: dict | None = None, source: Path | None = None):
        self.config = config
        self.hf_config = hf_config if hf_config is not None else config_to_hf(config)
        self.architecture: Architecture = architecture_of(self.hf_config)
        self.source = source
        self._folder: HFFolder | None = None
        self.mapping = WeightMapping.detect(self.architecture, self.folder.tensors if source else ())

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_hf_pretrained(cls, path: str | os.PathLike, **_ignored) -> "HFBridge":
        """From a local HF folder (or a hub id when online). Reads config.json and safetensors headers."""
        folder = resolve_model_path(path)
        hf_config = read_config_json(folder)
        config = config_from_hf(hf_config, source=str(folder / "config.json"))
        return cls(config, hf_config, folder)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "HFBridge":
        """No checkpoint: `AutoBridge.to_model` initialises fresh weights (pretraining)."""
        return cls(config)

    @staticmethod
    def list_supported_models() -> list[str]:
        return sorted(ARCHITECTURES)

    @classmethod
    def supports(cls, hf_config: dict) -> bool:
        try:
            architecture_of(hf_config)
        except ConfigError:
            return False
        return True

    @property
    def folder(self) -> HFFolder | None:
        if self._folder is None and self.source is not None:
            self._folder = HFFolder(self.source)
        return self._folder

    def checkpoint_dtype(self) -> torch.dtype:
        text = self.hf_config.get("text_config") or {}
        name = self.hf_config.get("torch_dtype") or self.hf_config.get("dtype") or text.get("dtype")
        return getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else torch.float32

    # ----------------------------------------------------------------- export

    def hf_dtype(self, hf_name: str, model_dtype: torch.dtype, dtype: torch.dtype | None = None) -> torch.dtype:
        """The dtype an export writes `hf_name` in: `dtype` if given, else the source file's, else the model's."""
        if dtype is not None:
            return dtype
        info = self.folder.tensors.get(hf_name) if self.source else None
        return info.dtype if info is not None else model_dtype

    def export_hf_weights(
        self, model, dtype: torch.dtype | None = None, cpu: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (HF name, full tensor) for every model weight, in the source checkpoint's dtype
        (or `dtype`), one at a time. `model` may be a sharded model or this rank's pipeline chunks;
        under torchrun every rank must iterate (the tensors are gathered collectively)."""
        chunks = _without_adapters(model)
        for name, tensor in full_parameters(chunks):
            hf_name = self.mapping.to_hf(name)
            tensor = tensor.to(self.hf_dtype(hf_name, tensor.dtype, dtype))
            yield hf_name, tensor.cpu() if cpu else tensor

    def _entries(self, chunks: ModelChunks, dtype: torch.dtype | None):
        entries = []
        for name, shape, param_dtype in parameter_inventory(chunks):
            hf_name = self.mapping.to_hf(name)
            entries.append((hf_name, self.hf_dtype(hf_name, param_dtype, dtype), shape))
        for hf_name in self.passthrough_names():
            info = self.folder.tensors[hf_name]
            entries.append((hf_name, info.dtype, info.shape))
        return entries

    def passthrough_names(self) -> list[str]:
        """Tensors of the source outside the text model (the vision tower of a multimodal Gemma)."""
        if self.source is None:
            return []
        return [n for n in self.folder.tensors if self.mapping.to_local(n) is None and not self.mapping.is_text(n)]

    def save_hf_pretrained(
        self,
        model,
        out_dir: str | os.PathLike,
        max_shard_size: int | str = HF_DEFAULT_MAX_SHARD_SIZE,
        dtype: torch.dtype | None = None,
        overwrite: bool = False,
        progress: bool = True,
        tokenizer: str | os.PathLike | None = None,
    ) -> Path:
        """Write an HF folder that `transformers.AutoModelForCausalLM.from_pretrained` reads.

        config.json and the tokenizer / generation files are copied from the source folder when there
        is one; `tokenizer` (a folder) supplies the tokenizer files instead, as a run trained from
        scratch, or with another tokenizer, needs. A multimodal source keeps its vision weights, passed
        through byte for byte. `model` may
        be sharded or this rank's pipeline chunks: under torchrun every rank calls this, rank 0 writes.
        A model with LoRA/DoRA adapters is refused: merge them first (`minibridge.peft.merge_peft`).
        """
        chunks = _without_adapters(model)
        stream = self.export_hf_weights(chunks, dtype=dtype, cpu=True)

        passthrough = set(self.passthrough_names())

        def tensor_of(hf_name: str) -> torch.Tensor:  # called in `entries` order
            if hf_name in passthrough:
                return read_tensor(self.folder.tensors[hf_name])
            name, tensor = next(stream)
            assert name == hf_name, (name, hf_name)
            return tensor

        entries = self._entries(chunks, dtype)
        dims = chunks.dims
        if dims is not None and dims.world_size > 1:
            own = [e for e in entries if e[0] not in passthrough]
            return self._save_sharded(out_dir, entries, own, tensor_of, dims, max_shard_size, overwrite, progress,
                                      tokenizer)
        return self.write_hf_folder(out_dir, entries, tensor_of, max_shard_size, overwrite, progress, tokenizer)

    # ----------------------------------------------------------------- adapters (minibridge.peft)

    def save_hf_adapter(self, model, out_dir: str | os.PathLike, dtype: torch.dtype | None = None,
                        overwrite: bool = False) -> Path:
        """Write `model`'s LoRA/DoRA adapters as an HF PEFT folder (adapter_config.json +
        adapter_model.safetensors) that `peft.PeftModel.from_pretrained(hf_model, out_dir)` loads.
        `model` may be sharded or this rank's pipeline chunks: every rank calls this, rank 0 writes."""
        from .peft_adapter import save_hf_adapter

        return save_hf_adapter(self, model, out_dir, dtype=dtype, overwrite=overwrite)

    def load_hf_adapter(self, model, folder: str | os.PathLike):
        """Attach the adapters of an HF PEFT folder to `model` (as returned by `to_model`) and load them,
        trainable, to continue training or to merge. Returns `model`."""
        from .peft_adapter import load_hf_adapter

        return load_hf_adapter(self, model, folder)

    def _save_sharded(self, out_dir, entries, own, tensor_of, dims, max_shard_size, overwrite, progress, tokenizer):
        """Every rank joins the gathers in the same order; global rank 0 writes the folder."""
        import torch.distributed as dist

        # Agree up front on whether rank 0 may write, so no rank is left waiting in a gather.
        refusal = from_rank0(busy_message(Path(out_dir)) if dims.rank == 0 and not overwrite else None)
        if refusal is not None:
            raise FileExistsError(refusal)
        if dims.rank == 0:
            self.write_hf_folder(out_dir, entries, tensor_of, max_shard_size, overwrite, progress, tokenizer)
        else:
            for hf_name, _, _ in own:
                tensor_of(hf_name)
        dist.barrier()
        return Path(out_dir)

    def write_hf_folder(self, out_dir, entries: list[tuple[str, torch.dtype, tuple[int, ...]]], tensor_of,
                        max_shard_size: int | str = HF_DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False,
                        progress: bool = True, tokenizer: str | os.PathLike | None = None) -> Path:
        """The HF folder writer: `entries` (HF name, dtype, shape) in file order, each tensor fetched
        just in time from `tensor_of(name)`; the source's config and side files (or a config of our
        own), the tokenizer files of `tokenizer` in place of the source's, all under a temporary name
        renamed when complete."""
        side = self.folder.side_files() if self.source is not None else []
        if tokenizer is not None:
            side = [path for path in side if path.name not in TOKENIZER_FILES] + tokenizer_files(tokenizer)
        with atomic_folder(out_dir, overwrite=overwrite) as tmp:
            write_weights(tmp, entries, tensor_of, parse_size(max_shard_size), progress=progress)
            if self.source is not None:
                copy_side_files(tmp, side + [inside(self.source, "config.json")])
            else:
                write_config(tmp, config_to_hf(self.config, DTYPE_NAMES_TORCH[entries[0][1]]))
                copy_side_files(tmp, side)
        return Path(out_dir)


def _without_adapters(model) -> ModelChunks:
    """`model` as ModelChunks, refused when it carries LoRA/DoRA adapters."""
    chunks = ModelChunks.of(model)
    if any(".lora_" in name for name, _ in chunks.named_parameters()):
        raise ConfigError("the model carries LoRA/DoRA adapters: write them with bridge.save_hf_adapter(model, dir), or "
                          "fold them in first: bridge.save_hf_pretrained(minibridge.peft.merge_peft(model), dir)")
    return chunks


DTYPE_NAMES_TORCH = {dtype: str(dtype).removeprefix("torch.") for dtype in DTYPE_NAMES}


def export_hf_folder(model, out_dir: str | os.PathLike, source: str | os.PathLike | None = None, **options) -> Path:
    """`HFBridge.save_hf_pretrained` of a model made by `build_model` and a loader (minibridge.loading):
    `source` is the HF folder it was loaded from (its config, side files, tensor dtypes and a multimodal
    checkpoint's vision tower go into the export), or None (a config.json of the model's own)."""
    return _bridge_of(model, source).save_hf_pretrained(model, out_dir, **options)


def export_hf_adapter(model, out_dir: str | os.PathLike, source: str | os.PathLike | None = None, **options) -> Path:
    """`HFBridge.save_hf_adapter` of a model made by `build_model` and a loader, as `export_hf_folder`."""
    return _bridge_of(model, source).save_hf_adapter(model, out_dir, **options)


def _bridge_of(model, source) -> HFBridge:
    return HFBridge.from_hf_pretrained(source) if source is not None else HFBridge.from_config(
        ModelChunks.of(model).config)
