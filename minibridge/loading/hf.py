"""The HF folder loader: stream a folder's tensors into chunks made by `build_model`.

    check_hf_folder(build_model(config, dims, meta=True), folder)   # names, shapes, dtypes: nothing allocated
    chunks = build_model(config, dims, dtype, device, ...)
    load_hf_folder(chunks, folder)

Each tensor is read from disk straight into its parameter, only this rank's block of it (or through one
temporary tensor when it must be cast), so peak memory is about one copy of this rank's weights. Under
FSDP2 a parameter is this rank's dp shard of the TP block, and only its rows are read. The names come from
the bridge's mapping table for the folder's architecture; LoRA/DoRA adapters already attached
(`build_model(adapters=...)`) are left to `minibridge.peft.init_adapters`.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..bridge.hf_config import architecture_of, config_from_hf, config_to_hf, read_config_json
from ..bridge.hf_folder import HFFolder
from ..bridge.mappings import IGNORED_HF, WeightMapping
from ..bridge.safetensors_io import READ_THREADS
from ..bridge.sharded_io import read_block
from ..errors import CheckpointMismatchError, MissingTensorError
from ..models import CausalLM, ModelChunks, ModelConfig, whole_model_shapes
from ..parallel.fsdp import local_rows
from ..parallel.parallelize import build_model
from .fresh import base_parameters


def hf_folder_config(folder: str | Path) -> ModelConfig:
    """The model of an HF folder, from its config.json."""
    return config_from_hf(read_config_json(folder), source=str(Path(folder) / "config.json"))


def hf_mapping(config: ModelConfig, folder: str | Path | HFFolder | None = None) -> WeightMapping:
    """The HF names of `config`'s parameters, spelled as `folder`'s tensors spell them (a multimodal Gemma
    has two spellings); without a folder, as transformers saves the model of `config`."""
    if folder is None:
        return WeightMapping.detect(architecture_of(config_to_hf(config)), ())
    folder = _folder(folder)
    return WeightMapping.detect(architecture_of(read_config_json(folder.folder)), folder.tensors)


def build_hf_model(config: ModelConfig, folder: str | Path | HFFolder, dims=None, dtype: torch.dtype = torch.float32,
                   device=None, progress: bool = True, mapping: WeightMapping | None = None, **options) -> ModelChunks:
    """The model of an HF folder, the three steps above in one call (`options` go to `build_model`)."""
    folder = _folder(folder)
    mapping = mapping or hf_mapping(config, folder)
    check_hf_folder(build_model(config, dims, meta=True), folder, mapping)
    chunks = build_model(config, dims, dtype, device, **options)
    load_hf_folder(chunks, folder, mapping, progress=progress)
    return chunks


def _folder(folder: str | Path | HFFolder) -> HFFolder:
    return folder if isinstance(folder, HFFolder) else HFFolder(folder)


def load_hf_folder(chunks: ModelChunks, folder: str | Path | HFFolder, mapping: WeightMapping | None = None,
                   progress: bool = True) -> list[str]:
    """Fill every base parameter of this rank's `chunks` from `folder`. Returns the HF names left outside
    the text model (a multimodal checkpoint's vision tower), which an export passes through unchanged."""
    folder = _folder(folder)
    mapping = mapping or hf_mapping(chunks.config, folder)
    jobs = []  # names are all checked before any byte is read
    passthrough = []
    for chunk in chunks:
        jobs += _chunk_jobs(chunk, folder, mapping, passthrough)
    passthrough = list(dict.fromkeys(passthrough))
    bar = tqdm(total=sum(j[0].nbytes for j in jobs), unit="B", unit_scale=True, desc="loading", disable=not progress)

    def read(job):
        read_block(*job)
        warn_if_not_finite(job[0], job[1])
        bar.update(job[0].nbytes)

    # A few tensors at a time: the reads release the GIL, and first-touching the freshly allocated
    # parameters (page faults) is most of a load's cost and scales with threads.
    with ThreadPoolExecutor(READ_THREADS) as pool:
        list(pool.map(read, jobs))
    bar.close()
    return passthrough


def check_hf_folder(chunks: ModelChunks, folder: str | Path | HFFolder,
                    mapping: WeightMapping | None = None) -> None:
    """Every tensor of `folder` against `chunks` built on meta: names, shapes and dtypes, before a byte of the
    model is allocated (a config.json with hidden_size 10^9 is named here, not by a failed 1 TB allocation)."""
    folder = _folder(folder)
    mapping = mapping or hf_mapping(chunks.config, folder)
    for chunk in chunks:
        _chunk_jobs(chunk, folder, mapping, [])


def warn_if_not_finite(info, tensor: torch.Tensor) -> None:
    """A warning naming a loaded tensor that holds NaN or Inf (one pass over it, in the reading thread)."""
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        warnings.warn(f"{info.path}: tensor {info.name!r} holds NaN or Inf values; the model will compute NaN "
                      f"wherever they reach", stacklevel=2)


def _check_dtype(info) -> None:
    """Weights are floating point: an integer tensor, or an FP8 one (scaled by a `*_scale` tensor in a
    quantized checkpoint), would be cast to garbage."""
    if not info.dtype.is_floating_point or info.dtype.itemsize < 2:
        raise CheckpointMismatchError(f"{info.path}: tensor {info.name!r} is {str(info.dtype).removeprefix('torch.')}"
                                      f"; expected a float16, bfloat16 or float32 weight (a quantized checkpoint? "
                                      f"dequantize it first)")


def _chunk_jobs(model: CausalLM, folder: HFFolder, mapping: WeightMapping, passthrough: list[str]) -> list:
    """(tensor info, destination, shard spec, rows) of every parameter of one chunk, every name checked."""
    params = base_parameters(model)
    whole = whole_model_shapes(model.config)  # every stage's parameters: a name outside it is unexpected
    sharding = model.sharding
    specs = sharding.specs if sharding is not None else {}
    loaded: set[str] = set()
    # Files in order, tensors by offset: the disk sees near-sequential reads per shard.
    infos = sorted(folder.tensors.values(), key=lambda i: (str(i.path), i.begin))
    jobs = []
    for info in infos:
        local = mapping.to_local(info.name)
        if local is None:
            if mapping.is_text(info.name) and not IGNORED_HF.match(info.name):
                raise MissingTensorError(f"{info.path}: unexpected tensor {info.name!r}; it matches no "
                                         f"{mapping.family} parameter")
            if not IGNORED_HF.match(info.name):
                passthrough.append(info.name)
            continue
        if local == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # some tied checkpoints also store the output layer; transformers ignores it too
        if local not in whole:
            raise MissingTensorError(
                f"{info.path}: unexpected tensor {info.name!r}: the model has no parameter {local!r} "
                f"(a bias the config does not enable, or a tied output layer stored separately?)"
            )
        if local not in params:
            continue  # another pipeline stage's
        param = params[local]
        _check_dtype(info)
        expected = sharding.full_shape(local, param) if sharding is not None else tuple(param.shape)
        if expected != info.shape:
            raise CheckpointMismatchError(f"{info.path}: tensor {info.name!r} has shape {list(info.shape)}, "
                                          f"expected {list(expected)}")
        out, rows = local_rows(param)
        jobs.append((info, out, specs.get(local), rows))
        loaded.add(local)
    missing = [name for name in params if name not in loaded]
    if missing:
        hf_names = [mapping.to_hf(n) for n in missing]
        raise MissingTensorError(f"{folder.folder}: missing tensors {hf_names[:8]}{' ...' if len(missing) > 8 else ''}")
    return jobs
