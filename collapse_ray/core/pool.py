"""The data pool: real and synthetic rows of a batch of chains, with each row's
iteration of origin (0 for real rows) and source ("real" / "synthetic").

In memory the pool is column arrays of shape (chains, rows, ...). Every chain adds the
same number of rows per iteration, so the row layout (and thus `iteration` and
`source`) is shared by all chains and rows of one iteration are contiguous.

On disk the pool is its shards (core/shards.py: one Parquet file per iteration and
source). Cheap tasks keep the pool in memory (ArrayPool) and write it only when
checkpointing or when asked to persist it; language models' pools live in their shards
(core/disk_pool.py), and their workers read them through Ray Data (text/readers.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from collapse_ray.core.shards import (
    SHAPES_KEY, SOURCES, block_rows, check_manifest, iterations_on_disk, manifest_entry, shard_path, to_arrow, write_shard,
)
from collapse_ray.core.workflows import PoolIndex, Selection



class ArrayPool:
    def __init__(self, chain_ids: Sequence[int], keep_history: bool = True, capacity: int = 0):
        self.chain_ids = np.asarray(chain_ids, dtype=np.int64)
        self.keep_history = keep_history  # False: only the newest iteration's rows are held
        self._capacity = capacity
        self._columns: dict[str, np.ndarray] = {}
        self._n = 0
        self._iteration = np.empty(0, dtype=np.int64)
        self._source = np.empty(0, dtype=np.int8)
        self._written: set[tuple[int, str]] = set()
        self._shards: dict[tuple[int, str], dict] = {}  # (iteration, source) -> its manifest entry

    # -- reading --------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def index(self) -> PoolIndex:
        return PoolIndex(iteration=self._iteration[: self._n], source=self._source[: self._n])

    @property
    def source(self) -> np.ndarray:
        return np.asarray(SOURCES)[self._source[: self._n]]

    def take(self, selection: Selection) -> dict[str, np.ndarray]:
        if isinstance(selection, slice):
            return {k: v[:, : self._n][:, selection] for k, v in self._columns.items()}
        if selection.ndim == 1:  # the same rows for every chain
            return {k: v[:, selection] for k, v in self._columns.items()}
        chains = np.arange(selection.shape[0])[:, None]
        return {k: v[chains, selection] for k, v in self._columns.items()}

    def rows_of(self, iteration: int) -> dict[str, np.ndarray]:
        rows = np.flatnonzero(self._iteration[: self._n] == iteration)
        if len(rows) == 0:
            raise KeyError(f"the pool holds no rows of iteration {iteration}")
        return self.take(slice(int(rows[0]), int(rows[-1]) + 1))

    @property
    def latest_iteration(self) -> int:
        return int(self._iteration[self._n - 1]) if self._n else -1

    # -- writing --------------------------------------------------------------
    def add(self, rows: dict[str, np.ndarray], iteration: int, source: str) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}; got {source!r}")
        if self._n and iteration < self.latest_iteration:
            raise ValueError(f"rows of iteration {iteration} added after iteration {self.latest_iteration}")
        if not self.keep_history and self._n and iteration > self.latest_iteration:
            self._drop_before(iteration)
        k = n_rows(rows, len(self.chain_ids))
        if self._columns and set(rows) != set(self._columns):
            raise ValueError(f"pool columns are {sorted(self._columns)}; got {sorted(rows)}")
        self._reserve(rows, self._n + k)
        for name, values in rows.items():
            self._columns[name][:, self._n : self._n + k] = values
        self._iteration = _grow(self._iteration, self._n + k)
        self._source = _grow(self._source, self._n + k)
        self._iteration[self._n : self._n + k] = iteration
        self._source[self._n : self._n + k] = SOURCES.index(source)
        self._n += k

    def _drop_before(self, iteration: int) -> None:
        keep = int(np.searchsorted(self._iteration[: self._n], iteration))
        for col in self._columns.values():
            col[:, : self._n - keep] = col[:, keep : self._n].copy()
        self._iteration[: self._n - keep] = self._iteration[keep : self._n].copy()
        self._source[: self._n - keep] = self._source[keep : self._n].copy()
        self._n -= keep

    def _reserve(self, rows: dict[str, np.ndarray], needed: int) -> None:
        current = next(iter(self._columns.values())).shape[1] if self._columns else 0
        if needed <= current and self._columns:  # (an empty first block still creates columns)
            return
        # amortised doubling, or the capacity the caller announced
        new = max(needed, 2 * current, self._capacity if self.keep_history else 0)
        for name, values in rows.items():
            grown = np.empty((values.shape[0], new, *values.shape[2:]), dtype=values.dtype)
            if name in self._columns:
                grown[:, : self._n] = self._columns[name][:, : self._n]
            self._columns[name] = grown

    # -- Parquet --------------------------------------------------------------
    def write_shards(self, root: str | Path) -> list[Path]:
        """Write every held (iteration, source) block not yet on disk; returns new files."""
        root = Path(root)
        written = []
        held = self._iteration[: self._n]
        for it in np.unique(held):
            for code, source in enumerate(SOURCES):
                if (int(it), source) in self._written:
                    continue
                rows = np.flatnonzero((held == it) & (self._source[: self._n] == code))
                if len(rows) == 0:
                    continue
                block_start = int(np.flatnonzero(held == it)[0])
                table = self._block_table(rows, block_start)
                path = shard_path(root, int(it), source)
                write_shard(table, path)
                self._written.add((int(it), source))
                self._shards[(int(it), source)] = manifest_entry(path, root, table.num_rows)
                written.append(path)
        return written

    def manifest(self) -> list[dict]:
        """The shards that make up the held rows (write_shards first): path relative to
        the pool folder, row count and sha256 of each. Stored with a checkpoint, it lets a
        resume refuse a pool that lost or changed a shard since."""
        held = self._iteration[: self._n]
        blocks = {(int(it), SOURCES[code]) for it, code in zip(held, self._source[: self._n])} if self._n else set()
        missing = blocks - set(self._shards)
        if missing:
            raise ValueError(f"pool blocks {sorted(missing)} are not written yet (call write_shards first)")
        return [self._shards[b] for b in sorted(blocks)]

    def _block_table(self, rows: np.ndarray, block_start: int) -> pa.Table:
        n_chains, k = len(self.chain_ids), len(rows)
        arrays = {
            "chain": pa.array(np.repeat(self.chain_ids, k)),
            "row": pa.array(np.tile(rows - block_start, n_chains).astype(np.int64)),
        }
        shapes = {}
        for name, col in self._columns.items():
            values = col[:, rows[0] : rows[-1] + 1]
            shapes[name] = list(values.shape[2:])
            arrays[name] = to_arrow(values.reshape(n_chains * k, -1) if values.ndim > 2 else values.reshape(-1))
        return pa.table(arrays).replace_schema_metadata({SHAPES_KEY: json.dumps(shapes)})

    @classmethod
    def load(
        cls,
        root: str | Path,
        chain_ids: Sequence[int],
        up_to_iteration: int,
        keep_history: bool = True,
        capacity: int = 0,
        manifest: Sequence[dict] | None = None,
    ) -> "ArrayPool":
        """Rebuild the in-memory pool from shards of iterations <= `up_to_iteration`.

        With a checkpoint's `manifest`, exactly the shards it lists are read, each checked
        against its row count and sha256 (ValueError naming the file otherwise). Without
        one, whatever is on disk; later shards (written by a run that crashed before its
        checkpoint) are ignored either way.
        """
        root = Path(root)
        pool = cls(chain_ids, keep_history=keep_history, capacity=capacity)
        if manifest is not None:
            listed = check_manifest(root, manifest)
            iterations = sorted({it for it, _ in listed})
        else:
            listed = None
            iterations = [i for i in iterations_on_disk(root) if i <= up_to_iteration]
            if not keep_history:
                iterations = iterations[-1:]
        for it in iterations:
            blocks = []
            for source in SOURCES:
                path = shard_path(root, it, source)
                if (listed is None and path.exists()) or (listed is not None and (it, source) in listed):
                    table = pq.read_table(path)
                    pool._shards[(it, source)] = (listed[(it, source)] if listed is not None
                                                  else manifest_entry(path, root, table.num_rows))
                    blocks.append((int(pc.min(table["row"]).as_py()), source, table, path))
            # an iteration can hold a synthetic and a fresh-real block: re-add them in the
            # order they were added (their row offsets), so positional selections replay
            for _, source, table, path in sorted(blocks, key=lambda b: b[0]):
                pool.add(block_rows(table, path, pool.chain_ids), it, source)
                pool._written.add((it, source))
        return pool


def n_rows(rows: dict[str, np.ndarray], n_chains: int) -> int:
    lengths = {v.shape[1] for v in rows.values()}
    if len(lengths) != 1 or any(v.shape[0] != n_chains for v in rows.values()):
        raise ValueError(f"rows must be arrays of shape ({n_chains}, k, ...) with one k for all columns")
    return lengths.pop()


def _grow(arr: np.ndarray, needed: int) -> np.ndarray:
    if needed <= len(arr):
        return arr
    grown = np.empty(max(needed, 2 * len(arr)), dtype=arr.dtype)
    grown[: len(arr)] = arr
    return grown


def selected_rows(index: PoolIndex, selection: Selection, chain: int = 0) -> dict[tuple[int, str], np.ndarray]:
    """Where one chain's selected rows lie on disk: (iteration, source) -> their sorted
    `row` ids in that shard. `chain` is the chain's position in the pool (an int array
    selection has a row set per chain). Pure index arithmetic: no row is read."""
    positions = np.arange(len(index.iteration))[selection] if isinstance(selection, slice) else np.asarray(selection)
    if positions.ndim == 2:
        positions = positions[chain]
    positions = np.sort(positions)
    iterations = index.iteration[positions]
    # a shard's `row` is the position within its iteration's block (write_shards)
    firsts, starts = np.unique(index.iteration, return_index=True)
    block_start = starts[np.searchsorted(firsts, iterations)]
    rows = positions - block_start
    out = {}
    for it in np.unique(iterations):
        for code, source in enumerate(SOURCES):
            mask = (iterations == it) & (index.source[positions] == code)
            if mask.any():
                out[(int(it), source)] = rows[mask]
    return out
