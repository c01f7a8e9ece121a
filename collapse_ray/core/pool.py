"""The data pool: real and synthetic rows of a batch of chains, with each row's
iteration of origin (0 for real rows) and source ("real" / "synthetic").

In memory the pool is column arrays of shape (chains, rows, ...). Every chain adds the
same number of rows per iteration, so the row layout (and thus `iteration` and
`source`) is shared by all chains and rows of one iteration are contiguous.

On disk the pool is its shards (core/shards.py: one Parquet file per iteration and
source). Cheap tasks keep the pool in memory (ArrayPool) and write it only when
checkpointing or when asked to persist it; language models' pools live in their shards
(DiskPool), and their workers read them through Ray Data (text/readers.py).
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
    SHAPES_KEY, SOURCES, ShardTarget, block_rows, check_manifest, iterations_on_disk, manifest_entry, shard_path, to_arrow,
    write_shard,
)
from collapse_ray.core.workflows import BlockSelection, MixingPolicy, PoolBlocks, PoolIndex, Selection



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
        k = _n_rows(rows, len(self.chain_ids))
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


def _n_rows(rows: dict[str, np.ndarray], n_chains: int) -> int:
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


# -- the pool on disk: rows in the shards, only the index in the process ---------------
class PoolSelection:
    """A handle on one chain's selected rows in the pool's shards, given to a task in
    place of the rows: ROOT, the pool's blocks ((iteration, source, rows per chain, row
    id of the first row) each, in index order) and the block selection (which blocks
    whole, which rows of the others, and their order: workflows.BlockSelection), the
    chain id (its `chain` column) and position, and the manifest entries of the shards
    the rows lie in (their sha256 identify the content). Its size is O(blocks +
    subsampled rows), whatever the pool's size."""

    __slots__ = ("root", "blocks", "chosen", "chain_id", "position", "shards")

    def __init__(self, root, blocks: Sequence[tuple[int, str, int, int]], chosen: BlockSelection, chain_id: int,
                 position: int, shards: Sequence[dict]):
        self.root, self.blocks, self.chosen = str(root), tuple(blocks), chosen
        self.chain_id, self.position, self.shards = int(chain_id), int(position), tuple(shards)

    def __len__(self) -> int:
        return len(self.chosen)

    def rows_by_shard(self) -> dict[tuple[int, str], range | np.ndarray]:
        """(iteration, source) -> the `row` ids taken from that shard: a range (the whole
        shard), or a sorted int64 array; in (iteration, source) order."""
        out = {}
        for b, offsets in self.chosen.by_block().items():
            it, source, k, first = self.blocks[b]
            out[(it, source)] = range(first, first + k) if offsets is None else first + offsets
        return dict(sorted(out.items()))

    def read(self, columns: Sequence[str]) -> dict[str, list]:
        """The selected rows, in this process and in the selection's own order: what
        `ArrayPool.take(selection)` gives one chain (in-process backends, debugging)."""
        if len(self) == 0:
            return {c: [] for c in columns}
        values = {}  # block -> column -> this chain's values, by offset within the block
        for b in self.chosen.by_block():
            it, source, k, first = self.blocks[b]
            path = shard_path(self.root, it, source)
            table = pq.read_table(path, columns=["chain", "row", *columns], filters=[("chain", "=", self.chain_id)])
            at = np.empty(k, dtype=np.int64)
            at[table["row"].to_numpy() - first] = np.arange(table.num_rows)
            values[b] = {c: np.asarray(table[c].to_pylist(), dtype=object)[at] for c in columns}
        out = {c: [] for c in columns}
        for blocks, offsets in self.chosen.parts:
            if offsets is None:
                for b in blocks:
                    for c in columns:
                        out[c].extend(values[int(b)][c])
                continue
            for c in columns:
                part = np.empty(len(offsets), dtype=object)
                for b in np.unique(blocks):
                    mine = blocks == b
                    part[mine] = values[int(b)][c][offsets[mine]]
                out[c].extend(part)
        return out

    def digest(self) -> str:
        """Identifies the selected content: the shards' sha256 and the rows taken (a
        whole shard as its row range, else its row ids)."""
        import hashlib

        h = hashlib.sha256()
        for entry in sorted(self.shards, key=lambda e: e["path"]):
            h.update(f"{entry['path']}:{entry['sha256']};".encode())
        for (it, source), rows in self.rows_by_shard().items():
            if isinstance(rows, range):
                h.update(f"{it}/{source}:whole {rows.start}-{rows.stop};".encode())
            else:
                h.update(f"{it}/{source}:rows {len(rows)}:".encode())
                h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
        h.update(str(self.chain_id).encode())
        return h.hexdigest()


class DiskPool:
    """The pool as its shards on disk; this process holds only its blocks ((iteration,
    source, rows per chain) each) and the shards' manifest entries: nothing per row.

    The same reading interface as ArrayPool for the loop (manifest, write_shards,
    latest_iteration), but rows never enter it: `target` says where a block's rows
    go, whoever makes them writes them there, and `added` records the written shard.
    `select` hands out a PoolSelection of a workflow's selection (made block by block:
    MixingPolicy.select_blocks) instead of `take`'s rows. `index` (the per-row index,
    9 bytes a row) and `selection` (of a per-row selection) are for tests and small
    pools; the loop uses neither."""

    def __init__(self, root: str | Path, chain_ids: Sequence[int], keep_history: bool = True):
        self.root = Path(root)
        self.chain_ids = np.asarray(chain_ids, dtype=np.int64)
        self.keep_history = keep_history
        self._blocks: list[tuple[int, str, int]] = []  # (iteration, source, rows per chain), in added order
        self._shards: dict[tuple[int, str], dict] = {}

    def __len__(self) -> int:
        return sum(k for _, _, k in self._blocks)

    @property
    def index(self) -> PoolIndex:
        counts = [k for _, _, k in self._blocks]
        return PoolIndex(iteration=np.repeat(np.asarray([b[0] for b in self._blocks], dtype=np.int64), counts),
                         source=np.repeat(np.asarray([SOURCES.index(b[1]) for b in self._blocks], np.int8), counts))

    @property
    def latest_iteration(self) -> int:
        return self._blocks[-1][0] if self._blocks else -1

    @property
    def blocks(self) -> PoolBlocks:
        """The held blocks in index order: what MixingPolicy.select_blocks reads."""
        return PoolBlocks(iteration=np.asarray([b[0] for b in self._blocks], dtype=np.int64),
                          source=np.asarray([SOURCES.index(b[1]) for b in self._blocks], dtype=np.int8),
                          rows=np.asarray([b[2] for b in self._blocks], dtype=np.int64))

    def nbytes(self) -> int:
        """Bytes of the pool's description this object holds: 3 int64 a block, nothing a row."""
        return 24 * len(self._blocks)

    def target(self, iteration: int, source: str, position: int = 0) -> ShardTarget:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}; got {source!r}")
        if iteration < self.latest_iteration:
            raise ValueError(f"rows of iteration {iteration} added after iteration {self.latest_iteration}")
        first = sum(k for it, _, k in self._blocks if it == iteration)
        return ShardTarget(self.root, iteration, source, int(self.chain_ids[position]), first)

    def added(self, target: ShardTarget) -> None:
        """Record the shard a writer put at `target` (none: an empty block)."""
        if not target.path.exists():
            return
        rows = pq.read_metadata(target.path).num_rows
        if rows % len(self.chain_ids):
            raise ValueError(f"{target.path} holds {rows} rows, not a multiple of {len(self.chain_ids)} chains")
        self._append(target.iteration, target.source, rows // len(self.chain_ids),
                     manifest_entry(target.path, self.root, rows))

    def add(self, rows: dict[str, np.ndarray], iteration: int, source: str) -> None:
        """Rows made in this process (fresh real rows: few), written to their shard at once."""
        k = _n_rows(rows, len(self.chain_ids))
        if k == 0:
            return
        target = self.target(iteration, source)
        staging = ArrayPool(self.chain_ids)
        staging.add(rows, iteration, source)
        table = staging._block_table(np.arange(k), -target.first_row)
        write_shard(table, target.path)
        self._append(iteration, source, k, manifest_entry(target.path, self.root, table.num_rows))

    def _append(self, iteration: int, source: str, k: int, entry: dict) -> None:
        if not self.keep_history and self._blocks and iteration > self.latest_iteration:
            self._blocks = []  # the workflow never looks back: older blocks leave the index
        self._blocks.append((iteration, source, k))
        self._shards[(iteration, source)] = entry

    def write_shards(self, root: str | Path | None = None) -> list[Path]:
        return []  # every block was written when it was added

    def manifest(self) -> list[dict]:
        return [self._shards[(it, s)] for it, s in sorted((it, s) for it, s, _ in self._blocks)]

    def select(self, workflow: MixingPolicy, iteration: int, rngs: Sequence[np.random.Generator],
               position: int = 0) -> PoolSelection:
        """The chain at `position`'s rows of `workflow.select(index, iteration, rngs)` (the
        same rows, order and draws from every rng), made from the blocks: no per-row array,
        so the process's memory does not grow with the pool."""
        return self._handle(workflow.select_blocks(self.blocks, iteration, rngs)[position], position)

    def selection(self, selection: Selection, position: int = 0) -> PoolSelection:
        """A handle on a per-row selection (MixingPolicy.select of `index`): O(selected rows)."""
        sizes = self.blocks.rows
        ends = np.cumsum(sizes)
        if isinstance(selection, slice):
            positions = np.arange(int(ends[-1]) if len(ends) else 0)[selection]
        else:
            positions = np.asarray(selection)
            positions = positions[position] if positions.ndim == 2 else positions
        at = np.searchsorted(ends, positions, side="right")
        offsets = np.asarray(positions - (ends[at] - sizes[at]), dtype=np.int64)
        return self._handle(BlockSelection(sizes, ((at, offsets),)), position)

    def _handle(self, chosen: BlockSelection, position: int) -> PoolSelection:
        described, first = [], {}  # a shard's row ids start after its iteration's earlier blocks
        for it, source, k in self._blocks:
            described.append((it, source, k, first.get(it, 0)))
            first[it] = first.get(it, 0) + k
        shards = [self._shards[described[b][:2]] for b in chosen.by_block()]
        return PoolSelection(self.root, described, chosen, int(self.chain_ids[position]), position,
                             sorted(shards, key=lambda e: e["path"]))

    @classmethod
    def load(cls, root: str | Path, chain_ids: Sequence[int], keep_history: bool,
             manifest: Sequence[dict]) -> "DiskPool":
        """The pool a checkpoint's manifest lists, each shard checked against its row
        count and sha256. Within an iteration the loop adds the synthetic block before
        the fresh real one (iteration 0: real only), so that is their order here."""
        pool = cls(root, chain_ids, keep_history)
        listed = check_manifest(pool.root, manifest)
        order = {"synthetic": 0, "real": 1}
        for it, source in sorted(listed, key=lambda b: (b[0], order[b[1]])):
            entry = listed[(it, source)]
            pool._append(it, source, entry["rows"] // len(pool.chain_ids), entry)
        return pool
