"""A full or read-only disk: no outage to wait out but a fault to report at once, in one
line that names it (the tracking client, the sweep and the command line all ask).

A leaf: imports nothing of collapse_ray.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator


class StorageFault(RuntimeError):
    """A full or read-only disk under the store or the results folder: retrying cannot help."""


DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)
DISK_MARKERS = ("database or disk is full", "readonly database", "No space left on device", "Read-only file system",
                "Disk quota exceeded")


def _causes(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_disk_fault(err: BaseException) -> bool:
    """A full or read-only disk, however deep in a driver's exception chain."""
    return any((isinstance(e, OSError) and e.errno in DISK_ERRNOS) or any(m in str(e) for m in DISK_MARKERS)
               for e in _causes(err))


def disk_fault_line(err: BaseException) -> str:
    """One line saying what the disk fault is, the path when the error names one (not
    SQLAlchemy's "autoflush" preamble)."""
    for e in _causes(err):
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            where = f" ({e.filename})" if e.filename else ""
            return f"the disk is full or read-only{where}: {e.strerror}"
    for e in _causes(err):
        for marker in DISK_MARKERS:
            if marker in str(e):
                return f"the disk is full or read-only: {marker}"
    return type(err).__name__  # pragma: no cover - only called when is_disk_fault (no text: it may hold a credential)
