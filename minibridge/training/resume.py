"""Whether a checkpoint may be resumed by this run: same model, same sequences, same data, same adapters.

A resumed run continues the stored run's optimizer state and data position, so anything that changes
what the weights mean or which samples come next makes the resumed run a different experiment that
only looks like a continuation. Those settings are compared with the checkpoint's run.json and every
difference is named; learning rate, schedule, batch size, intervals and the layout may change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..checkpoint.folder import clean_stale, iteration_dir, latest_iteration, resolve_checkpoint
from ..errors import CheckpointMismatchError, ConfigError
from .config import ConfigContainer

# The settings of run.json's config that fix the model and the data stream.
RUN_IDENTITY = (
    ("model", "config"), ("model", "seq_length"),
    ("dataset", "kind"), ("dataset", "data_paths"), ("dataset", "blend_weights"), ("dataset", "split"),
    ("dataset", "tokenizer"), ("dataset", "packing"), ("dataset", "sample_layout"),
)
PATH_KEYS = {("dataset", "data_paths"), ("dataset", "tokenizer")}


def _normalised(key: tuple[str, ...], value):
    """Paths compare as absolute paths (a relative path and its absolute form are the same data)."""
    if key not in PATH_KEYS or value is None:
        return value
    if isinstance(value, list):
        return [os.path.abspath(v) if isinstance(v, str) else v for v in value]
    return os.path.abspath(value) if isinstance(value, str) else value


def _leaves(prefix: str, value) -> dict:
    """{"model.config.hidden_size": 64, ...}: nested dicts flattened to dotted keys."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_leaves(f"{prefix}.{k}", v))
        return out
    return {prefix: value}


def run_differences(stored: dict, current: dict) -> list[str]:
    """`key: stored value -> this run's value` for every identity setting that differs."""
    diffs = []
    for key in RUN_IDENTITY:
        if not isinstance(stored.get(key[0]), dict) or key[1] not in stored[key[0]]:
            continue  # not recorded (a `convert import` checkpoint records only the model)
        old, new = stored, current
        for part in key:
            old = old.get(part) if isinstance(old, dict) else None
            new = new.get(part) if isinstance(new, dict) else None
        old, new = _leaves(".".join(key), _normalised(key, old)), _leaves(".".join(key), _normalised(key, new))
        for name in old:  # a setting the checkpoint predates is not compared
            if old.get(name) != new.get(name):
                diffs.append(f"{name}: {old.get(name)!r} in the checkpoint, {new.get(name)!r} in this run")
    return diffs


def check_same_run(folder: str | Path, stored_config: dict | None, config: ConfigContainer) -> None:
    """Refuse to resume `folder` when its run had another model, sequence length or data."""
    if not isinstance(stored_config, dict):
        return  # written by `convert import` or an older version: weights only, nothing to compare
    diffs = run_differences(stored_config, json.loads(json.dumps(config.to_dict())))  # tuples as lists, as stored
    if diffs:
        raise CheckpointMismatchError(
            f"{folder} was saved by a run with another model or data, so this run cannot resume it: "
            + "; ".join(diffs) + ". Keep the stored settings to resume, or start a new run elsewhere (another "
            "checkpoint.save) from these weights with checkpoint.pretrained_checkpoint=" + str(Path(folder).parent))


def changed_sample_request(stored_config: dict | None, config: ConfigContainer) -> str | None:
    """How the run's requested training samples (train_iters x global_batch_size, see
    TrainingConfig.num_samples) changed since the checkpoint, or None. Megatron-style datasets are
    built for that many samples, so a longer run over small data has more epochs and another order
    after the resumed position; Megatron rebuilds its indices the same way when train_iters grows."""
    stored = (stored_config or {}).get("train") if isinstance(stored_config, dict) else None
    if not isinstance(stored, dict) or not all(isinstance(stored.get(k), int) for k in ("train_iters",
                                                                                        "global_batch_size")):
        return None
    before, now = stored["train_iters"] * stored["global_batch_size"], config.train.num_samples()[0]
    if before == now:
        return None
    return (f"train.train_iters x train.global_batch_size = {now} training samples, {before} in the checkpoint's "
            f"run")


def check_same_adapters(folder: str | Path, stored: dict | None, ours: dict | None) -> None:
    """An adapter-only checkpoint resumes only a PEFT run with the same adapters on the same base
    (`stored` / `ours`: run.json's "peft" entry and this run's: scheme, dim, modules, base_model)."""
    if stored is None and ours is None:
        return
    if stored is None:
        raise CheckpointMismatchError(f"{folder} is a full-model checkpoint, but this run trains {ours['scheme']} "
                                      f"adapters; use another checkpoint.save / checkpoint.load folder, or drop "
                                      f"--peft_scheme")
    if ours is None:
        raise CheckpointMismatchError(f"{folder} holds only {stored['scheme']} adapters; resume it with --peft_scheme "
                                      f"{stored['scheme']} on its base model {stored['base_model']['source']}")
    theirs, mine = stored["base_model"], ours["base_model"]
    if theirs["fingerprint"] != mine["fingerprint"]:
        raise CheckpointMismatchError(
            f"{folder} holds adapters trained on base model {theirs['source']} (fingerprint "
            f"{theirs['fingerprint']}), but this run loads base model {mine['source']} (fingerprint "
            f"{mine['fingerprint']}); adapters only fit the weights they were trained on: pass that "
            f"--pretrained-checkpoint, or save to a fresh checkpoint.save folder")
    for key in ("scheme", "dim", "modules"):
        if stored[key] != ours[key]:
            raise CheckpointMismatchError(f"{folder} holds adapters with peft {key}={stored[key]!r}, but this run "
                                          f"asks for {ours[key]!r}; keep the peft settings of the run you resume")


def explicit_load(checkpoint) -> Path | None:
    """The iteration folder that checkpoint.load names when the user gave it apart from checkpoint.save
    (None otherwise: a run resumes from checkpoint.save when that holds a run, and starts fresh in an
    empty one). Such a folder must be a minibridge checkpoint: a missing folder (a typo) or another kind
    of folder stops the run before any work, instead of training from scratch as if nothing was asked.
    Megatron-LM warns and starts fresh here; refusing is on purpose."""
    load, save = checkpoint.load, checkpoint.save
    if not load or (save and os.path.abspath(load) == os.path.abspath(save)):
        return None
    folder = Path(load)
    if folder.is_dir() and (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        raise ConfigError(f"checkpoint.load={load} is a Hugging Face model folder, not a minibridge checkpoint: "
                          f"start from its weights with --pretrained-checkpoint {load} "
                          f"(checkpoint.pretrained_checkpoint)")
    try:
        return resolve_checkpoint(folder)
    except FileNotFoundError as err:
        raise ConfigError(f"checkpoint.load={load}: {err}; leave checkpoint.load unset to start a fresh run "
                          f"(or to resume from checkpoint.save)") from None


def resume_point(checkpoint, save_dir: Path | None) -> Path | None:
    """Where a run resumes: the checkpoint that checkpoint.load names apart from checkpoint.save (checked:
    `explicit_load`), else the newest of checkpoint.load / checkpoint.save, else None (a fresh run). Rank 0
    decides, before the model is built; it also removes the temporaries of saves that were killed midway
    from save_dir, whose lock this run holds."""
    explicit = explicit_load(checkpoint)
    if save_dir is not None and save_dir.is_dir():
        clean_stale(save_dir)
    if explicit is not None:
        return explicit
    for where in (checkpoint.load, checkpoint.save):
        if where and Path(where).is_dir():
            iteration = latest_iteration(where)
            if iteration is not None:
                return iteration_dir(where, iteration)
    return None
