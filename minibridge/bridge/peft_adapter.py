"""HF PEFT adapter folders, the format `peft.PeftModel.from_pretrained` reads and `save_pretrained` writes:

    adapter_config.json         peft_type LORA, r, lora_alpha, lora_dropout, target_modules, use_dora, ...
    adapter_model.safetensors   base_model.model.<HF module>.lora_A.weight       (r, in)
                                base_model.model.<HF module>.lora_B.weight       (out, r)
                                base_model.model.<HF module>.lora_magnitude_vector   (out,), DoRA

It lives in the bridge because every HF name does (DESIGN.md). Module names come from the mapping
table (the name of the module's weight, minus ".weight"), in the spelling of the transformers model at runtime (the architecture's first prefix:
`model.language_model.` for a multimodal Gemma even when its files use `language_model.model.`),
since that is what peft matches; imports accept every spelling. Adapter tensors are full tensors,
gathered over tensor-parallel ranks and collected from every pipeline stage. Only rank 0 writes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import CheckpointMismatchError, ConfigError, MissingTensorError, UnsupportedModelError
from ..files import busy_message
from ..parallel.dims import from_rank0
from ..parallel.sharding import take_block
from ..models import ModelChunks
from ..parallel.gather import full_tensor
from ..peft.apply import ADAPTER_PARAMS, adapter_parameters, apply_peft, candidate_modules
from .exporting import atomic_folder
from .hf_folder import inside
from .json_checks import Fields, parse_json
from .mappings import WeightMapping

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
# peft < 0.10 and some tools keep the magnitude's ".weight"
_FILE_SUFFIXES = {"lora_A.weight": "lora_A.weight", "lora_B.weight": "lora_B.weight",
                  "lora_magnitude_vector": "lora_magnitude_vector",
                  "lora_magnitude_vector.weight": "lora_magnitude_vector"}


def _split(name: str) -> tuple[str, str]:
    """'layers.0.attn.q_proj.lora_A.weight' -> ('layers.0.attn.q_proj', 'lora_A.weight')."""
    for suffix in ADAPTER_PARAMS:
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    raise KeyError(f"{name!r} is not an adapter parameter")


def adapter_mappings(bridge) -> list[WeightMapping]:
    """The name tables of every prefix spelling of the bridge's architecture, the runtime one first."""
    arch = bridge.architecture
    return [WeightMapping(arch.family, text, head) for text, head in zip(arch.text_prefixes, arch.head_prefixes)]


def adapter_tensors(mapping, model, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """{PEFT file name: full tensor} of every adapter of the whole model, on every rank (collective
    under tensor and pipeline parallelism)."""
    chunks = ModelChunks.of(model)
    out = {}
    for chunk in chunks:
        for name, param in adapter_parameters(chunk).items():
            module, suffix = _split(name)
            tensor = full_tensor(chunks, name, param)
            tensor = tensor.to(dtype or param.dtype).cpu().contiguous()
            out[f"{PREFIX}{mapping.hf_module_name(module)}.{suffix}"] = tensor
    dims = chunks.dims
    if dims is not None and dims.config.pp > 1:
        stages = [None] * dims.config.pp
        dist.all_gather_object(stages, out, group=dims.pp_group)
        out = {k: v for stage in stages for k, v in stage.items()}
    return out


def _target_modules(bridge, mapping, modules: list[str]):
    """peft's target_modules: short names when they pick exactly our modules, else an exact-name regex."""
    shorts = sorted({m.rsplit(".", 1)[1] for m in modules})
    everywhere = {m for m in candidate_modules(bridge.config) if m.rsplit(".", 1)[1] in shorts}
    if set(modules) == everywhere and not bridge.architecture.multimodal:  # no vision tower to catch
        return shorts
    return "|".join(re.escape(mapping.hf_module_name(m)) for m in modules)


def adapter_config(bridge, model) -> dict:
    peft, mapping = ModelChunks.of(model).adapters, adapter_mappings(bridge)[0]
    alpha = peft.alpha
    source = peft.base_model_name_or_path or (str(bridge.source) if bridge.source is not None else None)
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": source,
        "r": peft.rank, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": peft.dropout, "target_modules": _target_modules(bridge, mapping, peft.modules),
        "use_dora": peft.scheme == "dora", "use_rslora": peft.use_rslora, "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "lora_bias": False,
        "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
    }


def save_hf_adapter(bridge, model, out_dir, dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write `model`'s adapters as an HF PEFT folder. Every rank calls it under torchrun; rank 0 writes."""
    from safetensors.torch import save_file

    chunks = ModelChunks.of(model)
    if chunks.adapters is None:
        raise ConfigError("the model has no adapters (apply_peft or load_hf_adapter first)")
    dims = chunks.dims
    distributed = dims is not None and dims.world_size > 1
    target = Path(out_dir)
    rank0 = not distributed or dims.rank == 0
    refusal = busy_message(target) if rank0 and not overwrite else None
    if distributed:  # a single-device model may be saved by one rank alone
        refusal = from_rank0(refusal)
    if refusal is not None:
        raise FileExistsError(refusal)
    tensors = adapter_tensors(adapter_mappings(bridge)[0], chunks, dtype)
    if rank0:
        with atomic_folder(target, overwrite=overwrite) as tmp:
            save_file(dict(sorted(tensors.items())), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            (tmp / CONFIG_NAME).write_text(json.dumps(adapter_config(bridge, chunks), indent=2) + "\n")
    if distributed:
        dist.barrier()
    return target


def _read_config(folder: Path) -> dict:
    """adapter_config.json, checked and completed with peft's LoraConfig defaults (r 8, alpha 8).

    `target_modules` (a list of names or, as peft allows, one regex string) and `exclude_modules` are
    only type-checked: the adapted modules are those the tensors name."""
    path = inside(folder, CONFIG_NAME)
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME}; expected a folder written by peft's save_pretrained")
    cfg = Fields(parse_json(path.read_bytes(), str(path)), str(path))
    for key in ("target_modules", "exclude_modules", "modules_to_save"):
        cfg.strings(key, None, null="keep", allow_str=key != "modules_to_save")
    for key in ("rank_pattern", "alpha_pattern"):
        cfg.object(key, null="keep")
    checked = dict(
        r=cfg.int("r", 8), lora_alpha=cfg.number("lora_alpha", 8, positive=False),
        lora_dropout=cfg.number("lora_dropout", 0.0, positive=False, null="default"),
        use_dora=cfg.bool("use_dora", False, null="default"), use_rslora=cfg.bool("use_rslora", False, null="default"),
        base_model_name_or_path=cfg.string("base_model_name_or_path", None, null="keep"),
    )
    if checked["lora_dropout"] >= 1:
        cfg.fail("lora_dropout", checked["lora_dropout"], "a probability in [0, 1)")
    problems = []
    if cfg.string("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {cfg.obj['peft_type']!r} (only LORA, with or without use_dora)")
    if cfg.string("bias", "none", null="default") != "none" or cfg.bool("lora_bias", False, null="default"):
        problems.append("trained biases (bias / lora_bias)")
    if cfg.bool("fan_in_fan_out", False, null="default"):
        problems.append("fan_in_fan_out=true (Conv1D-style layers)")
    if cfg.obj.get("modules_to_save"):
        problems.append(f"modules_to_save={cfg.obj['modules_to_save']}")
    if cfg.obj.get("rank_pattern") or cfg.obj.get("alpha_pattern"):
        problems.append("per-module rank_pattern / alpha_pattern")
    if problems:
        raise UnsupportedModelError(f"{path}: adapter features minibridge does not support: {'; '.join(problems)}")
    return {**cfg.obj, **checked}


def _read_tensors(folder: Path, mappings: list[WeightMapping], config) -> dict[str, dict[str, torch.Tensor]]:
    """{local module: {suffix: tensor}} from adapter_model.safetensors."""
    from safetensors.torch import load_file

    path = inside(folder, WEIGHTS_NAME)
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} (adapter_model.bin is not read: save with safetensors)")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    adaptable = set(candidate_modules(config))
    for key, tensor in load_file(str(path)).items():
        suffix = next((s for s in _FILE_SUFFIXES if key.endswith("." + s)), None)
        if not key.startswith(PREFIX) or suffix is None:
            raise KeyError(f"{path}: unexpected tensor {key!r}; expected {PREFIX}<module>.lora_A.weight / .lora_B.weight"
                           f" / .lora_magnitude_vector")
        hf_module = key[len(PREFIX): -len(suffix) - 1]
        local = next((m for m in (mp.local_module_name(hf_module) for mp in mappings) if m is not None), None)
        if local not in adaptable:
            raise KeyError(f"{path}: tensor {key!r} names module {hf_module!r}, which this {mappings[0].family} model "
                           f"lacks (adapters on the vision tower or the output layer are not supported)")
        modules.setdefault(local, {})[_FILE_SUFFIXES[suffix]] = tensor
    return modules


def load_hf_adapter(bridge, model, folder, seed: int = 0):
    """Attach the adapters of an HF PEFT folder to `model` (sharded or not, or pipeline chunks) and load
    their values; they stay trainable, so training can continue. Returns `model`."""
    folder = Path(folder)
    cfg = _read_config(folder)
    mappings = adapter_mappings(bridge)
    tensors = _read_tensors(folder, mappings, bridge.config)
    chunks = ModelChunks.of(model)
    order = {m: i for i, m in enumerate(candidate_modules(chunks.config))}
    modules = sorted(tensors, key=lambda m: order.get(m, len(order)))
    dora = bool(cfg.get("use_dora"))
    apply_peft(chunks, "dora" if dora else "lora", rank=int(cfg["r"]), alpha=cfg["lora_alpha"],
               dropout=float(cfg.get("lora_dropout") or 0.0), targets=modules, use_rslora=bool(cfg.get("use_rslora")),
               seed=seed)
    with torch.no_grad():
        specs = chunks.specs
        for chunk in chunks:
            for name, param in adapter_parameters(chunk).items():
                module, suffix = _split(name)
                tensor = tensors[module].get(suffix)
                if tensor is None:
                    raise MissingTensorError(f"{folder / WEIGHTS_NAME}: {mappings[0].hf_module_name(module)}.{suffix} is missing")
                spec = specs.get(name)
                expected = tuple(spec.full_shape) if spec is not None else tuple(param.shape)
                if tuple(tensor.shape) != expected:
                    raise CheckpointMismatchError(f"{folder / WEIGHTS_NAME}: {mappings[0].hf_module_name(module)}.{suffix} has "
                                     f"shape {list(tensor.shape)}, expected {list(expected)} (another base model?)")
                param.copy_(take_block(tensor, spec))
            chunk.adapters.base_model_name_or_path = cfg.get("base_model_name_or_path")
    return model
