"""Build a model on the meta device and stream HF tensors into it, one at a time.

Peak memory is about one copy of the weights: parameters are allocated once (`to_empty`) and each
tensor is read from disk straight into its parameter (or through one temporary tensor when it has
to be cast to another dtype).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..models import CausalLM, ModelConfig, model_class
from .hf_folder import HFFolder
from .mappings import IGNORED_HF, WeightMapping
from .safetensors_io import read_tensor


def empty_model(config: ModelConfig, dtype: torch.dtype, device: torch.device | str) -> CausalLM:
    """The model with uninitialised storage: built on meta (free), cast, then allocated once."""
    with torch.device("meta"):
        model = model_class(config)(config)
    return model.to(dtype=dtype).to_empty(device=device)


def load_hf_weights(model: CausalLM, folder: HFFolder, mapping: WeightMapping, progress: bool = True) -> list[str]:
    """Fill every parameter of `model` from `folder`. Returns the HF names left outside the text model
    (a multimodal checkpoint's vision tower), which an export passes through unchanged."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    passthrough = []
    # Files in order, tensors by offset: the disk sees one sequential read per shard.
    infos = sorted(folder.tensors.values(), key=lambda i: (str(i.path), i.begin))
    bar = tqdm(total=sum(i.nbytes for i in infos), unit="B", unit_scale=True, desc="loading", disable=not progress)
    for info in infos:
        local = mapping.to_local(info.name)
        if local is None:
            if mapping.is_text(info.name) and not IGNORED_HF.match(info.name):
                raise KeyError(f"{info.path}: unexpected tensor {info.name!r}; it matches no {mapping.family} parameter")
            if not IGNORED_HF.match(info.name):
                passthrough.append(info.name)
            continue
        if local == "lm_head.weight" and model.lm_head is None:
            continue  # some tied checkpoints also store the output layer; transformers ignores it too
        if local not in params:
            raise KeyError(
                f"{info.path}: tensor {info.name!r} has no parameter {local!r} in this model "
                f"(a bias the config does not enable, or a tied output layer stored separately?)"
            )
        param = params[local]
        if tuple(param.shape) != info.shape:
            raise ValueError(
                f"{info.path}: tensor {info.name!r} has shape {list(info.shape)}, expected {list(param.shape)}"
            )
        read_tensor(info, out=param.data)
        loaded.add(local)
        bar.update(info.nbytes)
    bar.close()
    missing = [name for name in params if name not in loaded]
    if missing:
        hf_names = [mapping.to_hf(n) for n in missing]
        raise KeyError(f"{folder.folder}: missing tensors {hf_names[:8]}{' ...' if len(missing) > 8 else ''}")
    return passthrough
