"""(A)'s discrete protocol: replace until one outcome is left, the chain loop's stopping
rule, and the Wright-Fisher time to collapse (collapse_ray.theory) against Monte Carlo.

Tolerances: a Monte-Carlo mean of S stopping times is within 4 standard errors of an
exact value; against the diffusion approximation the allowance adds its finite-n error,
bounded by theory.discrete_collapse_time_relative_error_bound (about twice the exact
K = 2 error). Fixed seeds, so nothing flakes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from collapse_ray import theory
from collapse_ray.core.loop import is_finished, run_chain
from collapse_ray.core.chain import ChainConfig
from collapse_ray.tasks import DiscreteTask
from collapse_ray.tasks.discrete import COLLAPSED_ENTROPY

from .test_loop import Crash, ListSink, crash_at

STOPPING = DiscreteTask(n_outcomes=10, stop_when_collapsed=True)


def replace_until_collapse(task, n, seeds, cap_per_n=60, **kw):
    cfg = ChainConfig(workflow="replace", n_real=n, n_iterations=cap_per_n * n, **kw).resolved()
    return run_chain(task, cfg, seeds)


class Counting:
    """A real discrete task that counts the chains each sampling call is asked for."""

    def __init__(self, inner):
        self.inner, self.sampled = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample_statistics(self, model, n, rngs, context=None):
        self.sampled.append(len(rngs))
        return self.inner.sample_statistics(model, n, rngs, context)


# -- the closed form ------------------------------------------------------------------
def test_closed_form_against_the_exact_two_outcome_chain():
    ns = [10, 30, 100, 300, 1000]
    errors = [theory.wright_fisher_two_outcomes_exact(n) / theory.discrete_replace_collapse_time(2, n) - 1 for n in ns]
    assert all(-theory.discrete_collapse_time_relative_error_bound(n) < e < 0 for n, e in zip(ns, errors))
    assert np.all(np.diff(np.abs(errors)) < 0)  # the diffusion becomes exact as n grows
    assert theory.discrete_replace_collapse_time(2, 1) == pytest.approx(2 * math.log(2))
    # 2n (K-1) ln(K/(K-1)) from the uniform start is -2n sum (1-x) ln(1-x) at x = 1/K, -> 2n
    assert theory.discrete_replace_collapse_time(10, 100) == pytest.approx(
        theory.discrete_replace_collapse_time_from(np.full(10, 0.1), 100))
    assert theory.discrete_replace_collapse_time(10**6, 100) == pytest.approx(200, rel=1e-5)


def test_replace_collapse_time_matches_the_exact_two_outcome_chain():
    n, seeds = 30, 8000
    stopped = replace_until_collapse(DiscreteTask(n_outcomes=2, stop_when_collapsed=True), n, range(seeds)).stopped_at
    assert (stopped > 0).all()
    se = stopped.std(ddof=1) / math.sqrt(seeds)
    assert abs(stopped.mean() - theory.wright_fisher_two_outcomes_exact(n)) < 4 * se


@pytest.mark.parametrize("n_outcomes", [10, 100])
def test_replace_collapse_time_matches_the_diffusion(n_outcomes):
    n, seeds = 300, 2000
    task = DiscreteTask(n_outcomes=n_outcomes, stop_when_collapsed=True, record="log_spaced")
    stopped = replace_until_collapse(task, n, range(seeds)).stopped_at
    assert (stopped > 0).all()
    expected = theory.discrete_replace_collapse_time(n_outcomes, n)
    se = stopped.std(ddof=1) / math.sqrt(seeds)
    allowance = 4 * se + theory.discrete_collapse_time_relative_error_bound(n) * expected
    assert abs(stopped.mean() - expected) < allowance
    assert allowance < 0.08 * expected  # informative: wrong by 2n vs 2n ln 2 would fail


# -- the stopping rule in the loop ---------------------------------------------------
def test_a_chain_stops_at_the_first_iteration_with_one_outcome_left():
    result = replace_until_collapse(STOPPING, 20, range(30))
    table, stopped = result.table, result.stopped_at
    assert (stopped > 0).all() and len(np.unique(stopped)) > 5
    last = table.groupby("seed").iteration.max().to_numpy()
    assert np.array_equal(last, stopped)  # each chain's rows end where it stopped
    for seed, rows in table.groupby("seed"):
        entropy = rows.entropy.to_numpy()
        assert entropy[-1] < COLLAPSED_ENTROPY and (entropy[:-1] >= COLLAPSED_ENTROPY).all()
        assert rows.n_zero_mass.iloc[-1] == 9
        assert np.allclose(rows.fraction_of_initial_entropy, entropy / math.log(10))
    # the trial ran until its last chain stopped, not to the cap
    assert len(result.iteration_seconds) == stopped.max() < 60 * 20


def test_stopped_chains_leave_the_batch_and_cost_nothing():
    task = Counting(STOPPING)
    result = replace_until_collapse(task, 20, range(30))
    stopped = result.stopped_at
    # a chain samples at every iteration up to the one it stopped at (its last fit's
    # samples are drawn before it leaves), the last chains to stop not even then
    assert sum(task.sampled) == np.minimum(stopped, stopped.max() - 1).sum()
    assert task.sampled[0] == 30 and task.sampled[-1] == (stopped == stopped.max()).sum()


@pytest.mark.parametrize("workflow", ["replace", "accumulate_subsample"])
def test_a_seed_stops_identically_alone_or_in_a_batch(workflow):
    # accumulate_subsample runs on the rows path (pool padded for stopped chains);
    # with n = 3 and K = 2 a subsample of one outcome alone happens soon
    task = DiscreteTask(n_outcomes=2 if workflow != "replace" else 10, stop_when_collapsed=True)
    cfg = ChainConfig(workflow=workflow, n_real=3 if workflow != "replace" else 15, n_iterations=400).resolved()
    batch = run_chain(task, cfg, range(12))
    assert (batch.stopped_at > 0).all() and len(np.unique(batch.stopped_at)) > 3
    for i, seed in enumerate([2, 7, 11]):
        alone = run_chain(task, cfg, [seed])
        assert alone.stopped_at[0] == batch.stopped_at[seed]
        pd.testing.assert_frame_equal(alone.table, batch.table[batch.table.seed == seed].reset_index(drop=True))


def test_the_cap_ends_chains_that_have_not_collapsed():
    result = run_chain(STOPPING, ChainConfig(workflow="replace", n_real=200, n_iterations=30).resolved(), range(5))
    assert (result.stopped_at == 0).all()
    assert result.table.groupby("seed").iteration.max().eq(30).all()
    # accumulate keeps every real outcome: it never stops
    acc = run_chain(STOPPING, ChainConfig(workflow="accumulate", n_real=10, n_iterations=200).resolved(), range(5))
    assert (acc.stopped_at == 0).all() and (acc.table.entropy > 0.5).all()


def test_the_sink_sees_stopped_chains_at_their_end_state():
    sink = ListSink()
    result = run_chain(STOPPING, ChainConfig(workflow="replace", n_real=10, n_iterations=500).resolved(), range(8),
                       sink=sink)
    last = result.stopped_at.max()
    assert sink.logged == list(range(1, last + 1))  # the trial's checkpoint at its last iteration logs all
    assert sink.values[last] == np.inf  # every chain lost outcomes: the carried-forward test loss


def test_resume_with_stopped_chains_loses_and_duplicates_nothing(tmp_path):
    cfg = ChainConfig(workflow="replace", n_real=12, n_iterations=300, checkpoint_every=10).resolved()
    reference = run_chain(STOPPING, cfg, range(10))
    crash = int(np.sort(reference.stopped_at)[4]) + 3  # some chains have stopped, others run
    crash = crash - crash % 10 + 5
    assert crash < reference.stopped_at.max()
    sink = ListSink()
    with pytest.raises(Crash):
        run_chain(STOPPING, cfg, range(10), checkpoint_dir=tmp_path, sink=sink, progress=crash_at(crash))
    resumed = run_chain(STOPPING, cfg, range(10), checkpoint_dir=tmp_path, sink=sink)
    assert resumed.resumed_from == crash - 5
    assert sink.logged == list(range(1, reference.stopped_at.max() + 1))
    assert np.array_equal(resumed.stopped_at, reference.stopped_at)
    pd.testing.assert_frame_equal(resumed.table, reference.table)
    assert is_finished(tmp_path, cfg.n_iterations)  # all stopped: finished before the cap
    again = run_chain(STOPPING, cfg, range(10), checkpoint_dir=tmp_path)
    assert again.iteration_seconds == []
    pd.testing.assert_frame_equal(again.table, reference.table)


def test_log_spaced_records_keep_stops_and_about_a_hundred_per_decade():
    task = DiscreteTask(n_outcomes=10, stop_when_collapsed=True, record="log_spaced")
    result = replace_until_collapse(task, 1000, range(4))
    kept = np.unique(result.table.iteration)
    assert set(range(1, 101)) <= set(kept)
    assert set(result.stopped_at) <= set(kept)
    beyond = kept[(kept > 100) & (kept <= 1000)]
    assert 95 <= len(beyond) <= 105 + 4
    everything = replace_until_collapse(DiscreteTask(n_outcomes=10, stop_when_collapsed=True), 1000, range(4))
    assert np.array_equal(everything.stopped_at, result.stopped_at)  # what is kept changes no draw
    kept_rows = everything.table[everything.table.iteration.isin(kept)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept_rows, result.table)


def test_packed_support_equals_dense_counts():
    # after collapse-driven packing, merge (accumulate) and rows must still name outcomes
    task = DiscreteTask(n_outcomes=50)
    rngs = [np.random.default_rng(s) for s in range(3)]
    counts = task.sample_statistics(task.fit_statistics(task.statistics({"x": np.stack([np.arange(50) % 7] * 3)})), 40, rngs)
    assert counts.labels is not None and counts.counts.shape[1] <= 7
    dense = counts.dense(50)
    assert (dense.sum(axis=1) == 40).all() and (dense[:, 7:] == 0).all()
    merged = task.merge(counts, counts)
    assert np.array_equal(merged.counts, 2 * dense)
    rows = task.sample(task.fit_statistics(counts), 10_000, rngs)["x"]
    assert np.isin(rows, np.arange(7)).all()
    freq = np.stack([np.bincount(r, minlength=50) for r in rows]) / 10_000
    assert np.abs(freq - dense / 40).max() < 0.03


@pytest.mark.ray
def test_the_small_collapse_sweep_end_to_end(tmp_path, local_ray, capsys):
    """sweeps/discrete_small.yaml through Ray Tune, MLflow, the results table and the
    figures: every chain's rows end at its collapse, and MLflow holds each iteration the
    trial ran exactly once."""
    import importlib.util
    from pathlib import Path

    from collapse_ray import cli
    from collapse_ray.sweep.spec import load_spec

    from .test_sweep_ray import metric_steps

    root = Path(__file__).parent.parent
    spec = load_spec(root / "sweeps" / "discrete_small.yaml")
    out = tmp_path / "results"
    assert cli.main(["run", str(root / "sweeps" / "discrete_small.yaml"), "--out", str(out)]) == 0
    path = tmp_path / "discrete_small.csv"
    assert cli.main(["results", "discrete_small", "--out", str(path), "--results-dir", str(out)]) == 0
    table = pd.read_csv(path)
    assert not table.duplicated(["run_key", "seed", "iteration"]).any()
    last = table.sort_values("iteration").groupby(["run_key", "seed"]).tail(1)
    assert len(last) == len(spec.seeds) * len(spec.points)
    assert (last.entropy < COLLAPSED_ENTROPY).all()  # every chain collapsed, before its cap
    assert len(table) == last.iteration.sum()  # one row per iteration each chain ran
    steps = metric_steps(f"sqlite:///{out / 'mlflow.db'}", "discrete_small", "fraction_of_initial_entropy")
    ends = last.groupby("run_key").iteration.max()
    assert {run.rsplit("__seeds", 1)[0]: v[-1] for run, v in steps.items()} == ends.to_dict()  # one trial each
    assert all(v == list(range(1, v[-1] + 1)) for v in steps.values())
    module_spec = importlib.util.spec_from_file_location("figures", root / "analysis" / "figures.py")
    figures = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(figures)
    assert figures.main([str(path), "--out", str(tmp_path / "figs")]) == 0
    assert {p.name for p in (tmp_path / "figs").glob("*.png")} == {"discrete_entropy.png", "discrete_collapse_time.png"}
