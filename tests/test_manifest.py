"""A resume is exact or refused: the checkpoint lists the pool shards it depends on
(row counts and sha256), so a shard folder deleted or a bit flipped after the
checkpoint is refused with one line naming the file, before anything runs. And the
chain state is data only (JSON + .npy), rebuilt generically, so any field survives."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from collapse_ray.core import checkpoint as state_file
from collapse_ray.core.chain_state import ChainState, load_state
from collapse_ray.core.loop import CHECKPOINT_FILE, check_checkpoint, run_chain
from collapse_ray.core.chain import ChainConfig
from collapse_ray.tasks import GaussianTask, KDETask
from tests.helpers import WithoutStatistics

SEEDS = [0, 1, 2]


class Stop(Exception):
    pass


def interrupted_chain(folder, workflow: str, stop_after: int = 4, n_iterations: int = 8):
    """A chain checkpointed every iteration and stopped after `stop_after` (a killed
    trial, in-process), and the uninterrupted reference table."""
    task = WithoutStatistics(GaussianTask(dim=3))  # rows, not statistics: the pool matters
    chain = ChainConfig(workflow=workflow, n_real=100, n_iterations=n_iterations, checkpoint_every=1).resolved()

    def stop(t, total):
        if t == stop_after:
            raise Stop

    with pytest.raises(Stop):
        run_chain(task, chain, SEEDS, checkpoint_dir=folder, progress=stop)
    reference = run_chain(task, chain, SEEDS, checkpoint_dir=folder.parent / "reference").table
    return task, chain, reference


def flip_one_bit_in_data(path):
    """Flip a bit inside the first column chunk's data (not the footer): the file still
    reads, with one value changed."""
    meta = pq.read_metadata(path)
    group = meta.row_group(0)
    column = group.column(group.num_columns - 1)
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    offset = start + column.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("workflow", ["accumulate_subsample", "replace"])
def test_an_intact_pool_resumes_exactly(tmp_path, workflow):
    task, chain, reference = interrupted_chain(tmp_path / "chain", workflow)
    check_checkpoint(tmp_path / "chain", SEEDS)
    resumed = run_chain(task, chain, SEEDS, checkpoint_dir=tmp_path / "chain")
    assert resumed.resumed_from == 4
    pd.testing.assert_frame_equal(resumed.table, reference)


@pytest.mark.parametrize("workflow", ["accumulate_subsample", "replace"])
def test_a_deleted_shard_folder_is_refused_naming_the_file(tmp_path, workflow):
    import shutil

    task, chain, _ = interrupted_chain(tmp_path / "chain", workflow)
    listed = json.loads((tmp_path / "chain" / CHECKPOINT_FILE).read_text())["pool"]
    victim = listed[-1]["path"].split("/")[0]  # the newest iteration the pool holds
    shutil.rmtree(tmp_path / "chain" / "pool" / victim)
    for attempt in (lambda: check_checkpoint(tmp_path / "chain", SEEDS),
                    lambda: run_chain(task, chain, SEEDS, checkpoint_dir=tmp_path / "chain")):
        with pytest.raises(ValueError, match=f"{victim}/source=.*part-0.parquet is missing"):
            attempt()


def test_a_flipped_bit_in_a_shard_is_refused_naming_the_file(tmp_path):
    task, chain, _ = interrupted_chain(tmp_path / "chain", "accumulate_subsample")
    path = tmp_path / "chain" / "pool" / "iteration=2" / "source=synthetic" / "part-0.parquet"
    flip_one_bit_in_data(path)
    assert pq.read_table(path).num_rows > 0  # still readable Parquet: only the hash can tell
    for attempt in (lambda: check_checkpoint(tmp_path / "chain", SEEDS),
                    lambda: run_chain(task, chain, SEEDS, checkpoint_dir=tmp_path / "chain")):
        with pytest.raises(ValueError, match="iteration=2/source=synthetic/part-0.parquet differs from the checkpoint"):
            attempt()


def test_chain_state_round_trips_as_data_only(tmp_path):
    """Every kind of value a ChainState field may hold comes back equal, generators included
    (they continue the same stream), from files that are JSON and .npz only."""
    rng = np.random.Generator(np.random.SFC64(7))
    rng.random(3)
    pcg = np.random.default_rng(3)
    stats = {"count": 5, "mean": np.arange(6.0).reshape(2, 3), "pair": (np.int64(2), np.float32(0.5)),
             "nested": [None, {"a": np.array([True, False])}], "nan": float("nan"), "big": 2**70}
    state = ChainState(iteration=3, rngs=[rng, pcg], stats=stats, records=[(1, {"test_loss": np.array([0.1, 0.2])})])
    state_file.save(tmp_path, "c.json", state, {"pool": []}, tag="t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "state-t.npz"]
    back, _ = state_file.load(tmp_path / "c.json")
    assert isinstance(back, ChainState) and back.iteration == 3
    for field in dataclasses.fields(ChainState):  # a field added later is covered too
        assert type(getattr(back, field.name)) is type(getattr(state, field.name)), field.name
    assert [g.random() for g in back.rngs] == [g.random() for g in state.rngs]
    np.testing.assert_array_equal(back.stats["mean"], stats["mean"])
    assert back.stats["pair"] == (2, 0.5) and type(back.stats["pair"][1]) is np.float32
    assert back.stats["nested"][1]["a"].tolist() == [True, False] and back.stats["big"] == 2**70
    assert np.isnan(back.stats["nan"]) and back.records[0][0] == 1 and isinstance(back.records[0], tuple)


def test_task_statistics_survive_a_checkpoint(tmp_path):
    """A statistics-path chain (KDE carries a dataclass with a score cache) resumes
    bit-for-bit from the data-only checkpoint."""
    chain = ChainConfig(workflow="accumulate", n_real=60, n_iterations=6, checkpoint_every=2).resolved()

    def stop(t, total):
        if t == 4:
            raise Stop

    with pytest.raises(Stop):
        run_chain(KDETask(), chain, SEEDS, checkpoint_dir=tmp_path / "chain", progress=stop)
    assert type(load_state(tmp_path / "chain").stats).__name__ == "KDEStats"
    resumed = run_chain(KDETask(), chain, SEEDS, checkpoint_dir=tmp_path / "chain").table
    pd.testing.assert_frame_equal(resumed, run_chain(KDETask(), chain, SEEDS).table)


def test_a_value_the_format_cannot_hold_is_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match="cannot hold"):
        state_file.save(tmp_path, "c.json", ChainState(iteration=1, rngs=[], stats=object(), records=[]), {"pool": []}, tag="t")
    with pytest.raises(TypeError, match="arrays of Python objects"):
        state_file.save(tmp_path, "c.json", ChainState(iteration=1, rngs=[], stats=np.array([{}]), records=[]), {"pool": []}, tag="t")
