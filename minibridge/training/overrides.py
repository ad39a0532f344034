"""Dotted `key=value` overrides of a ConfigContainer (the command line itself: command_line.py).

    apply_overrides(cfg, ["train.global_batch_size=64", "optimizer.lr=3e-4", "model.num_layers=4",
                          "dataset.data_paths=[a.jsonl,b.jsonl]", "mixed_precision=bf16_mixed", "peft=dora"])

Values are parsed by the field's type (parse_value). `model.<field>` goes to the layout settings when
ModelSettings has that field, else to the architecture (ModelConfig, also under Megatron's names such as
num_attention_heads). Every override is parsed before any is applied; errors are one ConfigError naming each bad
key, its value, the expected type and the closest valid keys.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import types
import typing
from typing import Literal, Union

from ..models.config import FULL, SLIDING, ModelConfig, RopeConfig, layer_pattern, pattern_layer_types
from .config import SECTIONS, ConfigContainer, ConfigError, PeftConfig
from .validation import PRECISIONS, choice_message

# Megatron / HF spellings of architecture fields -> ModelConfig field (or "rope.<field>").
MODEL_ALIASES = {
    "num_attention_heads": "num_heads", "num_query_groups": "num_kv_heads", "num_key_value_heads": "num_kv_heads",
    "ffn_hidden_size": "intermediate_size", "kv_channels": "head_dim", "num_hidden_layers": "num_layers",
    "layernorm_epsilon": "rms_norm_eps", "share_embeddings_and_output_weights": "tie_word_embeddings",
    "rotary_base": "rope.theta", "rope_theta": "rope.theta", "rope_local_base_freq": "rope_local.theta",
}
# Megatron Bridge names of other fields.
SECTION_ALIASES = {"dataset.sequence_length": "dataset.seq_length", "checkpoint.most_recent_k": "checkpoint.keep_last"}
TOP_LEVEL = {"mixed_precision": Literal[PRECISIONS], "peft": Literal["lora", "dora", "none"]}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


# ---------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------


def _model_targets() -> dict[str, tuple[tuple[str, ...], object]]:
    """`model.X` -> (path under the container, type) for architecture fields, rope sub-fields and aliases."""
    out = {}
    arch = typing.get_type_hints(ModelConfig)
    rope = typing.get_type_hints(RopeConfig)
    for name, hint in arch.items():
        if name in ("rope", "rope_local"):
            for sub, sub_hint in rope.items():
                out[f"{name}.{sub}"] = (("model", "config", name, sub), sub_hint)
        else:
            out[name] = (("model", "config", name), hint)
    out["sliding_window_pattern"] = (("model", "config", "sliding_window_pattern"), int)
    for alias, target in MODEL_ALIASES.items():
        out[alias] = out[target]
    return out


def valid_keys() -> dict[str, tuple[tuple[str, ...], object]]:
    """Every accepted dotted key -> (path, type)."""
    keys = {name: ((name,), hint) for name, hint in TOP_LEVEL.items()}
    for section, cls in SECTIONS.items():
        for name, hint in typing.get_type_hints(cls).items():
            if not (section == "model" and name == "config"):
                keys[f"{section}.{name}"] = ((section, name), hint)
    for name, target in _model_targets().items():
        keys.setdefault(f"model.{name}", target)
        keys[f"model.config.{name}"] = target
    return keys


# What Hugging Face's TrainingArguments call some settings: suggested by name, since spelling cannot find them
FAMILIAR_NAMES = {"learning_rate": "optimizer.lr", "max_steps": "train.train_iters",
                  "warmup_steps": "scheduler.lr_warmup_iters", "max_grad_norm": "optimizer.clip_grad",
                  "per_device_train_batch_size": "train.micro_batch_size", "save_steps": "checkpoint.save_interval"}


def resolve_key(key: str, keys: dict | None = None) -> tuple[tuple[str, ...], object]:
    keys = keys or valid_keys()
    key = SECTION_ALIASES.get(key, key)
    if key in keys:
        return keys[key]
    fields_of = sorted(k for k in keys if k.startswith(key + "."))[:6]
    if fields_of:
        raise ConfigError(f"{key!r} is a group, not a value; set its fields, e.g. {', '.join(fields_of)}")
    familiar = FAMILIAR_NAMES.get(key.rsplit(".", 1)[-1])
    section = key.split(".")[0]
    fixed = (difflib.get_close_matches(section, list(SECTIONS), n=1, cutoff=0.5) or [""])[0]  # itself when valid
    fields = [k for k in keys if fixed and k.startswith(fixed + ".")]  # not close: then that section's fields
    close = ([familiar] if familiar else difflib.get_close_matches(key, list(keys), n=3, cutoff=0.6)
             or difflib.get_close_matches(fixed + key[len(section):], fields, n=3, cutoff=0.3) or fields[:3])
    sections = ", ".join(dict.fromkeys([*SECTIONS, *TOP_LEVEL]))
    hint = f"closest valid keys: {', '.join(close)}" if close else f"valid sections: {sections}"
    raise ConfigError(f"unknown override key {key!r}; {hint}")


# ---------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------


def describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (list, tuple):
        return f"a list of {describe(args[0])} (JSON [..] or comma-separated)"
    return {bool: "a bool (true/false/1/0)", int: "an integer", float: "a number (e.g. 3e-4)",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _unquote(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def _split_list(raw: str) -> list[str]:
    raw = raw.strip()
    if raw.startswith("["):
        try:
            items = json.loads(raw)
            if isinstance(items, list):
                return [item if isinstance(item, str) else json.dumps(item) for item in items]
        except json.JSONDecodeError:
            pass
        if not raw.endswith("]"):
            raise ValueError("unclosed [")
        raw = raw[1:-1]
    return [_unquote(item) for item in raw.split(",") if item.strip()]


def parse_value(key: str, raw: str, hint):
    """`raw` (the text after `=`) as the type `hint`; ConfigError naming key, value and expected type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = ConfigError(f"{key}={raw!r}: expected {describe(hint)}")
    text = _unquote(raw)
    if origin in (Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        options = [a for a in args if a is not type(None)]
        for option in sorted(options, key=lambda a: a is str):  # str accepts anything: try it last
            try:
                return parse_value(key, raw, option)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        for choice in args:
            if text == str(choice) or text.lower() == str(choice).lower():
                return choice
        raise ConfigError(choice_message(key, text, args))
    if origin in (list, tuple):
        try:
            items = [parse_value(key, item, args[0]) for item in _split_list(raw)]
        except ValueError:
            raise bad from None
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise bad
    if hint in (int, float):
        try:
            number = float(text)
        except ValueError:
            raise bad from None
        if hint is float:
            return number
        if not number.is_integer():  # 1e5 and 2.0 are fine for an int, as long as they are whole numbers
            raise bad
        return int(text) if text.lstrip("+-").isdigit() else int(number)  # int(text): exact past 2**53
    if hint is str:
        return text
    raise ConfigError(f"{key}: fields of type {describe(hint)} cannot be set from the command line")


# ---------------------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------------------


def parse_item(item: str, keys: dict | None = None) -> tuple[str, object]:
    """(key, typed value) of one `key=value` (Hydra's `+key=value` and `++key=value` mean the same here)."""
    key, sep, raw = item.partition("=")
    key = key.strip().lstrip("+")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value, +key=value, ++key=value or ~key "
                          f"(e.g. train.train_iters=1000)")
    return key, parse_value(key, raw, resolve_key(key, keys)[1])


def apply_values(container: ConfigContainer, changes: list) -> ConfigContainer:
    """Set dotted keys (any spelling) in place, all or nothing: typed (key, value) pairs, or `key=value` text
    parsed by the field's type (every bad item named in one ConfigError). The one function that changes a
    configuration, for recipes, command lines and files alike (Hydra's `~`, `${}`: hydra_grammar.configure)."""
    keys, parsed, errors = valid_keys(), [], []
    for change in changes:
        try:
            key, value = parse_item(change, keys) if isinstance(change, str) else change
            parsed.append((key, resolve_key(key, keys)[0], value))
        except ConfigError as err:
            errors.append(str(err))
    if errors:
        raise ConfigError("\n".join(errors))
    new = copy.deepcopy(container)
    # `peft=...` first, so `peft.dim=8 peft=dora` keeps the 8 whatever the order.
    parsed.sort(key=lambda p: p[1] != ("peft",))
    arch = {}  # ModelConfig fields, rope.theta and friends as {"rope": {"theta": ...}}
    for key, path, value in parsed:
        if path == ("peft",):
            new.peft = None if value == "none" else PeftConfig.default(value)
        elif path == ("mixed_precision",):
            new.mixed_precision = value
        elif path[:2] == ("model", "config") and len(path) == 4:
            arch.setdefault(path[2], {})[path[3]] = value
        elif path[:2] == ("model", "config"):
            arch[path[2]] = value
        else:
            section = getattr(new, path[0])
            if section is None:
                raise ConfigError(f"{key}: peft is None (full training); add peft=lora or --peft_scheme lora first")
            setattr(section, path[1], value)
    if arch:
        new.model.config = update_model_config(new.model.config, **arch)
    _follow(container, new, {path for _, path, _ in parsed})
    container.__dict__.update(new.__dict__)
    return container


apply_overrides = apply_values  # `key=value` items (the name of the seed documents' API)


def _follow(old: ConfigContainer, new: ConfigContainer, touched: set) -> None:
    """Settings that follow another one unless they are set themselves."""
    # model.seq_length and dataset.seq_length are one setting in two places.
    if ("model", "seq_length") in touched and ("dataset", "seq_length") not in touched:
        new.dataset.seq_length = new.model.seq_length
    elif ("dataset", "seq_length") in touched and ("model", "seq_length") not in touched:
        new.model.seq_length = new.dataset.seq_length
    # A run that resumes from where it saves (every recipe) keeps doing so when checkpoint.save moves.
    ck = old.checkpoint
    if ("checkpoint", "save") in touched and ("checkpoint", "load") not in touched and ck.load and ck.load == ck.save:
        new.checkpoint.load = new.checkpoint.save
    # Data files given to a preset of Hugging Face data (a fine-tuning recipe's SQuAD) are read instead of it.
    d = new.dataset
    chosen = {("dataset", "kind"), ("dataset", "preset")} & touched
    if ("dataset", "data_paths") in touched and not chosen and d.kind == "hf" and d.preset and d.data_paths:
        d.kind, d.preset = "sft", None


# ---------------------------------------------------------------------------------------------------
# Keeping the architecture consistent when an override changes it
# ---------------------------------------------------------------------------------------------------


def update_model_config(config: ModelConfig, **changes) -> ModelConfig:
    """`config` with `changes`, re-deriving what depends on them.

    `num_layers` alone re-derives `layer_types` from the pattern the old types followed (all global for
    Llama, every 6th global for Gemma 3); `sliding_window_pattern=p` (the HF Gemma key) sets them from p.
    Rope sub-fields come as partial dicts (`rope={"theta": 1e6}`). ModelConfig's own checks then run.
    """
    for key in ("rope", "rope_local"):
        if isinstance(changes.get(key), dict):
            base = getattr(config, key) or config.rope
            changes[key] = dataclasses.replace(base, **changes[key])
    layers = changes.get("num_layers", config.num_layers)
    pattern = changes.pop("sliding_window_pattern", None)
    if pattern is not None:
        if "layer_types" in changes:
            raise ConfigError("set model.sliding_window_pattern or model.layer_types, not both")
        changes["layer_types"] = pattern_layer_types(pattern, layers)
    elif "layer_types" not in changes and layers != config.num_layers:
        pattern = layer_pattern(config.layer_types)
        if pattern is None:
            raise ConfigError(f"model.num_layers={layers}: the current layer_types follow no sliding-window pattern, "
                              f"so they cannot be re-derived; set model.layer_types (a list of {FULL!r}/{SLIDING!r}) "
                              f"as well")
        changes["layer_types"] = pattern_layer_types(pattern, layers)
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model architecture override {changes}: {err}") from None
