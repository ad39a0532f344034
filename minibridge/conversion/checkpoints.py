"""Finding, checking and loading minibridge checkpoints for conversion and generation.

A checkpoint is the DCP format training writes (`minibridge.checkpoint`): a save folder with
`latest_checkpointed_iteration.txt` and `iter_NNNNNNN/` folders, each holding DCP files and `run.json`.
Before reading any tensor, a checkpoint is checked against the HF config it is meant for: the model
sizes recorded in run.json, then the shape of every stored parameter, so a checkpoint of another model
is refused with the names and values that differ.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from ..bridge.fingerprint import weights_fingerprint
from ..checkpoint import load_checkpoint, read_checkpoint, read_run_info, resolve_checkpoint
from ..checkpoint.names import RUN_CONFIG_FILE
from ..checkpoint.megatron import checkpoint_kind
from ..errors import CheckpointMismatchError, ConfigError
from ..loading.hf import build_hf_model
from ..models import ModelChunks, ModelConfig, whole_model_shapes
from ..parallel.parallelize import build_model

# The fields that decide which tensors a model has and their shapes: a checkpoint must agree on them.
SHAPE_FIELDS = ("family", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                "num_kv_heads", "head_dim", "tie_word_embeddings", "attention_bias", "mlp_bias")


def architecture_digest(config: ModelConfig) -> str:
    """A short digest of the shape-deciding fields (stored in run.json by `convert import`)."""
    fields = {k: getattr(config, k) for k in SHAPE_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def stored_model_config(info: dict) -> dict | None:
    """The model config a run.json records (training and `convert import` both keep it here)."""
    model = (info.get("config") or {}).get("model") or {}
    return model.get("config") if isinstance(model, dict) else None


def trained_tokenizer(info: dict) -> str | None:
    """The tokenizer folder the run of a run.json was trained with: dataset.tokenizer, else the pretrained
    checkpoint's (as training.loop picks it; mock data needs none)."""
    config = info.get("config") or {}
    dataset, checkpoint = config.get("dataset") or {}, config.get("checkpoint") or {}
    if dataset.get("tokenizer"):
        return dataset["tokenizer"]
    if dataset.get("kind", "mock") != "mock" and checkpoint.get("pretrained_checkpoint"):
        return checkpoint["pretrained_checkpoint"]
    return None


def check_same_model(config: ModelConfig, hf_source: str | Path, folder: Path, info: dict, stored: dict,
                     adapters_only: bool = False, strict: bool = True) -> list[str]:
    """Refuse a checkpoint whose model differs from `config` (read from `hf_source`). Returns the
    parameters the checkpoint lacks, which only `strict=False` accepts (a shape mismatch never is)."""
    recorded = stored_model_config(info)
    if recorded:
        diffs = [f"{k}={recorded.get(k)!r} (the HF config says {getattr(config, k)!r})"
                 for k in SHAPE_FIELDS if k in recorded and recorded[k] != getattr(config, k)]
        if diffs:
            raise CheckpointMismatchError(
                f"{folder} is a checkpoint of another model than {hf_source}/config.json: " + "; ".join(diffs))
    missing = []
    if adapters_only:
        return missing
    for name, shape in whole_model_shapes(config).items():
        meta = stored.get(f"model.{name}")
        if meta is None and not strict:
            missing.append(name)
            continue
        if meta is None:
            raise CheckpointMismatchError(f"{folder}: parameter {name!r} is missing; the checkpoint does not hold "
                                          f"the model of {hf_source}/config.json (or holds adapters only); "
                                          f"--not-strict exports the tensors it has")
        if tuple(meta.size) != shape:
            raise CheckpointMismatchError(
                f"{folder}: parameter {name!r} has shape {list(meta.size)}, but the model of {hf_source}/config.json "
                f"has {list(shape)}: a checkpoint of another model")
    return missing


def stored_dtype(stored: dict, adapters: bool = False) -> torch.dtype:
    """The dtype of the stored model tensors (of the adapters, for an adapter checkpoint)."""
    for key, meta in stored.items():
        if key.startswith("model.") and (".lora_" in key) == adapters:
            return meta.properties.dtype
    return torch.float32


def load_model_state(folder: Path, chunks: ModelChunks, trainable_only: bool = False) -> None:
    """Fill `chunks` (sharded or not) from the checkpoint, collectively under torchrun."""
    with warnings.catch_warnings():  # DCP warns that a single process without a process group loads alone
        warnings.filterwarnings("ignore", message=".*torch.distributed is .*")
        load_checkpoint(folder, chunks, restore_rng=False, trainable_only=trainable_only)


def load_megatron_model(bridge, path: str | Path, parallel=None, dtype: torch.dtype | None = None,
                        device=None, merge_adapters: bool = True, progress: bool = True) -> ModelChunks:
    """This rank's chunks of the model of `bridge` (an AutoBridge of the matching HF folder) with the
    weights of the minibridge checkpoint at `path`: a full checkpoint is read directly (resharded to
    `parallel`); an adapter-only (LoRA/DoRA) checkpoint is attached to its base model and, by default,
    merged into it (pp=1 only). `dtype` defaults to the dtype stored in the checkpoint. A Megatron-Core
    torch_dist checkpoint (Megatron Bridge, Megatron-LM, `convert import --format megatron`) is read layer
    slice by layer slice (checkpoint/megatron_weights.py)."""
    if checkpoint_kind(path)[1] == "megatron":
        return _load_megatron_folder(bridge, path, parallel, dtype, device)
    folder, info, stored = read_checkpoint(path)
    peft = info.get("peft")
    if parallel is not None and parallel.config.pp > 1 and peft is not None:
        raise ConfigError(f"{folder} holds {peft.get('scheme')} adapters: loading them onto their base model "
                          f"supports tensor parallelism only (pp=1); a full checkpoint loads under any layout")
    check_same_model(bridge.config, bridge.source, folder, info, stored, adapters_only=peft is not None)
    if peft is None:
        chunks = build_model(bridge.config, parallel, dtype or stored_dtype(stored), device)
        load_model_state(folder, chunks)
        return chunks
    from ..peft import apply_peft, merge_peft

    model = _load_base(bridge, folder, peft, parallel, dtype or stored_dtype(stored, adapters=True), device, progress)
    settings = (info.get("config") or {}).get("peft") or {}
    apply_peft(model, peft["scheme"], rank=peft["dim"], alpha=settings.get("alpha"), targets=peft["modules"],
               dropout_position=settings.get("dropout_position", "pre"))
    load_model_state(folder, model, trainable_only=True)
    return merge_peft(model) if merge_adapters else model


def _load_megatron_folder(bridge, path, parallel, dtype, device) -> ModelChunks:
    from ..bridge.megatron_config import config_from_run_config
    from ..checkpoint.megatron_weights import load_megatron_weights, megatron_parameters

    folder, _ = checkpoint_kind(path)
    if (folder / RUN_CONFIG_FILE).is_file():  # its recorded model must be the one of `bridge`
        recorded = config_from_run_config(folder)
        diffs = [f"{k}={getattr(recorded, k)!r} (the HF config says {getattr(bridge.config, k)!r})"
                 for k in SHAPE_FIELDS if getattr(recorded, k) != getattr(bridge.config, k)]
        if diffs:
            raise CheckpointMismatchError(f"{folder} is a Megatron checkpoint of another model than "
                                          f"{bridge.source}/config.json: " + "; ".join(diffs))
    _, weights = megatron_parameters(folder, bridge.config)
    chunks = build_model(bridge.config, parallel, dtype or weights.dtype, device)
    load_megatron_weights(chunks, weights)
    return chunks


def checkpoint_tokenizer(path) -> str | None:
    """The tokenizer folder that goes with a checkpoint: for a Megatron one the `tokenizer/` Megatron Bridge
    saves beside the weights, for ours the one its run trained with (None: neither has one)."""
    folder, kind = checkpoint_kind(path)
    if kind == "megatron":
        from ..bridge.megatron_config import megatron_tokenizer

        found = megatron_tokenizer(folder)
        return str(found) if found else None
    return trained_tokenizer(read_run_info(folder))


def _load_base(bridge, folder: Path, peft: dict, parallel, dtype, device, progress):
    """The frozen base the adapters were trained on: the HF folder of `bridge` when its fingerprint is the
    one recorded, else the recorded minibridge checkpoint when it is still there and unchanged."""
    base = peft.get("base_model") or {}
    wanted = base.get("fingerprint")
    if bridge.source is None:  # (was a TypeError, or adapters merged into random weights)
        raise CheckpointMismatchError(f"{folder} holds {peft['scheme']} adapters: loading them needs the weights of "
                                      f"their base model {base.get('source')}: pass its HF folder")
    if wanted is None or weights_fingerprint(bridge.source)["fingerprint"] == wanted:
        progress = progress and (parallel is None or parallel.rank == 0)
        return build_hf_model(bridge.config, bridge.folder, parallel, dtype, device, progress, bridge.mapping)
    recorded = Path(base.get("source", ""))
    if recorded.is_dir() and not (recorded / "config.json").is_file():
        try:
            base_folder = resolve_checkpoint(recorded)
        except FileNotFoundError:
            base_folder = None
        if base_folder is not None and weights_fingerprint(recorded)["fingerprint"] == wanted:
            chunks = build_model(bridge.config, parallel, dtype, device)
            load_model_state(base_folder, chunks)
            return chunks
    raise CheckpointMismatchError(
        f"{folder} holds {peft['scheme']} adapters trained on base model {base.get('source')} (fingerprint "
        f"{wanted}), but {bridge.source} has other weights (fingerprint "
        f"{weights_fingerprint(bridge.source)['fingerprint']}); adapters only fit the weights they were "
        f"trained on: pass that base model's HF folder")
