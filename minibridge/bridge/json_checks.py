"""Reading the JSON files of a model folder: parsed strictly, every value type-checked.

Every error names the file, the key path and what was expected, in one line, e.g.
`.../config.json: text_config.num_hidden_layers=2.5: expected a positive integer`.
`parse_json` refuses what is ambiguous in any JSON file (duplicate keys, lone surrogates, absurd
nesting or digit counts); with `strict=True` it also mirrors serde_json, the parser of the safetensors
library, on numbers (no NaN/Infinity, no out-of-range floats; `-0` and integers beyond 64 bits are
floats there, so they are floats here), so a header we accept is one the reference accepts too.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import ConfigError, CorruptCheckpointError, UnsupportedModelError

MAX_DEPTH = 100  # serde_json stops at 128 levels; real config.json files have fewer than 5
MAX_INT_DIGITS = 40  # Python refuses ints over 4300 digits with a bare ValueError
MAX_INT = 2**63 - 1  # sizes become torch int64 dimensions
REQUIRED = object()
_ABSENT = object()


def show(value: Any, limit: int = 60) -> str:
    """A JSON value as it reads in the file, shortened to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # not from JSON, or an int of over 4300 digits
        text = f"<a {kind(value)}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # printable even with lone surrogates
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind(value: Any) -> str:
    """The JSON name of a Python value's type: object, array, string, number, boolean, null."""
    for types, name in ((bool, "boolean"), (dict, "object"), ((list, tuple), "array"), (str, "string"),
                        ((int, float), "number"), (type(None), "null")):
        if isinstance(value, types):
            return name
    return type(value).__name__


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float (not a boolean) that is finite as a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def parse_json(data: bytes | str, source: str, error: type[Exception] = CorruptCheckpointError,
               strict: bool = False) -> Any:
    """The JSON value in `data` (from the file `source`); `error` names any problem."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(f"{source}: not valid UTF-8 (byte {err.start}: {err.reason}); expected JSON text") from None

    def unique(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise error(f"{source}: duplicate key {show(key)}; expected each key once")
            out[key] = value
        return out

    def number_int(text: str):
        if len(text) > MAX_INT_DIGITS:
            raise error(f"{source}: number {text[:20]}... has {len(text)} digits; expected at most {MAX_INT_DIGITS}")
        value = int(text)
        if strict and ((text.startswith("-") and value == 0) or not -(2**63) <= value < 2**64):
            return float(text)  # what serde_json makes of it (then refused where an integer is due)
        return value

    def number_float(text: str):
        value = float(text)
        if strict and not math.isfinite(value):
            raise error(f"{source}: number {text[:20]} is out of range; expected a finite number")
        return value

    def constant(name: str):
        raise error(f"{source}: {name} is not a JSON value; expected a finite number")

    options = dict(parse_constant=constant, parse_float=number_float) if strict else {}
    try:
        value = json.loads(data, object_pairs_hook=unique, parse_int=number_int, **options)
    except json.JSONDecodeError as err:
        raise error(f"{source}: not valid JSON ({err})") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply; expected at most {MAX_DEPTH} levels") from None
    _check_tree(value, source, error)
    return value


def _check_tree(value: Any, source: str, error: type[Exception]) -> None:
    """Nesting depth at most MAX_DEPTH, and every string encodable as UTF-8 (no lone surrogates)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                raise error(f"{source}: JSON nested {depth} levels deep; expected at most {MAX_DEPTH}")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if isinstance(key, str):
                    _utf8(key, source, error)
                stack.append((child, depth + 1))
        elif isinstance(node, str):
            _utf8(node, source, error)


def _utf8(text: str, source: str, error: type[Exception]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{source}: string {show(text)} holds a lone surrogate escape; expected valid Unicode") from None


class Fields:
    """Typed reads from one JSON object of the file `source`; `prefix` is its key path ("text_config.").

    Each getter takes a `default` (REQUIRED: the key must be there) and `null`: what an explicit null
    means, "default" (the same as absent), "keep" (None is a valid value) or "error".
    """

    def __init__(self, obj: Any, source: str, prefix: str = "", error: type[Exception] = ConfigError):
        self.source, self.prefix, self.error = source, prefix, error
        if not isinstance(obj, dict):
            where = prefix.rstrip(".") or "the file"
            raise error(f"{source}: {where} is a JSON {kind(obj)} {show(obj)}; expected a JSON object")
        self.obj = obj

    def path(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, value: Any, expected: str, error: type[Exception] | None = None):
        raise (error or self.error)(f"{self.source}: {self.path(key)}={show(value)}: expected {expected}")

    def raw(self, key: str, default: Any = REQUIRED, null: str = "error", what: str = "") -> Any:
        """The value as stored, or _ABSENT when absent (or null with null="default"); a REQUIRED key
        that is absent is an error (`what` says what it means)."""
        value = self.obj.get(key, _ABSENT)
        if value is None and null == "default":
            value = _ABSENT
        if value is _ABSENT:
            if default is REQUIRED:
                about = f" ({what})" if what else ""
                raise self.error(f"{self.source}: missing required key {self.path(key)!r}{about}")
            return _ABSENT
        return value

    def _read(self, key, default, null, what, check, expected: str):
        value = self.raw(key, default, null, what)
        if value is _ABSENT:
            return default
        if value is None and null == "keep":
            return None
        if not check(value):
            self.fail(key, value, expected + (" or null" if null == "keep" else ""))
        return value

    def int(self, key: str, default: Any = REQUIRED, minimum: int = 1, null: str = "error", what: str = "",
            maximum: int = MAX_INT):
        """An integer in [minimum, maximum] (not a boolean, not 2.0)."""
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        expected += f" up to {maximum}" if maximum != MAX_INT else ""
        return self._read(key, default, null, what, lambda v: is_int(v) and minimum <= v <= maximum, expected)

    def number(self, key: str, default: Any = REQUIRED, positive: bool = True, null: str = "error"):
        """A finite number (an int or a float, not a boolean), > 0 when `positive`, else >= 0."""
        return self._read(key, default, null, "", lambda v: is_number(v) and (v > 0 if positive else v >= 0),
                          f"a finite number {'>' if positive else '>='} 0")

    def bool(self, key: str, default: Any = REQUIRED, null: str = "error"):
        return self._read(key, default, null, "", lambda v: isinstance(v, bool), "true or false")

    def string(self, key: str, default: Any = REQUIRED, choices: tuple[str, ...] | None = None,
               null: str = "error"):
        """A string; one of `choices` when given (another string is an unsupported feature)."""
        value = self._read(key, default, null, "", lambda v: isinstance(v, str),
                           f"one of {list(choices)}" if choices else "a string")
        if choices is not None and isinstance(value, str) and value not in choices:
            self.fail(key, value, f"one of {list(choices)} (the others are not supported)", UnsupportedModelError)
        return value

    def strings(self, key: str, default: Any = REQUIRED, choices: tuple[str, ...] | None = None,
                null: str = "error", allow_str: bool = False):
        """A list of strings (each one of `choices` when given); a bare string only if `allow_str`."""
        value = self.raw(key, default, null)
        if value is _ABSENT:
            return default
        if value is None and null == "keep" or isinstance(value, str) and allow_str:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            hint = f" such as [{show(value)}]" if isinstance(value, str) else ""
            self.fail(key, value, "a list of strings" + (" or a string" if allow_str else "") + hint)
        for item in value if choices is not None else ():
            if item not in choices:
                self.fail(key, value, f"entries among {list(choices)} ({show(item)} is not supported)",
                          UnsupportedModelError)
        return value

    def object(self, key: str, null: str = "default") -> "Fields | None":
        """The nested object as Fields, or None when absent (or null)."""
        value = self.raw(key, None, null)
        if value is _ABSENT or value is None and null == "keep":
            return None
        if not isinstance(value, dict):
            self.fail(key, value, "a JSON object" + (" or null" if null != "error" else ""))
        return Fields(value, self.source, f"{self.path(key)}.", self.error)
