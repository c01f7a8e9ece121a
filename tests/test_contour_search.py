"""The value grid's adaptive search (collapse_ray/sweep/contour_search.py, level_set.py), without
Ray: the GP and the acquisitions on known functions, the search against linear regression's
exact contour (the closed form as the truth, per-seed losses scattered around it), its state
file's exact resume, and the refusals of bad `search:` blocks and state files.
tests/test_contour_sweep.py runs it through Ray Tune and MLflow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from collapse_ray import level_set, theory
from collapse_ray.sweep.contour_search import (STATE_FILE, ContourSearch, SearchConfig, ValueGridCells, initial_batch,
                                         observe)
from collapse_ray.sweep.spec import load_spec, parse_spec
from collapse_ray.sweep.plan import check_growable
from collapse_ray.validation import SpecError

ROOT = Path(__file__).resolve().parent.parent


# -- the GP and the acquisitions on known functions --------------------------------------
def _plane(x: np.ndarray) -> np.ndarray:
    return x[:, 0] + x[:, 1] - 1.0  # its zero set: the anti-diagonal


def test_gp_recovers_the_sign_of_a_smooth_function_from_noisy_samples():
    rng = np.random.default_rng(0)
    train = rng.uniform(size=(30, 2))
    noise_sd = 0.05
    gp = level_set.fit(train, _plane(train) + noise_sd * rng.standard_normal(30), np.full(30, noise_sd**2))
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 21), np.linspace(0, 1, 21)), -1).reshape(-1, 2)
    mean, sd = gp.predict(grid)
    truth = _plane(grid)
    clear = np.abs(truth) > 0.15  # 3 noise sd from the level set: the sign must be right
    assert (np.sign(mean[clear]) == np.sign(truth[clear])).all()
    # calibrated: the truth within 3 posterior sd nearly everywhere inside the data's hull
    assert np.mean(np.abs(mean - truth) <= 3 * sd + 1e-9) >= 0.95
    # far from every observation the posterior is wider than at one
    _, sd_at = gp.predict(train[:1])
    _, sd_far = gp.predict(np.array([[3.0, 3.0]]))
    assert sd_far[0] > 5 * sd_at[0]


def test_a_cells_own_value_carries_the_roughness_and_a_cell_that_ran_keeps_its_own_measurement():
    """On a rough surface (a smooth plane plus each point's own deviation, sd 0.3) the value
    of a point not observed is predicted with the roughness in its spread, not as the smooth
    latent's, and an observed point is decided by its own measurement (se 0.01), not pulled
    to the plane's side."""
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 9), np.linspace(0, 1, 9)), -1).reshape(-1, 2)
    value = _plane(grid) + 0.3 * rng.standard_normal(len(grid))
    seen = rng.permutation(len(grid))[:40]
    unseen = np.setdiff1d(np.arange(len(grid)), seen)
    gp = level_set.fit(grid[seen], value[seen] + 0.01 * rng.standard_normal(40), np.full(40, 0.01**2))
    assert 0.3**2 / 3 < gp.expected_nugget < 0.3**2 * 3  # the roughness, found from the data
    mean, sd = gp.predict(grid[unseen], cell_value=True)
    _, latent_sd = gp.predict(grid[unseen])
    assert (sd > latent_sd).all()
    # calibrated for the cells' own values: within 2 sd about as often as a normal is (41 cells)
    assert np.mean(np.abs(value[unseen] - mean) <= 2 * sd) >= 0.85
    # a cell that ran: its own measurement, to within a few of its standard errors
    own, own_sd = gp.predict(grid[seen], cell_value=True)
    assert np.max(np.abs(own - value[seen])) < 0.05 and (own_sd < 0.02).all()
    p_above = gp.prob_above(grid[seen], cell_value=True)
    clear = np.abs(value[seen]) > 0.05
    assert ((p_above > 0.5) == (value[seen] > 0))[clear].all()


def test_gp_fit_is_a_function_of_its_inputs():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(12, 2)), rng.standard_normal(12)
    a, b = level_set.fit(x, y, np.full(12, 0.01)), level_set.fit(x.copy(), y.copy(), np.full(12, 0.01))
    assert a.log_likelihood == b.log_likelihood and np.array_equal(a.alpha, b.alpha)
    assert np.array_equal(a.length_scales, b.length_scales)


def test_straddle_and_lse_pick_points_near_the_level_set_and_batches_spread():
    rng = np.random.default_rng(2)
    train = rng.uniform(size=(8, 2))
    gp = level_set.fit(train, _plane(train), np.full(8, 1e-4))
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 15), np.linspace(0, 1, 15)), -1).reshape(-1, 2)
    mean, sd = gp.predict(grid)
    score = level_set.straddle(mean, sd, 1.96)
    best = grid[int(np.argmax(score))]
    assert abs(_plane(best[None])[0]) < 0.4  # not in a corner far from the level set
    # Bryan et al.'s rule: a point whose interval does not hold 0 scores below one whose does
    holds = np.abs(mean) < 1.96 * sd
    if holds.any() and (~holds).any():
        assert score[holds].max() > score[~holds].max()
    # LSE: intervals only narrow; a classified point (interval off 0) has no ambiguity
    lower, upper = level_set.lse_intervals(mean, sd, 1.96, np.full(len(grid), -np.inf), np.full(len(grid), np.inf))
    lower2, upper2 = level_set.lse_intervals(mean, sd * 0.5, 1.96, lower, upper)
    assert (lower2 >= lower).all() and (upper2 <= upper).all()
    assert (level_set.lse_ambiguity(lower2, upper2)[(lower2 > 0) | (upper2 < 0)] < 0).all()
    # a batch conditions on its own picks: four distinct points, not one point four times
    batch = level_set.greedy_batch(lambda m, s: level_set.straddle(m, s, 1.96), mean, gp.covariance(grid), 1e-4,
                                   np.ones(len(grid), bool), 4)
    assert len(set(batch)) == 4 and batch[0] == int(np.argmax(score))
    # a budget caps the batch, with costs that depend on the picks so far
    capped = level_set.greedy_batch(lambda m, s: level_set.straddle(m, s, 1.96), mean, gp.covariance(grid), 1e-4,
                                    np.ones(len(grid), bool), 4, lambda picked: np.full(len(grid), 2.0), budget=5)
    assert len(capped) == 2


def test_observation_is_paired_and_keeps_the_sign_of_the_value():
    base = {(0, s): 2.0 + 0.1 * s for s in range(5)}
    worse = {k: v + 0.3 for k, v in base.items()}
    better = {k: v * 0.5 for k, v in base.items()}
    up, down = observe(worse, base, 10, 10), observe(better, base, 10, 10)
    assert up.z > 0 and up.value == pytest.approx(0.3) and up.value_se == pytest.approx(0.0, abs=1e-12)
    assert down.z < 0 and down.units == 5
    # no common finite unit, or a zero baseline: no observation
    assert observe({(1, 0): 1.0}, base, 10, 10) is None
    assert observe(worse, {k: 0.0 for k in base}, 10, 10) is None


# -- the search against linear regression's exact contour ----------------------------------
D, M, SIGMA2 = 5, 30, 1.0
N_REAL = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384)
SYNTHETIC = (0, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def regression_cells(n_real=N_REAL, synthetic=SYNTHETIC, pools=1) -> ValueGridCells:
    pairs = [(n, s) for n in n_real for s in synthetic]
    jobs = tuple(tuple(f"n{n}_s{s}_p{p}" for p in range(pools)) for n, s in pairs)
    return ValueGridCells(np.array([n for n, _ in pairs]), np.array([s for _, s in pairs]), jobs,
                          {job: p for cell in jobs for p, job in enumerate(cell)})


def regression_losses(n_seeds: int = 40, spread: float = 0.05):
    """Per-seed test losses of a job "n{n}_s{s}_p{pool}" around linear regression's exact
    E[L(n, s)]: a factor per world (seed and pool) that every cell of the world shares, as
    the real cells share their real rows, times a factor of the cell's own (`spread`).
    (Real fits of the whole grid cost too much for the fast lane: benchmarks/adaptive_search.py
    runs the real spec through the engine against the same closed form.)"""
    def losses(job: str):
        n, s, pool = (int(part[1:]) for part in job.split("_"))
        world = np.random.default_rng([pool, 0]).standard_normal(n_seeds)
        own = np.random.default_rng([n, s, pool]).standard_normal(n_seeds)
        mean = theory.linear_regression_value_grid(n, s, M, D, SIGMA2)
        return list(range(n_seeds)), list(mean * np.exp(0.3 * world + spread * own - spread**2 / 2))

    return losses


def drive(search: ContourSearch, losses, stop_after: int | None = None) -> int:
    """Run the search's jobs in order, as Tune would one at a time; returns the jobs recorded."""
    recorded = 0
    while (jobs := search.next_jobs()) is not None:
        for job in jobs:
            if stop_after is not None and recorded == stop_after:
                return recorded
            search.record(job, *losses(job))
            recorded += 1
    return recorded


@pytest.mark.parametrize("acquisition", ["straddle", "lse"])
def test_search_finds_linear_regressions_closed_form_contour_from_a_fraction_of_the_cells(acquisition):
    """The issue's check on a test-sized grid (12 x 15 cells with a side, 40 seeds a cell):
    the estimated side agrees with the exact one in >= 95% of cells, from at most a quarter
    of the grid's cells (baselines counted)."""
    cells = regression_cells()
    search = ContourSearch(cells, SearchConfig(method="level_set", acquisition=acquisition), batch_size=2)
    drive(search, regression_losses())
    estimate = search.estimate()
    side = cells.candidates
    truth = theory.linear_regression_value(cells.n_real, cells.synthetic, M, D, SIGMA2) > 0
    assert 0.2 < truth[side].mean() < 0.8  # both sides are on the grid
    agreement = (estimate.hurts == truth)[side].mean()
    ran = estimate.ran.mean()
    assert agreement >= 0.95 and ran <= 0.25, (agreement, ran, estimate.summary())
    assert estimate.stopped == "decided"
    # every cell it ran had its baseline run, and no cell of the n = 0 column is ever proposed
    assert all(estimate.ran[cells.baseline[i]] for i in np.flatnonzero(estimate.ran & side))


# -- exact resume ---------------------------------------------------------------------
synthetic_losses = regression_losses(n_seeds=6)


@pytest.mark.parametrize("acquisition", ["straddle", "lse"])
def test_state_file_resumes_exactly(tmp_path, acquisition):
    """Interrupted after k jobs (mid-batch), written, read back by a new search, continued:
    the same batches and the same final estimate as a search never interrupted."""
    cells = regression_cells(N_REAL[::2], SYNTHETIC[::2], pools=2)  # a cell is two jobs: k can fall inside one
    config = SearchConfig(method="level_set", acquisition=acquisition, budget=30)
    whole = ContourSearch(cells, config, batch_size=2)
    drive(whole, synthetic_losses)
    path = tmp_path / STATE_FILE
    first = ContourSearch(cells, config, batch_size=2)
    done = drive(first, synthetic_losses, stop_after=13)
    assert done == 13 and first.pending_jobs()  # stopped mid-batch
    first.save(path)
    text = path.read_text()
    json.loads(text)  # plain JSON: no NaN, nothing but data
    resumed = ContourSearch.open(path, cells, config, batch_size=7)  # the saved batch size wins
    assert resumed.batch_size == 2 and resumed.results == first.results
    drive(resumed, synthetic_losses)
    assert resumed.batches == whole.batches and resumed.stopped == whole.stopped
    a, b = resumed.estimate(), whole.estimate()
    assert np.array_equal(a.mean, b.mean, equal_nan=True) and np.array_equal(a.sd, b.sd, equal_nan=True)


def test_a_larger_budget_grows_a_stopped_search(tmp_path):
    cells = regression_cells(N_REAL[::2], SYNTHETIC[::2])
    small = ContourSearch(cells, SearchConfig(method="level_set", budget=8), batch_size=1)
    drive(small, synthetic_losses)
    assert small.stopped == "budget" and len(small.proposed()) <= 8
    small.save(tmp_path / STATE_FILE)
    grown = ContourSearch.open(tmp_path / STATE_FILE, cells, SearchConfig(method="level_set", budget=14), 1)
    assert grown.stopped is None and grown.batches == small.batches
    drive(grown, synthetic_losses)
    assert 8 < len(grown.proposed()) <= 14 and grown.batches[:len(small.batches)] == small.batches


def test_more_seeds_run_on_the_cells_that_ran_first_then_the_search_decides_again(tmp_path):
    cells = regression_cells(N_REAL[::2], SYNTHETIC[::2])
    search = ContourSearch(cells, SearchConfig(method="level_set"), batch_size=2)
    drive(search, synthetic_losses)
    assert search.stopped == "decided"
    search.save(tmp_path / STATE_FILE)
    # the grown spec: every cell gains a job (a block of new seeds), as planned_jobs adds them
    grown_cells = ValueGridCells(cells.n_real, cells.synthetic, tuple((*jobs, f"{jobs[0]}_more") for jobs in cells.jobs),
                                 {**cells.job_pool, **{f"{jobs[0]}_more": 0 for jobs in cells.jobs}})
    grown = ContourSearch.open(tmp_path / STATE_FILE, grown_cells, SearchConfig(method="level_set"), 2)
    ran = [c for batch in search.batches for c in batch]
    assert grown.stopped is None and grown.next_jobs() == [f"{cells.jobs[c][0]}_more" for c in ran]

    def more_seeds(job: str):
        seeds, losses = synthetic_losses(job.removesuffix("_more"))
        return [s + 100 for s in seeds], losses[::-1]

    drive(grown, lambda job: more_seeds(job) if job.endswith("_more") else synthetic_losses(job))
    assert grown.stopped in ("decided", "exhausted") and grown.batches[:len(search.batches)] == search.batches
    assert all(grown.cell_done()[c] for c in ran)


def test_state_file_refusals(tmp_path):
    cells = regression_cells(N_REAL[:4], SYNTHETIC[:4])
    config = SearchConfig(method="level_set")
    search = ContourSearch(cells, config, batch_size=1)
    drive(search, synthetic_losses, stop_after=3)
    path = tmp_path / STATE_FILE
    search.save(path)
    state = json.loads(path.read_text())
    cases = {
        "foreign job": dict(state, results={**state["results"], "n999_s1_p0": {"seeds": [0], "losses": [1.0]}}),
        "code in a value": dict(state, results={k: {"seeds": [0], "losses": ["__import__('os')"]}
                                                 for k in state["results"]}),
        "other cells": dict(state, cells=state["cells"][1:]),
        "bad batch": dict(state, batches=[[10_000]]),
    }
    for what, bad in cases.items():
        path.write_text(json.dumps(bad))
        with pytest.raises(SpecError) as err:
            ContourSearch.open(path, cells, config, 1)
        assert "\n" not in str(err.value) and STATE_FILE in str(err.value), what
    path.write_text(json.dumps(state))
    with pytest.raises(SpecError, match="search.acquisition was 'straddle' and is 'lse'"):
        ContourSearch.open(path, cells, SearchConfig(method="level_set", acquisition="lse"), 1)
    path.write_text("{not json")
    with pytest.raises(SpecError, match="not readable JSON"):
        ContourSearch.open(path, cells, config, 1)


# -- the spec's `search:` block --------------------------------------------------------------
VALUE_GRID = {
    "name": "toy", "seeds": 4,
    "task": {"name": "linear_regression", "dim": 2, "value_pool_size": 64, "value_pool_real": 8, "n_value_pools": 2},
    "chain": {"n_iterations": 1},
    "grid": {"chain.n_real": [8, 16, 32], "task.value_synthetic": [0, 8, 32, 64], "task.value_pool": [0, 1]},
}


def spec_with(search=None, **changes):
    raw = json.loads(json.dumps({**VALUE_GRID, **changes}))
    if search is not None:
        raw["search"] = search
    return parse_spec(raw)


@pytest.mark.parametrize("name", ["quickstart", "linear_regression_value_grid", "gaussian_value_grid_quick"])
def test_a_spec_without_search_resolves_as_before(name):
    """No `search:` block: every cell runs, and the resolved spec (sweep.json, the MLflow
    params, what --resume compares) has no trace of the search (tests/test_spec.py loads
    every shipped spec)."""
    spec = load_spec(ROOT / "sweeps" / f"{name}.yaml")
    assert spec.search == SearchConfig() and not spec.search.adaptive
    assert "search" not in spec.resolved_dict()


def test_search_block_is_parsed_once_into_a_frozen_config():
    spec = spec_with({"method": "level_set", "acquisition": "lse", "confidence": 0.9, "budget": 10, "initial": 2})
    assert spec.search == SearchConfig("level_set", "lse", 0.9, 0, 10, 2)
    assert spec.resolved_dict()["search"]["acquisition"] == "lse"
    with pytest.raises(Exception):
        spec.search.budget = 3  # frozen
    # --set reaches it like task/chain/run
    assert parse_spec(dict(VALUE_GRID), overrides=["search.method=level_set"]).search.adaptive
    # initial design: spread, baselines first, each baseline once
    cells = ValueGridCells.from_points(spec.points)
    first = initial_batch(cells, 3)
    assert len(first) == len(set(first)) and all(cells.synthetic[c] == 0 for c in first[:-3])


@pytest.mark.parametrize("search, changes, message", [
    ({"method": "bayes"}, {}, "search.method must be one of {grid, level_set}; got 'bayes'"),
    ({"method": "level_set", "acquisition": "ucb"}, {}, "search.acquisition must be one of {straddle, lse}"),
    ({"method": "level_set", "confidence": 1.0}, {}, "search.confidence must be a number in (0.5, 1); got 1.0"),
    ({"method": "level_set", "budget": -1}, {}, "search.budget must be an integer >= 0"),
    ({"method": "level_set", "budget": 3}, {}, "search.budget must be 0 (no cap) or at least"),
    ({"method": "level_set", "initial": 99}, {}, "search.initial must be at most the grid's 9 cells"),
    ({"method": "level_set", "batch_size": "many"}, {}, "search.batch_size must be an integer"),
    ({"method": "grid", "budget": 10}, {}, "search.budget must be left out when search.method is grid"),
    ({"method": "level_set", "acquisiton": "lse"}, {}, "search: unknown key 'acquisiton' (did you mean 'acquisition'?)"),
    ("level_set", {}, "search must be a mapping"),
    ({"method": "level_set"}, {"grid": {"chain.n_real": [8, 16], "task.value_synthetic": [8, 32]}},
     "task.value_synthetic 0 (the baseline L(n, 0)) must be a cell"),
    ({"method": "level_set"}, {"grid": {"chain.n_real": [8, 16], "task.dim": [2, 3], "task.value_synthetic": [0, 8, 32]}},
     "the grid also sweeps task.dim"),
    ({"method": "level_set"}, {"grid": {"chain.n_real": [8, 16, 32]}}, "search.method level_set needs a value grid"),
])
def test_bad_search_blocks_are_refused_in_one_line(search, changes, message):
    with pytest.raises(SpecError) as err:
        spec_with(search, **changes)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_search_exits_2_before_anything_starts(tmp_path, capsys):
    from collapse_ray import cli

    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(VALUE_GRID))
    assert cli.main(["validate", str(path), "--set", "search.method=level_set", "--set", "search.confidence=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: search.confidence must be a number in (0.5, 1); got 2.0"]


def test_resume_grows_a_search_only_by_budget_and_confidence():
    before = spec_with({"method": "level_set", "budget": 10}).resolved_dict()
    check_growable(before, spec_with({"method": "level_set", "budget": 12, "confidence": 0.99}).resolved_dict(),
                   Path("sweep"))
    for search, named in (({"method": "level_set", "budget": 8}, "search.budget (lowered)"),
                          ({"method": "level_set", "budget": 10, "acquisition": "lse"}, "search.acquisition"),
                          (None, "search")):
        with pytest.raises(SpecError, match=re.escape(named)):
            check_growable(before, spec_with(search).resolved_dict(), Path("sweep"))


def test_contour_figure_draws_the_estimate_the_cells_that_ran_and_the_closed_form(tmp_path):
    from analysis import drawing, value_grid_figures
    from collapse_ray.tasks import LinearRegressionTask

    cells = regression_cells(N_REAL[::2], SYNTHETIC[::2])
    search = ContourSearch(cells, SearchConfig(method="level_set", budget=16), batch_size=2)
    drive(search, regression_losses())
    estimate = search.estimate()
    task = LinearRegressionTask(dim=D, sigma2=SIGMA2, value_pool_size=1024, value_pool_real=M)
    fig = value_grid_figures.plot_contour(estimate, "linear_regression", value_grid_figures.closed_form_crossover(task))
    assert drawing.layout_problems(fig) == []
    ax = fig.axes[0]
    ringed = [c for c in ax.collections if c.get_offsets().shape[0] == int((estimate.ran & cells.candidates).sum())]
    assert ringed  # the cells that ran, marked
    assert any(line.get_color() == "tab:green" for line in ax.get_lines())  # the closed-form contour
    path = drawing.save(fig, tmp_path / "contour.png")
    assert path.stat().st_size > 20_000
    assert value_grid_figures.closed_form_crossover(LinearRegressionTask(dim=5, value_pool_size=10, value_pool_real=6)) is None
