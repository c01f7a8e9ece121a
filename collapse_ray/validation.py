"""Turning untrusted mappings (YAML, CLI overrides) into frozen, typed dataclasses.

Every failure is a `SpecError` whose message is one line naming the field, what is
allowed and what was given, in scikit-learn's manner:
    "chain.workflow must be one of {replace, accumulate, accumulate_subsample}; got 'foo'"
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

INT_BITS = 63
"""Integers must fit numpy's int64: |value| < 2**63."""


def one_line(text: str) -> str:
    """`text` with line breaks and other unprintable characters escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class SpecError(ValueError):
    """A sweep spec or config value that cannot be used; the message is one line.

    `field` and `allowed` are set when the error came from `fail` (what the field is
    and what it may be), so callers can compose messages without parsing them."""

    def __init__(self, message: str, field: str | None = None, allowed: str | None = None):
        super().__init__(one_line(str(message)))
        self.field = field
        self.allowed = allowed


@runtime_checkable
class Validated(Protocol):
    """A config with range rules beyond its field types (tasks, the chain, the run block)."""

    def validate(self, where: str) -> None:
        """from_mapping, right after building the dataclass from user data: range and cross-field rules
        (SpecError naming `where`.field)."""


class _ShortRepr(reprlib.Repr):
    """reprlib, bounded in depth and width (YAML aliases can make huge shared
    structures), and safe for integers too long for `repr`."""

    def __init__(self):
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = 6
        self.maxstring = self.maxlong = self.maxother = 60

    def repr_int(self, x, level):
        if x.bit_length() > 200:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_SHORT_REPR = _ShortRepr()


def describe(value: Any) -> str:
    """Short repr of a user value for error messages (one line, at most 60 characters)."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\[\]-]+")


def key_name(key: Any) -> str:
    """A user-given key as it appears in a dotted field name: as is when it is plain,
    else quoted (so a key with spaces, line breaks or of another type stays readable)."""
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else describe(key)


def did_you_mean(got: Any, choices: typing.Iterable[Any]) -> str:
    """" (did you mean 'x'?)" for a string close to one of `choices` (difflib), else ""."""
    import difflib

    if not isinstance(got, str):
        return ""
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(got, names, n=1, cutoff=0.6) or [
        n for n in names if got.lower() == n.lower()]
    return f" (did you mean {close[0]!r}?)" if close else ""


def fail(field: str, allowed: str, got: Any) -> typing.NoReturn:
    hint = ""
    if allowed.startswith("one of {") and allowed.endswith("}"):
        hint = did_you_mean(got, (c.strip() for c in allowed[len("one of {"):-1].split(",")))
    raise SpecError(f"{field} must be {allowed}; got {describe(got)}{hint}", field=field, allowed=allowed)


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
                errors.append(err.allowed)
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
            require(abs(value) < 2**INT_BITS, field, f"an integer in (-2**{INT_BITS}, 2**{INT_BITS})", value)
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        fail(field, "an integer", value)
    if annotation is float:
        if isinstance(value, bool):
            fail(field, "a number", value)
        if isinstance(value, int):
            require(abs(value) < 2**1023, field, "a number in (-2**1023, 2**1023)", value)  # float() overflows
            return float(value)
        if isinstance(value, float):
            return value
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
    Range and cross-field checks live in the class's `validate(where)` (`Validated`),
    called here; they raise SpecError too.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        fail(where, "a mapping of keys to values", data)
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in fixed}
    kwargs = dict(fixed)
    for key, value in data.items():
        if not isinstance(key, str) or key not in fields:
            allowed = ", ".join(sorted(fields))
            raise SpecError(f"{where}: unknown key {describe(key)}{did_you_mean(key, fields)}; allowed keys: {allowed}")
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
    if isinstance(obj, Validated):
        obj.validate(where)
    return obj


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # evaluates string annotations: slow, and fixed per class


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
