"""Build a model on the meta device and stream HF tensors into it, one at a time.

Peak memory is about one copy of the weights: parameters are allocated once (`to_empty`) and each
tensor is read from disk straight into its parameter (or through one temporary tensor when it has
to be cast to another dtype).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import CheckpointMismatchError, MissingTensorError
from ..models import CausalLM, ModelConfig, model_class
from .hf_folder import HFFolder
from .mappings import IGNORED_HF, WeightMapping
from .safetensors_io import READ_THREADS
from .sharded_io import full_shape, read_block


@contextlib.contextmanager
def _skip_default_init():
    """nn.Linear / nn.Embedding initialise themselves on construction; on meta that is wasted work
    (and the first random op on meta costs ~1 s of imports). Weights are loaded or reset afterwards."""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


def empty_model(config: ModelConfig, dtype: torch.dtype, device: torch.device | str, parallel=None,
                stage: tuple[range, bool, bool] | None = None) -> CausalLM:
    """The model (or the pipeline `stage` (layers, first, last)) with uninitialised storage: built on
    meta (free), sharded for `parallel` (a ParallelDims) while still on meta, cast, then allocated
    once: each rank allocates only its shard."""
    with torch.device("meta"), _skip_default_init():
        model = model_class(config)(config, *(stage or ()))
    if parallel is not None:
        from ..parallel import apply_tensor_parallel
        from ..parallel.context import apply_context_parallel

        apply_tensor_parallel(model, parallel)
        apply_context_parallel(model, parallel)
    return model.to(dtype=dtype).to_empty(device=device)


def pipeline_stages(config: ModelConfig, parallel) -> list[tuple[range, bool, bool]]:
    """(layers, first, last) of each chunk this rank holds under `parallel`'s pipeline layout."""
    from ..parallel.pipeline import chunk_stages, layout_stages

    pp, vp = parallel.config.pp, parallel.config.vp
    layers = layout_stages(config.num_layers, parallel.config)
    return [(layers[s], s == 0, s == pp * vp - 1) for s in chunk_stages(pp, vp, parallel.pp_rank)]


def _other_stage(model: CausalLM, local: str) -> bool:
    """Whether `local` is a parameter of the whole model that this pipeline stage does not hold."""
    parts = local.split(".")
    if parts[0] == "layers":
        return parts[1].isdigit() and int(parts[1]) < model.config.num_layers and parts[1] not in model.layers
    return getattr(model, parts[0], "missing") is None


def load_hf_weights(model: CausalLM, folder: HFFolder, mapping: WeightMapping, progress: bool = True) -> list[str]:
    """Fill every parameter of `model` from `folder`. Returns the HF names left outside the text model
    (a multimodal checkpoint's vision tower), which an export passes through unchanged."""
    params = dict(model.named_parameters())
    specs = getattr(model, "tp_specs", {})
    loaded: set[str] = set()
    passthrough = []
    # Files in order, tensors by offset: the disk sees near-sequential reads per shard.
    infos = sorted(folder.tensors.values(), key=lambda i: (str(i.path), i.begin))
    jobs = []  # names are all checked before any byte is read
    for info in infos:
        local = mapping.to_local(info.name)
        if local is None:
            if mapping.is_text(info.name) and not IGNORED_HF.match(info.name):
                raise MissingTensorError(f"{info.path}: unexpected tensor {info.name!r}; it matches no {mapping.family} parameter")
            if not IGNORED_HF.match(info.name):
                passthrough.append(info.name)
            continue
        if local == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # some tied checkpoints also store the output layer; transformers ignores it too
        if local not in params and _other_stage(model, local):
            continue  # a pipeline stage reads only its own layers
        if local not in params:
            raise MissingTensorError(
                f"{info.path}: tensor {info.name!r} has no parameter {local!r} in this model "
                f"(a bias the config does not enable, or a tied output layer stored separately?)"
            )
        param = params[local]
        expected = full_shape(model, local, param)
        if expected != info.shape:
            raise CheckpointMismatchError(f"{info.path}: tensor {info.name!r} has shape {list(info.shape)}, expected {list(expected)}")
        jobs.append((info, param.data, specs.get(local)))
        loaded.add(local)
    missing = [name for name in params if name not in loaded]
    if missing:
        hf_names = [mapping.to_hf(n) for n in missing]
        raise MissingTensorError(f"{folder.folder}: missing tensors {hf_names[:8]}{' ...' if len(missing) > 8 else ''}")
    bar = tqdm(total=sum(j[0].nbytes for j in jobs), unit="B", unit_scale=True, desc="loading", disable=not progress)

    def read(job):
        read_block(*job)
        bar.update(job[0].nbytes)

    # A few tensors at a time: the reads release the GIL, and first-touching the freshly allocated
    # parameters (page faults) is most of a load's cost and scales with threads.
    with ThreadPoolExecutor(READ_THREADS) as pool:
        list(pool.map(read, jobs))
    bar.close()
    return passthrough


@torch.no_grad()
def init_fresh_weights(model: CausalLM, seed: int) -> None:
    """Initialise for pretraining, identically under every parallel layout: each parameter's full
    tensor comes from a generator seeded by (seed, name), and a rank keeps its block of it (one full
    tensor in memory at a time, as Megatron's use_cpu_initialization)."""
    from ..parallel.sharding import take_block

    specs = getattr(model, "tp_specs", {})
    std = model.config.init_std
    for name, param in model.named_parameters():
        spec = specs.get(name)
        shape = spec.full_shape if spec is not None else tuple(param.shape)
        if param.ndim < 2:  # norms (Llama: 1, Gemma: 0 since it scales by 1 + w) and biases
            full = torch.ones(shape) if name.endswith("norm.weight") and not model.config.is_gemma else torch.zeros(shape)
        else:
            generator = torch.Generator().manual_seed(_stable_hash(f"{seed}:{name}"))
            full = torch.randn(shape, generator=generator) * std
            if name == "embed_tokens.weight" and model.config.pad_token_id is not None:
                full[model.config.pad_token_id] = 0
        param.copy_(take_block(full, spec))


def _stable_hash(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())
