"""Step three of making a model from an HF folder: stream its tensors into the allocated chunks.

The chunks come from `minibridge.parallel.parallelize.build_model` (built on meta, parallelized,
allocated once); each tensor is read from disk straight into its parameter, only this rank's block
of it (or through one temporary tensor when it must be cast), so peak memory is about one copy of
this rank's weights. Under FSDP2 a parameter is this rank's dp shard of the TP block, and only its rows
are read. `init_fresh_weights` is the other way to fill them: pretraining from scratch. LoRA/DoRA
adapters already attached (`build_model(adapters=...)`) are left to `minibridge.peft.init_adapters`.
"""

from __future__ import annotations

import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm.auto import tqdm

from ..errors import CheckpointMismatchError, MissingTensorError
from ..models import CausalLM, ModelChunks, whole_model_shapes
from ..models.common import RMSNorm
from ..parallel.fsdp import local_rows
from ..parallel.sharding import take_block
from ..peft import adapter_parameters
from .hf_folder import HFFolder
from .mappings import IGNORED_HF, WeightMapping
from .safetensors_io import READ_THREADS
from .sharded_io import read_block


def load_hf_weights(chunks: ModelChunks, folder: HFFolder, mapping: WeightMapping, progress: bool = True) -> list[str]:
    """Fill every parameter of this rank's `chunks` from `folder`. Returns the HF names left outside
    the text model (a multimodal checkpoint's vision tower), which an export passes through unchanged."""
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


def check_hf_weights(chunks: ModelChunks, folder: HFFolder, mapping: WeightMapping) -> None:
    """Every tensor of `folder` against `chunks` built on meta: names, shapes and dtypes, before a byte of the
    model is allocated (a config.json with hidden_size 10^9 is named here, not by a failed 1 TB allocation)."""
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
    params = _base_parameters(model)
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


def _base_parameters(model: CausalLM) -> dict[str, torch.nn.Parameter]:
    """name -> parameter of the model without its LoRA/DoRA adapters."""
    adapters = adapter_parameters(model)
    return {n: p for n, p in model.named_parameters() if n not in adapters}


@torch.no_grad()
def init_fresh_weights(chunks: ModelChunks, seed: int) -> None:
    """Initialise for pretraining, identically under every parallel layout: each parameter's full
    tensor comes from a generator seeded by (seed, name), and a rank keeps its block of it (its dp rows
    under FSDP2; one full tensor in memory at a time, as Megatron's use_cpu_initialization)."""
    specs = chunks.specs
    config = chunks.config
    for chunk in chunks:
        for name, param in _base_parameters(chunk).items():
            spec = specs.get(name)
            shape = spec.full_shape if spec is not None else tuple(param.shape)
            if param.ndim < 2:  # norms (Llama: 1, Gemma: 0 since it scales by 1 + w) and biases
                module = chunk.get_submodule(name.rsplit(".", 1)[0])
                unit = isinstance(module, RMSNorm) and not module.gemma
                full = torch.ones(shape) if unit else torch.zeros(shape)
            else:
                generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
                full = torch.randn(shape, generator=generator) * config.init_std
                if name == "embed_tokens.weight" and config.pad_token_id is not None:
                    full[config.pad_token_id] = 0
            out, rows = local_rows(param)
            out.copy_(take_block(full, spec, rows))
