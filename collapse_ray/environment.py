"""Environment variables set for a block only, then put back as they were (a library
call, or the CLI run in-process, must leave the caller's environment untouched)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def environment_restored(names: Iterable[str]) -> Iterator[None]:
    """On leaving, each of `names` has its value from entering again (or is unset)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
