"""Reading YAML from untrusted files and command lines, failing in one line.

PyYAML's safe loader runs no code, but a document can still make it recurse without
bound, loop through aliases, or crash its constructors; and a path can name a FIFO, a
device or a huge file. Here every such input ends in a `SpecError` (files) or a
`yaml.YAMLError` (text) that says where, before anything else reads it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from collapse_ray.validation import SpecError, describe

MAX_YAML_DEPTH = 32  # a spec is 3 levels deep; deeper is a mistake (and recursion in PyYAML)
MAX_SPEC_BYTES = 1 << 20  # a spec is a few KiB; a bigger file is a mistake (and slow YAML)


class _HardenedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, failing with a YAMLError (and its line) on everything a
    document can get wrong: too deep (PyYAML recurses), recursive aliases, and scalars
    its constructors choke on (2001-13-45, an integer of 5000 digits)."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _node_height(node, 1, set(), {})  # aliases can nest deeper than the text does
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ArithmeticError, LookupError, TypeError, ValueError) as err:  # PyYAML's constructors on bad
            # scalars (`!!int ''` is an IndexError); YAMLErrors pass through
            raise ConstructorError(None, None, f"cannot read {describe(node.value)}: {err}", node.start_mark) from None


def _node_height(node, level: int, open_nodes: set[int], heights: dict[int, int]) -> int:
    if id(node) in open_nodes:
        raise ComposerError(None, None, "an alias refers to a node that contains it", node.start_mark)
    height = heights.get(id(node))
    if height is None:
        if level > MAX_YAML_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels (through aliases)",
                                node.start_mark)
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        open_nodes.add(id(node))
        height = 1 + max((_node_height(c, level + 1, open_nodes, heights) for c in children), default=0)
        open_nodes.discard(id(node))
        heights[id(node)] = height
    if level - 1 + height > MAX_YAML_DEPTH:
        raise ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels (through aliases)",
                            node.start_mark)
    return height


def load_yaml(text: str) -> Any:
    """yaml.safe_load, raising only yaml.YAMLError on bad input."""
    return yaml.load(text, Loader=_HardenedLoader)


def yaml_problem(err: yaml.YAMLError, text: str) -> str:
    """' at line L, column C: what is wrong' for a YAML error."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        code = err.character if isinstance(err.character, int) else ord(err.character[:1] or "\0")
        return f" at line {line}, column {column}: {err.reason} (character U+{code:04X})"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {' '.join(str(problem).split())}" if problem else where


def _read_bounded(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_SPEC_BYTES (a FIFO would block, a
    device never end): SpecError otherwise."""
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # (a folder fails to open, saying so)
        raise SpecError(f"spec file {str(path)!r} must be a regular file; got a "
                        f"{'FIFO' if stat.S_ISFIFO(mode) else 'device or socket'}")
    with open(path, "rb") as f:
        data = f.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec file {str(path)!r} must be at most {MAX_SPEC_BYTES >> 10} KiB; it is "
                        f"{os.stat(path).st_size >> 10} KiB")
    return data


def load_yaml_file(path: Path) -> tuple[str, Any]:
    """A spec file's text and its YAML document; SpecError (one line naming the file and,
    for bad YAML, the line and column) for anything that is not a readable, small,
    UTF-8, well-formed YAML file."""
    try:
        data = _read_bounded(path)
    except SpecError:
        raise
    except OSError as err:
        hint = ""
        if isinstance(err, FileNotFoundError) and Path(path).parent.is_dir():  # a mistyped name: the folder's specs
            from collapse_ray.validation import did_you_mean

            hint = did_you_mean(Path(path).name, sorted(p.name for p in Path(path).parent.glob("*.y*ml")))
        raise SpecError(f"spec file {str(path)!r} cannot be read: {err.strerror or err}{hint}") from None
    except ValueError as err:  # e.g. a NUL in the path
        raise SpecError(f"spec file {str(path)!r} cannot be read: {err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise SpecError(f"spec file {str(path)!r} is not UTF-8 text: byte {data[err.start]:#04x} at line {line}, "
                        f"offset {err.start}") from None
    try:
        return text, load_yaml(text)
    except yaml.YAMLError as err:
        raise SpecError(f"spec file {str(path)!r} is not valid YAML{yaml_problem(err, text)}") from None
