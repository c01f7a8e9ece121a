"""The chain loop: batch invariance, the statistics path, and exactly-once resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from collapse_ray.core.loop import run_chain
from collapse_ray.core.chain import ChainConfig
from collapse_ray.tasks import GaussianTask, KDETask

from .helpers import WithoutStatistics

WORKFLOWS = ["replace", "accumulate", "accumulate_subsample"]
TASK = GaussianTask(dim=3, n_test=100)


def chain(workflow, **kw):
    return ChainConfig(workflow=workflow, n_real=8, n_iterations=10, **kw).resolved()


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_a_seed_gives_the_same_chain_alone_or_in_a_batch(workflow):
    alone = run_chain(TASK, chain(workflow), [5]).table
    batch = run_chain(TASK, chain(workflow), range(8)).table
    pd.testing.assert_frame_equal(
        alone.reset_index(drop=True), batch[batch.seed == 5].reset_index(drop=True), rtol=1e-10
    )


@pytest.mark.parametrize("workflow, knobs", [("replace", {}), ("accumulate", {}), ("fresh_data", {}),
                                             ("accumulate", {"n_fresh_real": 5})])
def test_merged_statistics_equal_refitting_the_whole_training_set(workflow, knobs, tmp_path):
    # persist_pool makes the statistics path sample rows, so both see the same draws
    fast = run_chain(TASK, chain(workflow, persist_pool=True, **knobs), range(6), checkpoint_dir=tmp_path).table
    slow = run_chain(WithoutStatistics(TASK), chain(workflow, **knobs), range(6)).table
    pd.testing.assert_frame_equal(fast, slow, rtol=1e-9)


@pytest.mark.parametrize("workflow, knobs", [("fresh_data", {}), ("iterative_retraining", {}), ("real_fraction", {}),
                                             ("accumulate_subsample", {"n_fresh_real": 3})])
def test_new_policies_run_and_resume_exactly(workflow, knobs, tmp_path):
    # accumulate_subsample with fresh real rows selects by position from a pool holding
    # two blocks per iteration: the reloaded pool must keep their order
    cfg = chain(workflow, checkpoint_every=4, **knobs)
    reference = run_chain(TASK, cfg, range(3)).table
    with pytest.raises(Crash):
        run_chain(TASK, cfg, range(3), checkpoint_dir=tmp_path, progress=crash_at(6))
    resumed = run_chain(TASK, cfg, range(3), checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 4
    pd.testing.assert_frame_equal(resumed.table, reference)


class ListSink:
    """Records every logged iteration, like a tracking store would."""

    def __init__(self, fail_on_call=None):
        self.logged: list[int] = []
        self.values: dict[int, float] = {}
        self.calls = 0
        self.fail_on_call = fail_on_call

    def last_logged_iteration(self):
        return max(self.logged, default=0)

    def log_iterations(self, seeds, records):
        self.calls += 1
        for t, metrics in records:
            self.logged.append(t)
            self.values[t] = float(np.mean(metrics["test_loss"]))
        if self.calls == self.fail_on_call:
            self.fail_on_call = None
            raise RuntimeError("crash after logging, before the checkpoint")


class Crash(Exception):
    pass


def crash_at(iteration):
    def progress(t, total):
        if t == iteration:
            raise Crash(f"killed after iteration {t}")

    return progress


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_resume_after_a_crash_loses_and_duplicates_nothing(tmp_path, workflow):
    cfg = chain(workflow, checkpoint_every=3)
    reference = run_chain(TASK, cfg, range(4)).table

    sink = ListSink()
    with pytest.raises(Crash):
        run_chain(TASK, cfg, range(4), checkpoint_dir=tmp_path, sink=sink, progress=crash_at(5))
    assert sink.logged == [1, 2, 3]
    result = run_chain(TASK, cfg, range(4), checkpoint_dir=tmp_path, sink=sink)
    assert result.resumed_from == 3
    assert sink.logged == list(range(1, 11)), "every iteration logged exactly once"
    pd.testing.assert_frame_equal(result.table, reference)


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_crash_between_logging_and_checkpoint_is_not_logged_twice(tmp_path, workflow):
    cfg = chain(workflow, checkpoint_every=3)
    reference = run_chain(TASK, cfg, range(4)).table
    sink = ListSink(fail_on_call=2)  # logs 4..6, then dies before checkpoint 6
    with pytest.raises(RuntimeError):
        run_chain(TASK, cfg, range(4), checkpoint_dir=tmp_path, sink=sink)
    assert sink.logged == [1, 2, 3, 4, 5, 6]
    result = run_chain(TASK, cfg, range(4), checkpoint_dir=tmp_path, sink=sink)
    assert result.resumed_from == 3  # recomputes 4..6 from checkpoint 3 ...
    assert sink.logged == list(range(1, 11))  # ... without logging them again
    pd.testing.assert_frame_equal(result.table, reference)
    expected = reference.groupby("iteration").test_loss.mean()
    assert np.allclose([sink.values[t] for t in range(1, 11)], expected)


def test_finished_chain_is_not_rerun(tmp_path):
    cfg = chain("replace")
    first = run_chain(TASK, cfg, [0], checkpoint_dir=tmp_path)
    again = run_chain(TASK, cfg, [0], checkpoint_dir=tmp_path)
    assert again.resumed_from == 10 and again.iteration_seconds == []
    pd.testing.assert_frame_equal(first.table, again.table)


def test_persist_pool_writes_every_iteration(tmp_path):
    from collapse_ray.core.shards import iterations_on_disk

    run_chain(TASK, chain("replace", persist_pool=True, checkpoint_every=0), range(2), checkpoint_dir=tmp_path)
    # real + samples of fits 1..10: the last fit's too, so the kept pool lets the chain grow
    assert list(iterations_on_disk(tmp_path / "pool")) == list(range(0, 11))


class PictureSink(ListSink):
    """Also records the pictures a task draws, per iteration, as a tracking store would
    keep them (a rewrite replaces the file)."""

    def __init__(self):
        super().__init__()
        self.pictures: dict[int, dict[str, bytes]] = {}
        self.writes = 0

    def log_artifacts(self, iteration, files):
        self.writes += 1
        self.pictures[iteration] = dict(files)


class Drawing(GaussianTask):
    """The Gaussian task with a 'picture' of each fit: its mean vectors as text."""

    def iteration_artifacts(self, model, context):
        return {"samples.png": np.asarray(model.mean).round(12).tobytes()}


def test_iteration_pictures_are_drawn_once_per_iteration_and_identically_on_resume(tmp_path):
    task = Drawing(dim=3, n_test=100)
    cfg = chain("replace", checkpoint_every=3)
    whole = PictureSink()
    run_chain(task, cfg, range(4), sink=whole)
    assert sorted(whole.pictures) == list(range(1, 11)) and whole.writes == 10

    sink = PictureSink()
    with pytest.raises(Crash):
        run_chain(task, cfg, range(4), checkpoint_dir=tmp_path, sink=sink, progress=crash_at(5))
    run_chain(task, cfg, range(4), checkpoint_dir=tmp_path, sink=sink)
    assert sink.pictures == whole.pictures, "a resumed chain draws the same pictures"
    assert sink.writes == 10 + 2  # iterations 4 and 5 were drawn before the crash and redrawn after


@pytest.mark.parametrize("task", [TASK, KDETask(dataset="moons", bandwidth=0.5)], ids=["gaussian", "kde"])
@pytest.mark.parametrize("workflow", ["replace", "accumulate", "fresh_data"])
def test_a_finished_statistics_chain_runs_on_to_more_iterations_exactly(task, workflow, tmp_path):
    """Growing a sweep: a finished statistics-path chain continues from its checkpoint and
    gives the longer chain's table bit for bit, without recomputing its iterations (KDE:
    its carried test-set sums too, restored with the checkpoint)."""
    short = ChainConfig(workflow=workflow, n_real=40, n_iterations=4, checkpoint_every=0).resolved()
    longer = ChainConfig(workflow=workflow, n_real=40, n_iterations=7, checkpoint_every=0).resolved()
    run_chain(task, short, range(3), checkpoint_dir=tmp_path)
    grown = run_chain(task, longer, range(3), checkpoint_dir=tmp_path)
    assert grown.resumed_from == 4 and len(grown.iteration_seconds) == 3  # only iterations 5-7 ran
    pd.testing.assert_frame_equal(grown.table, run_chain(task, longer, range(3)).table, check_exact=True)


def test_a_finished_row_path_chain_refuses_to_run_on_without_its_pool(tmp_path):
    row_path = ChainConfig(workflow="accumulate_subsample", n_real=8, n_iterations=3).resolved()
    run_chain(TASK, row_path, range(2), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint\.json: the chain finished at iteration 3 and keeps no pool"):
        run_chain(TASK, ChainConfig(workflow="accumulate_subsample", n_real=8, n_iterations=5).resolved(), range(2),
                  checkpoint_dir=tmp_path)


@pytest.mark.parametrize("task", [TASK, WithoutStatistics(TASK)], ids=["statistics", "rows"])
def test_a_finished_chain_with_its_pool_kept_runs_on_exactly(task, tmp_path):
    """chain.persist_pool keeps the pool, so a finished row-path chain can grow too."""
    def config(n):
        return ChainConfig(workflow="accumulate_subsample", n_real=8, n_iterations=n, persist_pool=True).resolved()

    run_chain(task, config(3), range(2), checkpoint_dir=tmp_path / "grown")
    grown = run_chain(task, config(5), range(2), checkpoint_dir=tmp_path / "grown")
    assert grown.resumed_from == 3 and len(grown.iteration_seconds) == 2
    fresh = run_chain(task, config(5), range(2), checkpoint_dir=tmp_path / "fresh")
    pd.testing.assert_frame_equal(grown.table, fresh.table, check_exact=True)


def test_a_chain_every_seed_of_which_stopped_is_finished_when_run_again(tmp_path):
    """A stopping rule ends a chain before its cap: running it again (a retried trial)
    returns its table, it does not refuse for want of a pool."""
    from collapse_ray.tasks import DiscreteTask

    task = DiscreteTask(n_outcomes=3, stop_when_collapsed=True)
    config = ChainConfig(workflow="replace", n_real=4, n_iterations=500).resolved()
    first = run_chain(task, config, range(4), checkpoint_dir=tmp_path)
    assert first.table.iteration.max() < 500  # all four stopped early
    again = run_chain(task, config, range(4), checkpoint_dir=tmp_path)
    pd.testing.assert_frame_equal(again.table, first.table, check_exact=True)
