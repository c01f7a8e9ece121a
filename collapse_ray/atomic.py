"""Write-then-rename: the one way collapse_ray writes a file or folder that a reader, a
resume or another chain trusts.

One rule everywhere: the content goes to a hidden temporary beside its target
(`.<name>.tmp-<pid>`), is flushed and fsynced, then renamed over the target, and the
folder holding it is fsynced, so after a crash the target is the old content or the new,
never part of either. A write that fails (a full disk) leaves no temporary; a process
killed mid-write leaves one, which no reader opens (pool folders sweep theirs away:
core.shards.remove_stale_temporaries).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMPORARY_INFIX = ".tmp-"


def temporary_for(path: Path) -> Path:
    """The hidden temporary that `path` is written through (this process's)."""
    return path.parent / f".{path.name}{TEMPORARY_INFIX}{os.getpid()}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync(path)
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        _fsync(path)
    _fsync(folder)


def commit(tmp: Path, path: Path) -> None:
    """The written temporary becomes `path` (for writers that stream into temporary_for(path))."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield the temporary to write `path`'s new content into (for writers that take a path:
    Parquet, numpy); on leaving the block without an error it becomes `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_for(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_with(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(file)` into path's temporary, then rename."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def publish_folder(tmp: Path, out: Path) -> None:
    """Make the finished folder `tmp` (a sibling of `out`) be `out`: its files fsynced, then
    renamed. An `out` that is a folder with files in it stays (OSError: the caller decides,
    e.g. another chain's fit of the same key got there first)."""
    _fsync_tree(tmp)
    os.replace(tmp, out)
    _fsync(out.parent)
