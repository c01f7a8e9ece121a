"""Turning untrusted mappings (YAML, CLI overrides) into frozen, typed dataclasses.

Every failure is a `SpecError` whose message is one line naming the field, what is
allowed and what was given, in scikit-learn's manner:
    "chain.workflow must be one of {replace, accumulate, accumulate_subsample}; got 'foo'"
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal


class SpecError(ValueError):
    """A sweep spec or config value that cannot be used; the message is one line."""


def describe(value: Any) -> str:
    """Short repr of a user value for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(field: str, allowed: str, got: Any) -> typing.NoReturn:
    raise SpecError(f"{field} must be {allowed}; got {describe(got)}")


def require(condition: bool, field: str, allowed: str, got: Any) -> None:
    if not condition:
        fail(field, allowed, got)


def _coerce(annotation: Any, value: Any, field: str) -> Any:
    """Check `value` against a (simple) type annotation, converting where YAML is loose."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        fail(field, "one of {" + ", ".join(map(str, args)) + "}", value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, field)
            except SpecError as err:
                errors.append(str(err).split(" must be ", 1)[1].rsplit("; got", 1)[0])
        allowed = " or ".join(errors) + (" or null" if type(None) in args else "")
        fail(field, allowed, value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            fail(field, "a list", value)
        item_type = args[0]
        return tuple(_coerce(item_type, v, f"{field}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        fail(field, "true or false", value)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        fail(field, "an integer", value)
    if annotation is float:
        if isinstance(value, bool):
            fail(field, "a number", value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-3` as a string
            try:
                return float(value)
            except ValueError:
                pass
        fail(field, "a number", value)
    if annotation is str:
        if isinstance(value, str):
            return value
        fail(field, "a string", value)
    raise TypeError(f"unsupported annotation {annotation!r} for {field}")  # programming error


def from_mapping(cls: type, data: Any, where: str, **fixed: Any) -> Any:
    """Build dataclass `cls` from `data`, refusing unknown keys and wrong types.

    `fixed` are keyword arguments supplied by the caller rather than the user.
    Range checks live in each class's `__post_init__` (they raise SpecError too).
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        fail(where, "a mapping of keys to values", data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in fixed}
    kwargs = dict(fixed)
    for key, value in data.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise SpecError(f"{where}: unknown key {describe(key)}; allowed keys: {allowed}")
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SpecError(f"{where}.{missing[0]} is required")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def check_finite_positive(value: float, field: str) -> None:
    require(math.isfinite(value) and value > 0, field, "a number in (0, inf)", value)


def check_min(value: int, minimum: int, field: str) -> None:
    require(value >= minimum, field, f"an integer >= {minimum}", value)


def as_flat_dict(obj: Any) -> dict[str, Any]:
    """Dataclass fields as a plain dict (tuples become lists), for logging and YAML."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
