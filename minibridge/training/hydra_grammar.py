"""Hydra's override grammar and `--config-file` YAML on top of the typed `key=value` overrides (overrides.py).

    key=value     set a field (it must exist: every field of the configuration does, so unknown keys fail)
    +key=value    Hydra's "add": the same as key=value here, since the typed configuration has no free keys
    ++key=value   Hydra's "add or override": the same
    ~key          reset the field to its dataclass default (`~peft`: no adapters, i.e. peft=none)
    ~key=value    the same, only when the recipe's value is `value` (else an error, as Hydra)
    ${a.b}        the value of key a.b once every override is applied (OmegaConf interpolation: a string
                  may hold several, `${checkpoint.save}/logs`; a value that is one `${a.b}` keeps its type);
                  ${oc.env:NAME} / ${oc.env:NAME,default} read an environment variable; `\\${` is a literal `${`

`resolve_items(base, items)` turns such items into plain `key=value` strings, which `apply_overrides`
(or `recipes.build_config`) then applies all at once. A YAML file (`yaml_items`) becomes the same items,
nested sections flattened into dotted keys; values equal to the recipe's are left out, so the
`run_config.yaml` of a checkpoint reads back into the same recipe.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from pathlib import Path

from ..models.config import ModelConfig
from .config import SECTIONS, ConfigContainer, ConfigError, PeftConfig
from .overrides import apply_overrides, parse_value, resolve_key, valid_keys

_INTERPOLATION = re.compile(r"(?<!\\)\$\{([^${}]*)\}")


def value_text(value) -> str:
    """A typed value as override text that parse_value reads back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    if isinstance(value, PeftConfig):
        return value.scheme
    if dataclasses.is_dataclass(value):
        raise ConfigError(f"{type(value).__name__} is a group of settings, not one value")
    return str(value)


def _split(item: str) -> tuple[str, str, str | None]:
    """(op, key, raw value or None) of one override: op is '=', '~' (delete) and '+'/'++' count as '='."""
    text = item.strip()
    if text.startswith("~"):
        key, sep, raw = text[1:].partition("=")
        return "~", key.strip(), raw if sep else None
    key, sep, raw = text.lstrip("+").partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected key=value, +key=value, ++key=value or ~key "
                          f"(e.g. train.train_iters=1000)")
    return "=", key.strip(), raw


def current_value(container: ConfigContainer, key: str):
    """The value `key` (any accepted spelling) has in `container`."""
    path, _ = resolve_key(key)
    value = container
    for part in path:
        value = getattr(value, part) if value is not None else None
    return value


def default_value(container: ConfigContainer, key: str):
    """What `~key` resets `key` to: its dataclass default; peft fields take the current scheme's defaults."""
    path, _ = resolve_key(key)
    if path == ("peft",):
        return "none"
    if path == ("mixed_precision",):
        return ConfigContainer.__dataclass_fields__["mixed_precision"].default
    if path[0] == "peft" and container.peft is not None:
        return getattr(PeftConfig.default(container.peft.scheme), path[1])
    owner = ModelConfig if path[:2] == ("model", "config") else SECTIONS[path[0]]
    name = path[2] if owner is ModelConfig else path[1]
    if len(path) == 4 or owner is ModelConfig and path[2] in ("rope", "rope_local"):
        raise ConfigError(f"~{key}: the RoPE settings have no default to reset to; set {key}=VALUE instead")
    field = owner.__dataclass_fields__.get(name)
    if field is None or (field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING):
        raise ConfigError(f"~{key}: {owner.__name__}.{name} has no default to reset to; set {key}=VALUE instead")
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def _plain(base: ConfigContainer, items: list[str]) -> list[tuple[str, str]]:
    """[(key, raw)] with deletions turned into their default values; raw may still hold ${...}."""
    out, errors = [], []
    for item in items:
        try:
            op, key, raw = _split(item)
            if op == "~":
                resolve_key(key)
                if raw is not None:
                    _, hint = resolve_key(key)
                    wanted, have = parse_value(key, raw, hint), current_value(base, key)
                    if isinstance(have, PeftConfig):
                        have = have.scheme
                    if wanted != have:
                        raise ConfigError(f"~{key}={raw}: the value of {key} is {value_text(have)}, not {raw}; "
                                          f"nothing was deleted")
                raw = value_text(default_value(base, key))
            out.append((key, raw))
        except ConfigError as err:
            errors.append(str(err))
    if errors:
        raise ConfigError("\n".join(errors))
    return out


def _env(spec: str, where: str) -> str:
    name, _, default = spec.partition(",")
    value = os.environ.get(name.strip())
    if value is None:
        if not _:
            raise ConfigError(f"{where}: environment variable {name.strip()!r} is not set (give a default: "
                              f"${{oc.env:{name.strip()},VALUE}})")
        return default.strip()
    return value


def resolve_items(base: ConfigContainer, items: list[str]) -> list[str]:
    """Plain `key=value` overrides from Hydra-grammar `items`, interpolations resolved against `base`
    with every plain override applied (the last override of a key wins, as it does when applied)."""
    pairs = _plain(base, list(items))
    keys = valid_keys()
    canonical = {}
    for index, (key, _) in enumerate(pairs):
        try:
            canonical[resolve_key(key, keys)[0]] = index  # the override that decides each field
        except ConfigError:
            pass  # reported with the others by apply_overrides below
    pending = {i for i, (_, raw) in enumerate(pairs) if _INTERPOLATION.search(raw)}
    applied = copy.deepcopy(base)
    apply_overrides(applied, [f"{k}={raw}" for i, (k, raw) in enumerate(pairs) if i not in pending])
    resolved: dict[int, str] = {}

    def lookup(ref: str, where: str, chain: tuple[int, ...]) -> str:
        if ref.startswith("oc.env:"):
            return _env(ref[len("oc.env:"):], where)
        try:
            path = resolve_key(ref, keys)[0]
        except ConfigError as err:
            raise ConfigError(f"{where}: ${{{ref}}} does not name a setting ({err})") from None
        index = canonical.get(path)
        if index in pending:
            return resolve(index, chain)
        try:
            return value_text(current_value(applied, ref))
        except ConfigError as err:
            raise ConfigError(f"{where}: ${{{ref}}}: {err}") from None

    def resolve(index: int, chain: tuple[int, ...] = ()) -> str:
        if index in resolved:
            return resolved[index]
        key, raw = pairs[index]
        where = f"{key}={raw}"
        if index in chain:
            cycle = " -> ".join(pairs[i][0] for i in (*chain, index))
            raise ConfigError(f"{where}: the interpolations form a cycle ({cycle})")
        whole = _INTERPOLATION.fullmatch(raw.strip())
        if whole:
            text = lookup(whole.group(1).strip(), where, (*chain, index))
        else:
            text = _INTERPOLATION.sub(lambda m: lookup(m.group(1).strip(), where, (*chain, index)), raw)
        resolved[index] = text.replace("\\${", "${")
        return resolved[index]

    out = []
    for index, (key, raw) in enumerate(pairs):
        out.append(f"{key}={resolve(index) if index in pending else raw.replace(chr(92) + '${', '${')}")
    return out


# ------------------------------------------------------------------------------------------ YAML


def read_yaml(path: str | os.PathLike) -> dict:
    """The mapping of a YAML file, or a ConfigError naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file (--config-file)", str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, train:, ...), found {type(data).__name__}")
    return data


def yaml_items(base: ConfigContainer, data: dict, source: str = "config file") -> list[str]:
    """`key=value` items for the YAML mapping `data`; values equal to `base`'s are left out."""
    ours = json.loads(json.dumps(base.to_dict()))
    items: list[str] = []

    def walk(node, prefix: str, have):
        for name, value in node.items():
            key = f"{prefix}{name}"
            if not isinstance(name, str):
                raise ConfigError(f"{source}: key {name!r} under {prefix or 'the top level'}: expected a name")
            current = have.get(name) if isinstance(have, dict) else None
            if isinstance(value, dict):
                if key == "peft" and current is None:  # adapters on a recipe without any: choose the scheme first
                    items.append(f"peft={value.get('scheme', 'lora')}")
                    current = {}
                walk(value, key + ".", current if isinstance(current, dict) else {})
            elif value != current or not isinstance(have, dict) or name not in have:
                if value is None and isinstance(current, dict):
                    if key != "peft":
                        raise ConfigError(f"{source}: {key}: null cannot replace the group {key}")
                    items.append("peft=none")
                    continue
                items.append(f"{key}={value_text(value)}")

    walk(data, "", ours)
    return items
