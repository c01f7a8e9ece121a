"""Ray Data reads of a pool's shards (core/shards.py): what the language models' workers
stream their training rows from, without the chain's process holding them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from collapse_ray.core import pool
from collapse_ray.core.disk_pool import PoolSelection
from collapse_ray.core.shards import SHARD_PATH, SOURCES, shard_path
from collapse_ray.core.workflows import PoolIndex, Selection


def as_ray_dataset(root: str | Path):
    """The pool on disk as a Ray Dataset with int `iteration` and str `source` columns."""
    import ray.data
    from ray.data.datasource import Partitioning

    return ray.data.read_parquet(
        str(root),
        partitioning=Partitioning("hive", field_types={"iteration": int}),
        file_extensions=["parquet"],
    )


def selection_dataset(root: str | Path, index: PoolIndex, selection: Selection, chain_id: int,
                      columns: Sequence[str], chain: int = 0):
    """One chain's selected rows as a Ray Data read of only the shards they lie in, in
    (iteration, source, row) order: the same rows as `take(selection)` of the pool that
    wrote ROOT, without the caller holding them. Columns: `columns` plus chain, row,
    iteration, source. The order is fixed (a fit on it is reproducible): this sets the
    driver's Ray Data context to preserve order. (Per-row index and selection; a
    DiskPool's PoolSelection.dataset reads the same from its blocks.)"""
    wanted = pool.selected_rows(index, selection, chain)
    held = {(int(it), SOURCES[code]): int(n) for (it, code), n in zip(*_block_counts(index))}
    return shards_dataset(root, {block: range(int(r[0]), int(r[0]) + len(r)) if len(r) == held[block] else r
                                 for block, r in wanted.items()}, chain_id, columns)


def shards_dataset(root: str | Path, rows_by_shard: dict[tuple[int, str], range | np.ndarray], chain_id: int,
                   columns: Sequence[str]):
    """A Ray Data read of chain `chain_id`'s rows `rows_by_shard` names ((iteration,
    source) -> a range: the whole shard, or a sorted array of row ids), in (iteration,
    source, row) order; see selection_dataset."""
    import ray.data

    root = Path(root)
    if not rows_by_shard:
        raise ValueError("the selection names no rows")
    paths = [str(shard_path(root, it, source)) for it, source in sorted(rows_by_shard)]
    # shards taken whole need no row filter: the keys (8 bytes a row) are only for the rest
    partial = {block: r for block, r in rows_by_shard.items() if not isinstance(r, range)}
    keys = np.sort(np.concatenate([_row_keys(np.full(len(r), it), np.full(len(r), SOURCES.index(s)), r)
                                   for (it, s), r in partial.items()] or [np.empty(0, np.int64)]))
    partial_codes = np.asarray([(it << 1) | SOURCES.index(s) for it, s in partial], dtype=np.int64)

    def keep(batch: pa.Table) -> pa.Table:
        # the shard each row came from, by its path (iteration=T/source=S/...)
        found = [SHARD_PATH.search(p) for p in batch["path"].to_pylist()]
        iteration = np.asarray([int(m.group(1)) for m in found], dtype=np.int64)
        codes = np.asarray([SOURCES.index(m.group(2)) for m in found], dtype=np.int64)
        mine = batch["chain"].to_numpy() == chain_id
        filtered = np.isin((iteration << 1) | codes, partial_codes)
        picked = mine & (~filtered | np.isin(_row_keys(iteration, codes, batch["row"].to_numpy()), keys))
        return (batch.drop_columns(["path"]).append_column("iteration", pa.array(iteration))
                .append_column("source", pa.array(np.asarray(SOURCES)[codes])).filter(pa.array(picked)))

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    dataset = ray.data.read_parquet(paths, columns=["chain", "row", *columns], include_paths=True, partitioning=None)
    return dataset.map_batches(keep, batch_format="pyarrow")


def selection_dataset_of(selection: PoolSelection, columns: Sequence[str]):
    """A Ray Data read of a PoolSelection's rows (shards_dataset): nothing is read here."""
    return shards_dataset(selection.root, selection.rows_by_shard(), selection.chain_id, columns)


def _block_counts(index: PoolIndex):
    """((iteration, source code) pairs, rows of each) held in the index."""
    blocks, counts = np.unique(np.stack([index.iteration, index.source.astype(np.int64)], axis=1), axis=0,
                               return_counts=True)
    return [tuple(b) for b in blocks.tolist()], counts.tolist()


def _row_keys(iteration: np.ndarray, source_code: np.ndarray, row: np.ndarray) -> np.ndarray:
    """One int64 per (iteration, source, row): rows under 2**32 per shard."""
    return (np.asarray(iteration, np.int64) << 33) | (np.asarray(source_code, np.int64) << 32) | np.asarray(row, np.int64)
