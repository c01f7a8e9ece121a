"""The pool on disk: hive-partitioned Parquet, atomic shards, exact round trip, Ray Dataset."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from collapse_ray.core.pool import ArrayPool
from collapse_ray.core.shards import write_shard
from collapse_ray.text.readers import as_ray_dataset


def filled_pool(chain_ids=(7, 3, 5), d=2, n=4, iterations=3):
    rng = np.random.default_rng(0)
    pool = ArrayPool(list(chain_ids))
    pool.add({"x": rng.standard_normal((len(chain_ids), n, d))}, 0, "real")
    for t in range(1, iterations + 1):
        pool.add({"x": rng.standard_normal((len(chain_ids), n, d))}, t, "synthetic")
    return pool


def test_round_trip_is_exact_and_layout_is_hive(tmp_path):
    pool = filled_pool()
    files = pool.write_shards(tmp_path)
    assert {f.relative_to(tmp_path).parts[:2] for f in files} == {
        ("iteration=0", "source=real"), ("iteration=1", "source=synthetic"),
        ("iteration=2", "source=synthetic"), ("iteration=3", "source=synthetic"),
    }
    assert pool.write_shards(tmp_path) == [], "shards are written once"
    back = ArrayPool.load(tmp_path, [7, 3, 5], up_to_iteration=3)
    assert np.array_equal(back.take(slice(None))["x"], pool.take(slice(None))["x"])
    assert np.array_equal(back.index.iteration, pool.index.iteration)
    assert list(back.source) == list(pool.source)


def test_load_ignores_shards_after_the_checkpoint(tmp_path):
    pool = filled_pool(iterations=3)
    pool.write_shards(tmp_path)
    back = ArrayPool.load(tmp_path, [7, 3, 5], up_to_iteration=1)
    assert back.latest_iteration == 1 and len(back) == 8
    latest = ArrayPool.load(tmp_path, [7, 3, 5], up_to_iteration=2, keep_history=False)
    assert np.array_equal(latest.index.iteration, [2] * 4)


def test_load_refuses_a_shard_of_other_chains(tmp_path):
    filled_pool(chain_ids=(1, 2)).write_shards(tmp_path)
    with pytest.raises(ValueError, match="holds chains"):
        ArrayPool.load(tmp_path, [1, 2, 3], up_to_iteration=3)


def test_atomic_write_leaves_no_partial_file_visible(tmp_path, monkeypatch):
    import pyarrow as pa

    table = pa.table({"a": [1, 2]})
    path = tmp_path / "iteration=0" / "source=real" / "part-0.parquet"

    def broken_write(table, where):
        open(where, "wb").write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken_write)
    with pytest.raises(OSError):
        write_shard(table, path)
    assert not path.exists()  # only a hidden temporary, which readers skip
    assert all(p.name.startswith(".") for p in path.parent.iterdir())


@pytest.mark.ray
def test_pool_reads_as_a_ray_dataset(tmp_path, local_ray):
    pool = filled_pool(chain_ids=(0, 1), d=3, n=5, iterations=2)
    pool.write_shards(tmp_path)
    # a crashed writer's temporary must be invisible to Ray Data too
    (tmp_path / "iteration=1" / "source=synthetic" / ".part-0.parquet.tmp-1").write_bytes(b"junk")
    ds = as_ray_dataset(tmp_path)
    rows = ds.take_all()
    assert len(rows) == 2 * 5 * 3
    assert {r["iteration"] for r in rows} == {0, 1, 2} and all(isinstance(r["iteration"], int) for r in rows)
    assert {r["source"] for r in rows} == {"real", "synthetic"}
    synth = ds.filter(expr="iteration == 2").take_all()
    got = np.array([r["x"] for r in sorted(synth, key=lambda r: (r["chain"], r["row"]))])
    assert np.allclose(got, pool.rows_of(2)["x"].reshape(-1, 3))


def test_an_empty_real_block_still_defines_the_columns():
    """A value-grid cell with no real rows starts from an empty pool."""
    pool = ArrayPool([0])
    pool.add({"text": np.empty((1, 0), dtype=object)}, iteration=0, source="real")
    assert len(pool) == 0 and pool.take(slice(0, 0))["text"].shape == (1, 0)
    pool.add({"text": np.array([["a", "b"]], dtype=object)}, iteration=1, source="synthetic")
    assert pool.rows_of(1)["text"].tolist() == [["a", "b"]]
