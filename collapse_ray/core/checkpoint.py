"""Chain checkpoints stored as data only, so reading one can never run code.

A checkpoint is two files in the chain's folder:
    checkpoint.json       the small parts as JSON, and the name and sha256 of ...
    state-<tag>.npz       ... every array, as .npy members read with allow_pickle=False

The JSON is written last (atomically), so it is the commit point: the arrays file it
names is complete. Values are encoded generically, so a new field of the chain state
survives without this module knowing it: None, bool, int, float, str; lists, tuples
and dicts with str keys; numpy arrays (not of object dtype) and scalars; numpy
Generators (as their bit generator's state dict); and dataclasses of collapse_ray's own
modules (task statistics), rebuilt field by field. Anything else is refused when
saving, and a file holding anything but these is refused when loading.

A dataclass is stored by its module and name; when one moves, RENAMED maps the name
earlier versions wrote to where it lives now, so their checkpoints still resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from collapse_ray import atomic

FORMAT = "collapse_ray.checkpoint/1"
MAX_JSON_BYTES = 256 * 2**20  # far above any real chain state; a bigger file is not ours
BIT_GENERATORS = {name: getattr(np.random, name) for name in ("SFC64", "PCG64", "PCG64DXSM", "MT19937", "Philox")}
_ARRAYS_NAME = re.compile(r"state-[0-9A-Za-z_-]{1,80}\.npz")
_MODULE_NAME = re.compile(r"collapse_ray(\.[A-Za-z_][A-Za-z0-9_]*)+")
_QUALNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
RENAMED = {
    "collapse_ray.loop:_State": "collapse_ray.core.chain_state:ChainState",  # the chain state, before issue 29
}


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint this version can read (the message says why)."""


# -- saving -----------------------------------------------------------------------------
def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise TypeError("a checkpoint cannot hold arrays of Python objects")
        name = f"a{len(arrays)}"
        arrays[name] = array
        return {"array": name, "scalar": isinstance(value, np.generic)}
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.random.Generator):
        return {"generator": _encode(value.bit_generator.state, arrays)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {"dataclass": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(value, f.name), arrays) for f in dataclasses.fields(value)}}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):  # (a namedtuple would lose its type)
        return {"tuple": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return {"list": [_encode(v, arrays) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a checkpoint can only hold dicts with str keys")
        return {"dict": {k: _encode(v, arrays) for k, v in value.items()}}
    raise TypeError(f"a checkpoint cannot hold a {type(value).__module__}.{type(value).__qualname__}")


def save(folder: Path, json_name: str, value: Any, extra: dict[str, Any], tag: str) -> None:
    """Write `value` (and the JSON-ready `extra`) as a checkpoint; atomic, and fsynced."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    encoded = _encode(value, arrays)
    arrays_name = f"state-{tag}.npz"
    atomic.write_with(folder / arrays_name, lambda f: np.savez(f, **arrays))
    document = {"format": FORMAT, "arrays": arrays_name, "arrays_sha256": file_sha256(folder / arrays_name),
                "state": encoded, **extra}
    atomic.write_text(folder / json_name, json.dumps(document))
    for old in folder.glob("state-*.npz"):  # arrays of earlier checkpoints
        if old.name != arrays_name:
            old.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- loading ----------------------------------------------------------------------------
def read_json(path: Path, max_bytes: int) -> Any:
    """The JSON in a regular file of at most max_bytes; CheckpointFormatError saying what
    is off (a FIFO, /dev/zero or a huge file is refused before it is read)."""
    if not path.is_file():
        raise CheckpointFormatError("not a regular file")
    if path.stat().st_size > max_bytes:
        raise CheckpointFormatError(f"larger than {max_bytes >> 20} MiB")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointFormatError(f"not readable JSON ({err})") from None


def load(path: Path) -> tuple[Any, dict[str, Any]]:
    """(the stored value, the whole JSON document); CheckpointFormatError if anything is off."""
    document = read_json(path, MAX_JSON_BYTES)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointFormatError(f"no {FORMAT!r} format marker")
    name = document.get("arrays")
    if not isinstance(name, str) or not _ARRAYS_NAME.fullmatch(name):
        raise CheckpointFormatError(f"its arrays file {name!r} is not a state-*.npz name in the same folder")
    arrays_path = path.parent / name
    if not arrays_path.is_file():
        raise CheckpointFormatError(f"its arrays file {arrays_path} is missing")
    if file_sha256(arrays_path) != document.get("arrays_sha256"):
        raise CheckpointFormatError(f"its arrays file {arrays_path} differs from the sha256 it recorded")
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:  # noqa: BLE001 - any reader error: unusable
        raise CheckpointFormatError(f"its arrays file {arrays_path} is unreadable ({type(err).__name__}: {err})") from None
    return _decode(document.get("state"), arrays), document


def _decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if not isinstance(node, dict) or not node:
        raise CheckpointFormatError(f"unexpected JSON value {str(node)[:60]}")
    if "array" in node:
        if set(node) != {"array", "scalar"} or node["array"] not in arrays:
            raise CheckpointFormatError(f"bad array reference {str(node)[:60]}")
        array = arrays[node["array"]]
        return array[()] if node["scalar"] is True else array
    if set(node) == {"generator"}:
        state = _decode(node["generator"], arrays)
        cls = BIT_GENERATORS.get(state.get("bit_generator")) if isinstance(state, dict) else None
        if cls is None:
            raise CheckpointFormatError(f"bit generator must be one of {sorted(BIT_GENERATORS)}")
        bit_generator = cls()
        try:
            bit_generator.state = state
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointFormatError(f"bad {cls.__name__} state ({err})") from None
        return np.random.Generator(bit_generator)
    if set(node) == {"dataclass", "fields"}:
        return _build_dataclass(node["dataclass"], node["fields"], arrays)
    if set(node) == {"tuple"} and isinstance(node["tuple"], list):
        return tuple(_decode(v, arrays) for v in node["tuple"])
    if set(node) == {"list"} and isinstance(node["list"], list):
        return [_decode(v, arrays) for v in node["list"]]
    if set(node) == {"dict"} and isinstance(node["dict"], dict):
        return {k: _decode(v, arrays) for k, v in node["dict"].items()}
    raise CheckpointFormatError(f"unexpected JSON object with keys {sorted(node)[:5]}")


def _build_dataclass(name: Any, fields: Any, arrays: dict[str, np.ndarray]) -> Any:
    """A dataclass of one of collapse_ray's own modules (importing our own module runs
    our code, never the file's), rebuilt from its fields."""
    name = RENAMED.get(name, name) if isinstance(name, str) else name
    module_name, _, qualname = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not _MODULE_NAME.fullmatch(module_name) or not _QUALNAME.fullmatch(qualname) or not isinstance(fields, dict):
        raise CheckpointFormatError(f"dataclass {str(name)[:80]!r} is not one of collapse_ray's")
    try:
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        raise CheckpointFormatError(f"collapse_ray has no dataclass {name!r}") from None
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise CheckpointFormatError(f"{name!r} is not a dataclass")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(fields) - set(known)
    if unknown:
        raise CheckpointFormatError(f"{name} has no field {sorted(unknown)[0]!r} (a checkpoint of another version?)")
    values = {k: _decode(v, arrays) for k, v in fields.items()}
    try:
        obj = cls(**{k: v for k, v in values.items() if known[k].init})
    except TypeError as err:
        raise CheckpointFormatError(f"{name} cannot be rebuilt ({err})") from None
    for key, value in values.items():
        if not known[key].init:
            object.__setattr__(obj, key, value)
    return obj
