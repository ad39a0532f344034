"""Hydra's override grammar (GRAMMAR, also the end of `python -m minibridge.train --help`) and `--config-file`
YAML on top of the typed `key=value` overrides (overrides.py).

`hydra_changes(base, items)` translates such items into the one ordered list of typed (key, value) changes
that `overrides.apply_values` applies (`configure` does both). A YAML file (`yaml_items`) becomes the same
items, nested sections flattened into dotted keys; values equal to the recipe's are left out, so the
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
from .overrides import apply_values, parse_item, parse_value, resolve_key, valid_keys

GRAMMAR = r"""overrides (Hydra's grammar; after the flags, whose keys they may set again):
  key=value     set a field (it must exist: every field of the configuration does, so unknown keys fail)
  +key=value    Hydra's "add": the same as key=value here, since the typed configuration has no free keys
  ++key=value   Hydra's "add or override": the same
  ~key          reset the field to its dataclass default (~peft: no adapters, i.e. peft=none)
  ~key=value    the same, only when the recipe's value is `value` (else an error, as Hydra)
  ${section.key} the value of that key once every override is applied (OmegaConf interpolation: a string may hold
                several, logger.log_dir=${checkpoint.save}/logs); ${oc.env:NAME} / ${oc.env:NAME,default} read
                an environment variable; \${ is a literal ${"""
_INTERPOLATION = re.compile(r"(?<!\\)\$\{([^${}]*)\}")


def value_text(value) -> str:
    """A typed value as override text that parse_value reads back to the same value."""
    if value is None or isinstance(value, (bool, list, tuple)):
        return json.dumps(value)  # null, true / false, [..]
    if isinstance(value, PeftConfig):
        return value.scheme
    if dataclasses.is_dataclass(value):
        raise ConfigError(f"{type(value).__name__} is a group of settings, not one value")
    return str(value)


def current_value(container: ConfigContainer, key: str):
    """The value `key` (any accepted spelling) has in `container`."""
    path, _ = resolve_key(key)
    value = container
    for part in path:
        value = getattr(value, part) if value is not None else None
    return value


def default_value(key: str, scheme: str | None):
    """What `~key` resets `key` to: its dataclass default; peft fields take the defaults of `scheme`."""
    path, _ = resolve_key(key)
    if path == ("peft",):
        return "none"
    if path[0] == "peft" and scheme not in (None, "none"):
        return getattr(PeftConfig.default(scheme), path[1])
    owner, name = ModelConfig if path[:2] == ("model", "config") else SECTIONS.get(path[0], ConfigContainer), path[-1]
    if len(path) == 4 or owner is ModelConfig and name in ("rope", "rope_local"):
        raise ConfigError(f"~{key}: the RoPE settings have no default to reset to; set {key}=VALUE instead")
    field = owner.__dataclass_fields__.get(name)
    if field is None or (field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING):
        raise ConfigError(f"~{key}: {owner.__name__}.{name} has no default to reset to; set {key}=VALUE instead")
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def _delete(text: str, done: list, base: ConfigContainer, keys: dict) -> tuple[str, object]:
    """(key, default) of `~key` or `~key=value`, given the changes `done` before it."""
    key, sep, raw = text[1:].partition("=")
    key = key.strip()

    def before(spelling: str):  # the value after the changes before this one
        path = resolve_key(spelling, keys)[0]
        have = [value for k, value in done if resolve_key(k, keys)[0] == path]
        value = have[-1] if have else current_value(base, spelling)
        return value.scheme if isinstance(value, PeftConfig) else value

    hint = resolve_key(key, keys)[1]
    if sep and parse_value(key, raw, hint) != before(key):
        raise ConfigError(f"~{key}={raw}: the value of {key} is {value_text(before(key))}, not {raw}; "
                          f"nothing was deleted")
    return key, default_value(key, before("peft"))


def hydra_changes(base: ConfigContainer, items) -> list[tuple[str, object]]:
    """The ordered typed (key, value) changes of `items` to `base`: Hydra-grammar strings (`key=value`,
    `+key=value`, `~key`, `${...}`) or (key, value) pairs, taken as they are. `apply_values` applies them."""
    keys, done, pending, errors = valid_keys(), {}, {}, []
    for index, item in enumerate(items):
        try:
            text = item.strip() if isinstance(item, str) else None
            if text is None:
                done[index] = item
            elif text.startswith("~"):
                done[index] = _delete(text, [done[i] for i in sorted(done)], base, keys)
            elif _INTERPOLATION.search(text.partition("=")[2]):
                key, _, raw = text.lstrip("+").partition("=")
                resolve_key(key.strip(), keys)  # an unknown key fails here, not inside an interpolation
                pending[index] = key.strip(), raw
            else:
                done[index] = parse_item(text.replace("\\${", "${"), keys)
        except ConfigError as err:
            errors.append(str(err))
    if errors:
        raise ConfigError("\n".join(errors))
    if pending:
        preview = apply_values(copy.deepcopy(base), [done[i] for i in sorted(done)])
        for index, text in _interpolate(preview, pending, {**done, **pending}, keys).items():
            done[index] = parse_item(text, keys)
    return [done[index] for index in range(len(items))]


def configure(base: ConfigContainer, items) -> ConfigContainer:
    """`base` with `items` (Hydra-grammar strings or typed pairs, in order) applied in place."""
    return apply_values(base, hydra_changes(base, items))


def _env(spec: str, where: str) -> str:
    name, comma, default = (part.strip() for part in spec.partition(","))
    value = os.environ.get(name, default if comma else None)
    if value is None:
        raise ConfigError(f"{where}: environment variable {name!r} is not set (give a default: "
                          f"${{oc.env:{name},VALUE}})")
    return value


def _interpolate(preview: ConfigContainer, pending: dict, entries: dict, keys: dict) -> dict[int, str]:
    """`key=text` of each pending item, its `${...}` replaced by final values: those of `preview` (the
    configuration with every other change applied), or of another pending item (the last of a key wins)."""
    canonical = {resolve_key(entries[i][0], keys)[0]: i for i in sorted(entries)}  # the change deciding each field

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
            return value_text(current_value(preview, ref))
        except ConfigError as err:
            raise ConfigError(f"{where}: ${{{ref}}}: {err}") from None

    def resolve(index: int, chain: tuple[int, ...] = ()) -> str:
        key, raw = pending[index]
        where = f"{key}={raw}"
        if index in chain:
            cycle = " -> ".join(pending[i][0] for i in (*chain, index))
            raise ConfigError(f"{where}: the interpolations form a cycle ({cycle})")
        text = _INTERPOLATION.sub(lambda m: lookup(m.group(1).strip(), where, (*chain, index)), raw)
        return text.replace("\\${", "${")

    return {index: f"{pending[index][0]}={resolve(index)}" for index in pending}


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
    if not isinstance(data, (dict, type(None))):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, train:, ...), found {type(data).__name__}")
    return data or {}


def yaml_items(base: ConfigContainer, data: dict, source: str = "config file") -> list[str]:
    """`key=value` items for the YAML mapping `data`; values equal to `base`'s are left out."""
    ours = json.loads(json.dumps(base.to_dict()))
    items: list[str] = []

    def walk(node, prefix: str, have):
        for name, value in node.items():
            key = f"{prefix}{name}"
            if not isinstance(name, str):
                raise ConfigError(f"{source}: key {name!r} under {prefix or 'the top level'}: expected a name")
            current = have.get(name)
            if isinstance(value, dict):
                if key == "peft" and current is None:  # adapters on a recipe without any: choose the scheme first
                    items.append(f"peft={value.get('scheme', 'lora')}")
                    current = {}
                walk(value, key + ".", current if isinstance(current, dict) else {})
            elif value is None and isinstance(current, dict):
                if key != "peft":
                    raise ConfigError(f"{source}: {key}: null cannot replace the group {key}")
                items.append("peft=none")
            elif value != current or name not in have:
                items.append(f"{key}={value_text(value)}")

    walk(data, "", ours)
    return items
