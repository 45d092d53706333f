"""Config machinery: typed, frozen dataclasses built from YAML data and validated once.

Every section is a frozen dataclass whose fields carry their documentation, unit and
allowed values in ``field(metadata=...)`` (built with :func:`param`). :func:`build`
refuses unknown keys, wrong types and out-of-range values with a :class:`UserError`
naming the key path, the value and what is allowed. ``docs/config.md`` is generated
from the same metadata, so it cannot drift.

Adding a key is adding a :func:`param` field. Two base classes are the only hooks:

- :class:`Section`, for a section that checks several of its fields together
  (``validate``) or fills keys implied by another (``complete_yaml``: the survey presets);
- :class:`Value`, for a value with a YAML form of its own rather than a mapping of keys
  (a distribution, a catalogue column mapping, a model entry): ``from_yaml``,
  ``to_yaml`` and ``doc_allowed``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any, Callable, Literal, Mapping

import yaml

from lenshpc.config.yaml_text import UserError, parse_yaml  # noqa: F401  (re-exported)


class Section:
    """Base of a config section with checks of its own (subclassed by frozen dataclasses)."""

    @classmethod
    def complete_yaml(cls, data: dict[str, Any], path: str) -> dict[str, Any]:
        """The section's YAML mapping with the keys other keys imply filled in."""
        return data

    def validate(self, path: str) -> None:
        """Checks across fields, after each field passed its own: raise UserError."""


class Value:
    """Base of a config value with its own YAML form (not a mapping of documented keys)."""

    @classmethod
    def from_yaml(cls, value: Any, path: str) -> Any:
        """The value from its YAML data; UserError naming ``path`` if it is not one."""
        raise NotImplementedError

    def to_yaml(self) -> Any:
        """The value as plain YAML data (``from_yaml`` of it gives it back)."""
        raise NotImplementedError

    @staticmethod
    def doc_allowed() -> str | None:
        """What the value may be, for docs/config.md (None: its type's name)."""
        return None


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


#: Longest rendering of a value in an error message; longer ones are cut (one line each).
_FMT_MAX = 60


def _fmt(value: Any) -> str:
    """A value as the user wrote it, cut to about ``_FMT_MAX`` characters."""
    if isinstance(value, str):
        if len(value) > _FMT_MAX:
            return f"{value[:_FMT_MAX - 20]!r}... ({len(value)} characters)"
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        try:
            return f"an integer of {len(str(abs(value)))} digits"
        except ValueError:  # beyond Python's limit of digits converted to text
            return "an integer of thousands of digits"
    value = to_plain(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    text = " ".join(text.strip().removesuffix("...").split())
    return text if len(text) <= _FMT_MAX else text[:_FMT_MAX - 5] + " ..."


def _num(v: float) -> str:
    """A bound as text: powers of two from 2^20 as ``2^N``, other integers in full."""
    if isinstance(v, int) and not isinstance(v, bool):
        return f"2^{v.bit_length() - 1}" if v >= 2**20 and v & (v - 1) == 0 else str(v)
    return f"{v:g}"


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
            parts.append(f"{sym} {_num(meta[key])}")
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
        return tuple(_convert(a, v, f"{path}[{i}]")
                     for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if isinstance(tp, type) and issubclass(tp, Value):
        return tp.from_yaml(value, path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    return _convert_scalar(tp, value, path)


def _convert_scalar(tp: Any, value: Any, path: str) -> Any:
    """Convert a YAML scalar to bool, int, float, str or Any (see :func:`_convert`)."""
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config {path}: {_fmt(value)} is not true or false")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            # 76396.0 or 1.0e+5 is accepted, but a float is exact only below 2^53
            if abs(value) >= 2**53:
                raise UserError(f"config {path}: {value:g} is not an integer below 2^53 "
                                f"(write large integers with digits only)")
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config {path}: {_fmt(value)} is not an integer{_text_hint(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config {path}: {_fmt(value)} is not a number{_text_hint(value)}")
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


def _text_hint(value: Any) -> str:
    """Why a number-like string is text: YAML 1.1 reads ``1e5`` (no point) as a string."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    return " (YAML reads it as text: write a number such as 1.0e+5)" if math.isfinite(number) else ""


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

    Missing keys take their defaults; unknown keys are refused. A :class:`Section`'s
    ``complete_yaml`` runs first and its ``validate`` last."""
    if data is None:
        data = {}
    where = path or "(top level)"
    if not isinstance(data, Mapping):
        raise UserError(f"config {where}: {_fmt(data)} is not a mapping")
    if issubclass(cls, Section):
        data = cls.complete_yaml(dict(data), path)
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
    if isinstance(obj, Section):
        obj.validate(path)
    return obj


def to_plain(obj: Any) -> Any:
    """A config object as plain YAML-able data (the inverse of :func:`build`)."""
    if isinstance(obj, Value):
        return obj.to_yaml()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- comparison


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """Where two plain config trees first differ, as ``dotted.key: old -> new``, or None.

    ``old`` and ``new`` are plain data (dicts, lists, scalars; e.g. :func:`to_plain` of two
    configs, or their YAML). Mappings are walked in ``old``'s key order, then the keys
    only ``new`` has; a key only one side has differs from the other side's value and
    shows as ``(absent)``. Lists of equal length are compared item by item
    (``train.models[1].p1``). Scalars compare by value, except that true/false never
    equals a number (``True == 1`` in Python). Values are cut to one short line."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{key}" if path else str(key)
            diff = first_difference(old.get(key, _ABSENT), new.get(key, _ABSENT), sub)
            if diff:
                return diff
        return None
    if (isinstance(old, (list, tuple)) and isinstance(new, (list, tuple))
            and len(old) == len(new)):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            diff = first_difference(a, b, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if _same_number(old, new) or (type(old) is type(new) and old == new):
        return None
    return f"{path or '(top level)'}: {_shown(old)} -> {_shown(new)}"


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT: Any = _Absent()


def _same_number(a: Any, b: Any) -> bool:
    """1 and 1.0 are the same value in a config (YAML writes either)."""
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)


def _shown(value: Any) -> str:
    return "(absent)" if value is _ABSENT else _fmt(value)
