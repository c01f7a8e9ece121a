"""What a sweep runs, as plain data: a grid point (a validated task and resolved chain) and
a chain job (a grid point for a block of seeds, what one Ray Tune trial runs).

The sweep builds them from a spec (sweep/spec.py, which also writes and reads them as
dicts); tracking names and logs runs after them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from collapse_ray.core.chain import ChainConfig
from collapse_ray.core.types import Task


@dataclass(frozen=True)
class GridPoint:
    """One cell of the grid: a fully validated task and chain."""

    key: str  # e.g. gaussian__replace__dim10__n_real100
    swept: tuple[tuple[str, Any], ...]  # the grid's (dotted key, value) at this cell
    task: Task
    chain: ChainConfig  # resolved, once, by _grid_point (with its policy: chain.py)


@dataclass(frozen=True)
class ChainJob:
    """What one Ray Tune trial runs: a grid point for a block of seeds. Handed to the
    trial as it is (it pickles with its resolved chain); sweep.spec's job_to_dict and
    job_from_dict write and read it as plain data."""

    key: str
    point: GridPoint
    seeds: tuple[int, ...]
