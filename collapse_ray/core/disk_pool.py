"""The pool on disk (language models' pools, tens of GB): the rows stay in their shards
(core/shards.py) and this process holds only the pool's blocks, nothing per row.
`DiskPool` hands a fit a `PoolSelection` (a handle on the selected rows) in place of the
rows; the task's workers stream them (text/readers.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from collapse_ray.core.pool import ArrayPool, n_rows
from collapse_ray.core.shards import SOURCES, ShardTarget, check_manifest, manifest_entry, shard_path, write_shard
from collapse_ray.core.workflows import BlockSelection, MixingPolicy, PoolBlocks, PoolIndex, Selection


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
        k = n_rows(rows, len(self.chain_ids))
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
