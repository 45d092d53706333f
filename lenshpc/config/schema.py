"""Config machinery: typed, frozen dataclasses built from YAML data and validated once.

Every section is a frozen dataclass whose fields carry their documentation, unit and
allowed values in ``field(metadata=...)`` (built with :func:`param`). :func:`build`
refuses unknown keys, wrong types and out-of-range values with a :class:`UserError`
naming the key path, the value and what is allowed. ``docs/config.md`` is generated
from the same metadata, so it cannot drift.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any, Callable, Literal, Mapping

import yaml


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


# --------------------------------------------------------------------------- fields


def param(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    unit: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    check: Callable[[Any], str | None] | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A documented config field. ``ge/gt/le/lt`` bound numbers (and every element of a
    tuple of numbers); ``check(value)`` returns an error text or None."""
    meta = {"doc": doc, "unit": unit, "ge": ge, "gt": gt, "le": le, "lt": lt, "check": check}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    value = to_plain(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " / ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if tp is float:
        return "number"
    if tp is int:
        return "integer"
    if tp is bool:
        return "true/false"
    if tp is str:
        return "string"
    return getattr(tp, "__name__", str(tp))


def _bounds(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            parts.append(f"{sym} {meta[key]:g}")
    return " and ".join(parts)


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Convert a YAML value to the annotated type, or raise UserError naming ``path``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise UserError(
                f"config {path}: {_fmt(value)} is not allowed; "
                f"expected one of {', '.join(repr(a) for a in allowed)}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if len(errors) == 1 else
                        f"config {path}: {_fmt(value)} is not a {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config {path}: {_fmt(value)} is not a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise UserError(f"config {path}: {_fmt(value)} must have {len(args)} entries")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        if hasattr(tp, "from_yaml"):
            return tp.from_yaml(value, path)
        return build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config {path}: {_fmt(value)} is not true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"config {path}: {_fmt(value)} is not an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config {path}: {_fmt(value)} is not a number")
        if not math.isfinite(value):
            raise UserError(f"config {path}: {_fmt(value)} is not a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config {path}: {_fmt(value)} is not a string")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug, not user input


def _check_bounds(meta: Mapping[str, Any], value: Any, path: str) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        ok = ((meta.get("ge") is None or v >= meta["ge"])
              and (meta.get("gt") is None or v > meta["gt"])
              and (meta.get("le") is None or v <= meta["le"])
              and (meta.get("lt") is None or v < meta["lt"]))
        if not ok:
            raise UserError(f"config {path}: {_fmt(value)} is out of range; allowed: {_bounds(meta)}")
    if meta.get("check") is not None and value is not None:
        problem = meta["check"](value)
        if problem:
            raise UserError(f"config {path}: {_fmt(value)} {problem}")


def build(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a YAML mapping, validating every field.

    Missing keys take their defaults; unknown keys are refused. A section may define
    ``validate(self, path)`` for checks across fields (raise UserError)."""
    if data is None:
        data = {}
    where = path or "(top level)"
    if not isinstance(data, Mapping):
        raise UserError(f"config {where}: {_fmt(data)} is not a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else unknown[0]
        raise UserError(f"config {key}: unknown key; allowed keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            value = _convert(hints[name], data[name], sub)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise UserError(f"config {sub}: required key is missing")
        _check_bounds(f.metadata, value, sub)
        kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path)
    return obj


def to_plain(obj: Any) -> Any:
    """A config object as plain YAML-able data (the inverse of :func:`build`)."""
    if hasattr(obj, "to_yaml"):
        return obj.to_yaml()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    return obj
