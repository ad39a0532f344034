"""AutoBridge: the public entry point between Hugging Face folders and minibridge models.

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
from ..models import CausalLM, ModelConfig
from .exporting import atomic_folder, copy_side_files, write_config, write_weights
from .hf_config import ARCHITECTURES, Architecture, architecture_of, config_from_hf, config_to_hf, read_config_json
from .hf_folder import HFFolder, inside, resolve_model_path
from .loading import empty_model, init_fresh_weights, load_hf_weights, pipeline_stages
from .mappings import WeightMapping
from .safetensors_io import DTYPE_NAMES, parse_size, read_tensor
from .sharded_io import full_parameters, parameter_inventory

HF_DEFAULT_MAX_SHARD_SIZE = "50GB"  # transformers 5.x save_pretrained's default


class AutoBridge:
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
    def from_hf_pretrained(cls, path: str | os.PathLike, **_ignored) -> "AutoBridge":
        """From a local HF folder (or a hub id when online). Reads config.json and safetensors headers."""
        folder = resolve_model_path(path)
        hf_config = read_config_json(folder)
        config = config_from_hf(hf_config, source=str(folder / "config.json"))
        return cls(config, hf_config, folder)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "AutoBridge":
        """No checkpoint: `to_model` initialises fresh weights (pretraining)."""
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

    # ----------------------------------------------------------------- import

    def to_model(
        self,
        parallel=None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
        seed: int = 1234,
    ) -> CausalLM | list[CausalLM]:
        """The model with the HF weights loaded (or freshly initialised from `seed` without a source,
        identically whatever the parallel layout).

        With `parallel` (the ParallelDims of `minibridge.parallel.initialize`), this rank's shard, read
        slice by slice: under pipeline parallelism its stage, or its list of chunks with virtual stages. `dtype` defaults to the checkpoint's, as transformers 5.x `from_pretrained` does;
        `device` to the layout's device (CUDA under NCCL), else the CPU.
        """
        if isinstance(parallel, (torch.dtype, str, torch.device)):
            raise TypeError("to_model's first argument is the parallel layout; pass dtype= and device= by name")
        device = device or (parallel.device if parallel is not None else "cpu")
        progress = progress and (parallel is None or parallel.rank == 0)
        dtype = dtype or self.checkpoint_dtype()
        if parallel is not None and parallel.config.pp > 1:  # this rank's pipeline chunks
            chunks = [self._load(empty_model(self.config, dtype, device, parallel, stage), seed, progress)
                      for stage in pipeline_stages(self.config, parallel)]
            return chunks if parallel.config.vp > 1 else chunks[0]
        return self._load(empty_model(self.config, dtype, device, parallel), seed, progress)

    def _load(self, model: CausalLM, seed: int, progress: bool) -> CausalLM:
        if self.source is None:
            init_fresh_weights(model, seed)
        else:
            self.passthrough = load_hf_weights(model, self.folder, self.mapping, progress=progress)
        return model

    def to_megatron_provider(self) -> "ModelProvider":
        """The provider object of the Megatron Bridge docs (set sizes, `finalize()`, provide the model)."""
        from .provider import ModelProvider

        return ModelProvider(bridge=self, config=self.config, params_dtype=self.checkpoint_dtype())

    to_provider = to_megatron_provider

    # ----------------------------------------------------------------- minibridge checkpoints (minibridge.conversion)
    # The conversion package reads and writes training's checkpoint format, a layer above the bridge:
    # these two methods import it when called, so the bridge package itself never depends on training.

    @classmethod
    def import_ckpt(cls, hf_model_path: str | os.PathLike, megatron_path: str | os.PathLike, **kwargs) -> Path:
        """Write the HF checkpoint at `hf_model_path` as a minibridge checkpoint (the format training
        saves and resumes from) at `megatron_path`; kwargs: tp, pp, dtype, overwrite, progress."""
        from ..conversion import import_checkpoint

        return import_checkpoint(hf_model_path, megatron_path, **kwargs)

    def export_ckpt(self, megatron_path: str | os.PathLike, hf_path: str | os.PathLike, adapter_only: bool = False,
                    **kwargs) -> Path:
        """Write the minibridge checkpoint at `megatron_path` as an HF folder at `hf_path` (LoRA/DoRA
        adapters merged), or with `adapter_only` its adapters as an HF PEFT folder; kwargs: dtype,
        max_shard_size, overwrite, progress."""
        from ..conversion import export_with_bridge

        return export_with_bridge(self, megatron_path, hf_path, adapter_only=adapter_only, **kwargs)

    # ----------------------------------------------------------------- export

    def _hf_dtype(self, hf_name: str, model_dtype: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
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
        _refuse_adapters(model)
        for name, tensor in full_parameters(model):
            hf_name = self.mapping.to_hf(name)
            tensor = tensor.to(self._hf_dtype(hf_name, tensor.dtype, dtype))
            yield hf_name, tensor.cpu() if cpu else tensor

    def _entries(self, model, dtype: torch.dtype | None):
        entries = []
        for name, shape, param_dtype in parameter_inventory(model):
            hf_name = self.mapping.to_hf(name)
            entries.append((hf_name, self._hf_dtype(hf_name, param_dtype, dtype), shape))
        for hf_name in self._passthrough_names():
            info = self.folder.tensors[hf_name]
            entries.append((hf_name, info.dtype, info.shape))
        return entries

    def _passthrough_names(self) -> list[str]:
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
    ) -> Path:
        """Write an HF folder that `transformers.AutoModelForCausalLM.from_pretrained` reads.

        config.json and the tokenizer / generation files are copied from the source folder when there
        is one; a multimodal source keeps its vision weights, passed through byte for byte. `model` may
        be sharded or this rank's pipeline chunks: under torchrun every rank calls this, rank 0 writes.
        A model with LoRA/DoRA adapters is refused: merge them first (`minibridge.peft.merge_peft`).
        """
        _refuse_adapters(model)
        stream = self.export_hf_weights(model, dtype=dtype, cpu=True)

        passthrough = set(self._passthrough_names())

        def tensor_of(hf_name: str) -> torch.Tensor:  # called in `entries` order
            if hf_name in passthrough:
                return read_tensor(self.folder.tensors[hf_name])
            name, tensor = next(stream)
            assert name == hf_name, (name, hf_name)
            return tensor

        entries = self._entries(model, dtype)
        dims = getattr(model[0] if isinstance(model, list) else model, "parallel_dims", None)
        if dims is not None and dims.world_size > 1:
            own = [e for e in entries if e[0] not in passthrough]
            return self._save_sharded(out_dir, entries, own, tensor_of, dims, max_shard_size, overwrite, progress)
        return self._write_folder(out_dir, entries, tensor_of, max_shard_size, overwrite, progress)

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

    def _save_sharded(self, out_dir, entries, own, tensor_of, dims, max_shard_size, overwrite, progress):
        """Every rank joins the gathers in the same order; global rank 0 writes the folder."""
        import torch.distributed as dist

        # Agree up front on whether rank 0 may write, so no rank is left waiting in a gather.
        refusal = [busy_message(Path(out_dir)) if dims.rank == 0 and not overwrite else None]
        dist.broadcast_object_list(refusal, src=0)
        if refusal[0] is not None:
            raise FileExistsError(refusal[0])
        if dims.rank == 0:
            self._write_folder(out_dir, entries, tensor_of, max_shard_size, overwrite, progress)
        else:
            for hf_name, _, _ in own:
                tensor_of(hf_name)
        dist.barrier()
        return Path(out_dir)

    def _write_folder(self, out_dir, entries, tensor_of, max_shard_size, overwrite, progress) -> Path:
        with atomic_folder(out_dir, overwrite=overwrite) as tmp:
            write_weights(tmp, entries, tensor_of, parse_size(max_shard_size), progress=progress)
            if self.source is not None:
                copy_side_files(tmp, self.folder.side_files() + [inside(self.source, "config.json")])
            else:
                write_config(tmp, config_to_hf(self.config, DTYPE_NAMES_TORCH[entries[0][1]]))
        return Path(out_dir)


def _refuse_adapters(model) -> None:
    chunks = model if isinstance(model, (list, tuple)) else [model]
    if any(".lora_" in name for chunk in chunks for name, _ in chunk.named_parameters()):
        raise ConfigError("the model carries LoRA/DoRA adapters: write them with bridge.save_hf_adapter(model, dir), or "
                         "fold them in first: bridge.save_hf_pretrained(minibridge.peft.merge_peft(model), dir)")


DTYPE_NAMES_TORCH = {dtype: str(dtype).removeprefix("torch.") for dtype in DTYPE_NAMES}
