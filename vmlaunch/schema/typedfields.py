"""Strict conversion between typed dataclasses and JSON-like dicts, and their JSON Schema.

One place knows how a type hint maps to JSON, so the message schema, the VM spec and
the published JSON Schema cannot disagree. Every problem is collected, not just the
first, and each names its field path.
"""

from __future__ import annotations

import dataclasses
import functools
import reprlib
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from vmlaunch.errors import ExitCode, SchemaError


class FieldErrors(SchemaError, ValueError, exit_code=ExitCode.BAD_INPUT):
    """One or more fields are missing, unknown or of the wrong type."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def from_dict(cls: type, data: Any, *, where: str, allow_extra: bool = False) -> Any:
    """Build dataclass `cls` from `data`, raising FieldErrors that list every problem.

    `allow_extra` drops unknown keys instead of refusing them (forward compatibility).
    """
    value, problems = _convert(cls, data, where, allow_extra)
    if problems:
        raise FieldErrors(problems)
    return value


def _convert(tp: Any, value: Any, path: str, allow_extra: bool) -> tuple[Any, list[str]]:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, allow_extra)
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, path, allow_extra)
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed:
            return value, []
        return None, [f"{path}: must be one of {', '.join(map(repr, allowed))}, got "
                      f"{_short(value)}"]
    if origin is list:
        if not isinstance(value, list):
            return None, [f"{path}: expected a list, got {_kind(value)}"]
        return _collect([_convert(get_args(tp)[0], v, f"{path}[{i}]", allow_extra)
                         for i, v in enumerate(value)], list)
    if origin is dict:
        if not isinstance(value, dict):
            return None, [f"{path}: expected a mapping, got {_kind(value)}"]
        key_problems = [f"{path}: key {k!r} must be a string"
                        for k in value if not isinstance(k, str)]
        items = [(k, _convert(get_args(tp)[1], v, f"{path}.{k}", allow_extra))
                 for k, v in value.items()]
        converted = {k: v for k, (v, _) in items}
        return converted, key_problems + [p for _, (_, ps) in items for p in ps]
    return _convert_scalar(tp, value, path)


def _convert_dataclass(cls: type, value: Any, path: str, allow_extra: bool) -> tuple[Any, list]:
    if not isinstance(value, dict):
        return None, [f"{path}: expected an object, got {_kind(value)}"]
    hints, fields = _fields(cls)
    problems = []
    if not allow_extra:
        problems += [f"{path}.{k}: unknown field" for k in value if k not in fields]
    kwargs = {}
    for name, f in fields.items():
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{path}.{name}: missing required field")
            continue
        kwargs[name], field_problems = _convert(hints[name], value[name], f"{path}.{name}",
                                                allow_extra)
        problems += field_problems
    if problems:
        return None, problems
    try:
        return cls(**kwargs), []
    except ValueError as exc:
        return None, [f"{path}: {exc}"]


@functools.cache
def _fields(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """A dataclass's resolved hints and fields: resolving the (string) annotations costs
    more than converting a message, and every message of a kind has the same."""
    return get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _convert_union(tp: Any, value: Any, path: str, allow_extra: bool) -> tuple[Any, list]:
    options = get_args(tp)
    if value is None:
        return (None, []) if type(None) in options else (None, [f"{path}: must not be null"])
    (inner,) = [o for o in options if o is not type(None)]
    return _convert(inner, value, path, allow_extra)


# JSON has no integer limit; every consumer we know of (and Azure) stops at 64 bits.
INT_LIMIT = 2**63


def _convert_scalar(tp: Any, value: Any, path: str) -> tuple[Any, list[str]]:
    if tp is Any:
        return value, []
    if tp in (int, float) and isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
        return None, [f"{path}: integer out of range (64 bits)"]
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), []
    if tp is int and isinstance(value, bool):
        return None, [f"{path}: expected an integer, got a boolean"]
    if isinstance(value, tp):
        return value, []
    return None, [f"{path}: expected {_JSON_NAMES.get(tp, tp.__name__)}, got {_kind(value)}"]


def _collect(results: list[tuple[Any, list[str]]], kind: type) -> tuple[Any, list[str]]:
    return kind(v for v, _ in results), [p for _, ps in results for p in ps]


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlevel = 2


def _short(value: Any) -> str:
    """A bounded repr of untrusted input (reprlib limits length and depth)."""
    return _SHORT.repr(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for tp, name in ((bool, "a boolean"), (str, "a string"), (int, "an integer"),
                     (float, "a number"), (list, "a list"), (dict, "an object")):
        if isinstance(value, tp):
            return name
    return type(value).__name__


def to_dict(obj: Any) -> Any:
    """Plain JSON-able data from a dataclass (None fields kept: the schema is explicit)."""
    return dataclasses.asdict(obj)


_SCHEMA_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema(tp: Any) -> dict[str, Any]:
    """JSON Schema (draft 2020-12 vocabulary) for a type hint or dataclass."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        hints, fields = _fields(tp)
        return {
            "type": "object",
            "properties": {name: json_schema(hints[name]) for name in fields},
            "required": [name for name, f in fields.items() if f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING],
            "additionalProperties": False,
        }
    if origin in (Union, types.UnionType):
        (inner,) = [o for o in get_args(tp) if o is not type(None)]
        return {"anyOf": [json_schema(inner), {"type": "null"}]}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin is list:
        return {"type": "array", "items": json_schema(get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema(get_args(tp)[1])}
    if tp is Any:
        return {}
    return {"type": _SCHEMA_TYPES[tp]}
