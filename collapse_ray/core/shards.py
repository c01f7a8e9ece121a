"""The pool's shard format: where a block of rows lives on disk, what a shard holds, how
it is written, listed in a checkpoint's manifest and checked.

A pool on disk is hive-partitioned Parquet, one shard per iteration and source:
    ROOT/iteration=T/source=S/part-0.parquet   (columns: chain, row, <data columns>)
with the data columns' row shapes in the schema's metadata (SHAPES_KEY). A shard is
written to a hidden temporary and renamed (collapse_ray.atomic), so readers never see a
partial one; a checkpoint lists its shards with their row counts and sha256.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from collapse_ray import atomic

SOURCES = ("real", "synthetic")
SHAPES_KEY = b"collapse_ray.shapes"  # the schema metadata holding the data columns' row shapes
SHARD_NAME = "part-0.parquet"


def shard_path(root: str | Path, iteration: int, source: str) -> Path:
    """The one place the shard layout is spelled."""
    return Path(root) / f"iteration={int(iteration)}" / f"source={source}" / SHARD_NAME


TEMPORARY_GLOB = f".{SHARD_NAME}{atomic.TEMPORARY_INFIX}*"


def remove_stale_temporaries(root: str | Path) -> int:
    """Delete half-written shards a killed writer left (hidden, so no reader saw them)."""
    stale = list(Path(root).glob(f"iteration=*/source=*/{TEMPORARY_GLOB}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def manifest_entry(path: Path, root: Path, rows: int) -> dict:
    from collapse_ray.core.checkpoint import file_sha256

    return {"path": path.relative_to(root).as_posix(), "rows": int(rows), "sha256": file_sha256(path)}


SHARD_PATH = re.compile(rf"iteration=(\d+)/source=({'|'.join(SOURCES)})/{re.escape(SHARD_NAME)}")


def check_manifest(root: str | Path, manifest: Sequence[dict]) -> dict[tuple[int, str], dict]:
    """Every shard a checkpoint's manifest lists must be there with its row count and
    sha256 (else ValueError naming the file); returns them by (iteration, source)."""
    from collapse_ray.core.checkpoint import file_sha256

    root = Path(root)
    listed = {}
    for entry in manifest:
        match = SHARD_PATH.fullmatch(str(entry.get("path", ""))) if isinstance(entry, dict) else None
        if match is None or not isinstance(entry.get("rows"), int) or not isinstance(entry.get("sha256"), str):
            raise ValueError(f"the pool manifest of {root} has a malformed entry {str(entry)[:80]}")
        path = root / entry["path"]
        if not path.is_file():
            raise ValueError(f"{path} is missing: the checkpoint's pool manifest lists it, so a resume "
                             "cannot be exact (restore the file, or start the sweep afresh)")
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as err:  # noqa: BLE001 - any reader error: the file is unusable
            raise ValueError(f"{path} is not a readable Parquet pool shard: {str(err).splitlines()[0]}") from None
        if rows != entry["rows"] or file_sha256(path) != entry["sha256"]:
            raise ValueError(f"{path} differs from the checkpoint's pool manifest ({rows} rows, expected "
                             f"{entry['rows']}, or other content): it changed after the checkpoint")
        listed[(int(match.group(1)), match.group(2))] = entry
    return listed


def check_shards(root: str | Path, chain_ids: Sequence[int]) -> None:
    """Raise ValueError naming the file if the pool folder holds anything but readable
    shards of these chains (a corrupt file, a foreign one, another chain's)."""
    root = Path(root)
    expected = sorted(int(c) for c in chain_ids)
    for path in sorted(root.rglob("*")):
        if path.is_dir() or path.name.startswith("."):
            continue  # hidden: temporaries of an interrupted write, never read
        parts = path.relative_to(root).parts
        if (len(parts) != 3 or not parts[0].startswith("iteration=") or parts[1] not in
                tuple(f"source={s}" for s in SOURCES) or parts[2] != SHARD_NAME):
            raise ValueError(f"{path} is not a pool shard (expected iteration=T/source=S/{SHARD_NAME})")
        try:
            schema = pq.read_schema(path)
        except Exception as err:  # noqa: BLE001 - any reader error: the file is unusable
            raise ValueError(f"{path} is not a readable Parquet pool shard: {str(err).splitlines()[0]}") from None
        if (schema.metadata is None or SHAPES_KEY not in schema.metadata
                or not {"chain", "row"} <= set(schema.names)):
            raise ValueError(f"{path} was not written by collapse_ray's pool (no chain/row columns and shapes)")
        try:
            chains = np.unique(pq.read_table(path, columns=["chain"])["chain"].to_numpy())
        except Exception as err:  # noqa: BLE001 - a footer that reads but data that does not
            raise ValueError(f"{path} is not a readable Parquet pool shard: {str(err).splitlines()[0]}") from None
        if chains.tolist() != expected:
            raise ValueError(f"{path} holds chains {chains.tolist()}, expected {expected}")


def block_rows(table: pa.Table, path: Path, chain_ids: np.ndarray) -> dict[str, np.ndarray]:
    shapes = json.loads(table.schema.metadata[SHAPES_KEY])
    order = np.lexsort((table["row"].to_numpy(), table["chain"].to_numpy()))
    chains_in_file = np.unique(table["chain"].to_numpy())
    if not np.array_equal(chains_in_file, np.sort(chain_ids)):
        raise ValueError(f"{path} holds chains {chains_in_file.tolist()}, expected {sorted(chain_ids.tolist())}")
    # rows are sorted by chain id; restore the pool's chain order
    rank = np.argsort(np.argsort(chain_ids))
    out = {}
    k = table.num_rows // len(chain_ids)
    for name, shape in shapes.items():
        col = table[name].combine_chunks()
        values = from_arrow(col)[order].reshape(len(chain_ids), k, *shape)
        out[name] = values[rank]
    return out


def to_arrow(values: np.ndarray) -> pa.Array:
    if values.ndim == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def from_arrow(col: pa.Array) -> np.ndarray:
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    return col.to_numpy(zero_copy_only=False)


def write_shard(table: pa.Table, path: Path) -> None:
    """Write to a hidden temporary file then rename: readers see all or nothing."""
    with atomic.replacing(path) as tmp:  # (a kill leaves the temporary; remove_stale_temporaries takes care of it)
        pq.write_table(table, tmp)


def iterations_on_disk(root: str | Path) -> list[int]:
    return sorted(int(p.name.split("=", 1)[1]) for p in Path(root).glob("iteration=*") if p.is_dir())


class ShardTarget:
    """Where one (iteration, source) block of a chain's rows goes: the shard file, and
    the `row` id its first row takes (its offset within the iteration's block, as
    write_shards numbers rows). Whoever makes the rows writes them here (ShardWriter),
    so they need not pass through the process that holds the pool."""

    __slots__ = ("root", "iteration", "source", "chain_id", "first_row")

    def __init__(self, root: str | Path, iteration: int, source: str, chain_id: int, first_row: int):
        self.root, self.iteration, self.source = str(root), int(iteration), source
        self.chain_id, self.first_row = int(chain_id), int(first_row)

    @property
    def path(self) -> Path:
        return shard_path(self.root, self.iteration, self.source)

    def __repr__(self) -> str:
        return f"ShardTarget({self.path}, chain {self.chain_id}, first row {self.first_row})"


class ShardWriter:
    """Streams rows of one text-like pool shard (1-D columns) into a hidden temporary
    file and renames it on commit: readers see all of it or none, as write_shards.

        with ShardWriter(target, ("text",)) as shard:
            shard.write({"text": batch})   # batch after batch; memory: one batch
    """

    def __init__(self, target: ShardTarget, columns: Sequence[str], types: dict[str, pa.DataType] | None = None):
        self.target, self.rows = target, 0
        types = types or {}
        self.schema = pa.schema(
            [("chain", pa.int64()), ("row", pa.int64())] + [(c, types.get(c, pa.string())) for c in columns],
            metadata={SHAPES_KEY: json.dumps({c: [] for c in columns})})
        self.path = target.path
        self.tmp = atomic.temporary_for(self.path)
        self._writer = None

    def __enter__(self) -> "ShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.tmp, self.schema)
        return self

    def write(self, columns: dict[str, Sequence]) -> None:
        k = len(next(iter(columns.values())))
        if k == 0:
            return
        start = self.target.first_row + self.rows
        arrays = {"chain": pa.array(np.full(k, self.target.chain_id, np.int64)),
                  "row": pa.array(np.arange(start, start + k, dtype=np.int64))}
        arrays.update({name: pa.array(list(values), type=self.schema.field(name).type)
                       for name, values in columns.items()})
        self._writer.write_table(pa.table(arrays, schema=self.schema))
        self.rows += k

    def __exit__(self, kind, value, traceback) -> None:
        self._writer.close()
        if kind is None and self.rows:
            atomic.commit(self.tmp, self.path)
        else:  # failed, or nothing to write (an empty block has no shard, as in write_shards)
            self.tmp.unlink(missing_ok=True)
