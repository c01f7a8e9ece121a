"""Linear regression's value grid (Fig. 5's protocol) against its closed form.

theory.linear_regression_value_grid gives E[test_loss] of a cell (n real rows plus the
first s rows of a pool labelled by least squares on m separate real rows). Monte-Carlo
means over seeds must lie within Z standard errors (from the seeds' spread) of it, and
the sign of the value of s synthetic rows, L(n, s) - L(n, 0), taken per seed on the same
world and real rows, must be decided and agree with theory on both sides of the
crossover. Sizes keep the generator's error light-tailed (m - d - 1 >= 16), so the
standard errors are trustworthy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collapse_ray import theory
from collapse_ray.sweep.cells import REPLICATE_AXES
from collapse_ray.core.loop import chain_generators, run_chain
from collapse_ray.core.chain import ChainConfig
from collapse_ray.sweep.spec import load_spec, parse_spec
from collapse_ray.tasks import LinearRegressionTask
from collapse_ray.tracking.view import VALUE_GRID
from collapse_ray.validation import SpecError

Z = 4.0
D, M, SIGMA2 = 3, 20, 1.0
SEEDS = range(2000)


def cell_task(s: int, pool: int = 0, **changes) -> LinearRegressionTask:
    return LinearRegressionTask(dim=D, sigma2=SIGMA2, n_test=200, value_pool_size=400, value_pool_real=M,
                                n_value_pools=2, value_pool=pool, value_synthetic=s, **changes)


def cell_losses(n: int, s: int, pool: int = 0, seeds=SEEDS) -> np.ndarray:
    """test_loss per seed of cell (n, s): one vectorised fit of every seed's world."""
    task = cell_task(s, pool)
    real = task.real_data(n, [chain_generators(k)[0] for k in seeds])
    return task.evaluate(task.fit(real.train, real.context), real.test)["test_loss"]


def within(sample: np.ndarray, expected: float) -> tuple[float, float]:
    mean, se = float(sample.mean()), float(sample.std(ddof=1) / np.sqrt(len(sample)))
    assert abs(mean - expected) <= Z * se, f"MC {mean:.5f} +- {se:.5f} vs theory {expected:.5f}"
    return mean, se


@pytest.mark.parametrize("d, n, s", [(1, 5, 7), (3, 10, 20), (5, 4, 30), (5, 40, 10)])
def test_synthetic_share_of_the_fit_matches_monte_carlo(d, n, s):
    """E tr(A A'), A = (X'X)^-1 X_s'X_s for Gaussian rows: the Weingarten derivation."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((20000, n + s, d))
    gram = np.matmul(x.transpose(0, 2, 1), x)
    synthetic = np.matmul(x[:, n:].transpose(0, 2, 1), x[:, n:])
    a = np.linalg.solve(gram, synthetic)
    within((a * a).sum(axis=(1, 2)), float(theory.linear_regression_synthetic_share(n, s, d)))


def test_closed_form_limits():
    # no synthetic rows: the real-only error of theory.linear_regression_base
    assert theory.linear_regression_value_grid(50, 0, M, D, SIGMA2) == pytest.approx(theory.linear_regression_base(50, D, SIGMA2))
    # all synthetic (n = 0): A = I, so the generator's whole error sigma2 d/(m-d-1) is added
    assert theory.linear_regression_value_grid(0, 40, M, D, SIGMA2) == pytest.approx(
        SIGMA2 * D / (40 - D - 1) + SIGMA2 * D / (M - D - 1))
    # the share approaches d (s/N)^2 for N >> d
    assert theory.linear_regression_synthetic_share(3000, 1000, D) == pytest.approx(D * 0.25**2, rel=1e-2)
    assert np.isnan(theory.linear_regression_value_grid(2, 1, M, D, SIGMA2))


@pytest.mark.parametrize("n, s", [(0, 12), (6, 30), (40, 60), (200, 100)])
def test_cells_match_the_closed_form(n, s):
    within(cell_losses(n, s), float(theory.linear_regression_value_grid(n, s, M, D, SIGMA2)))


def test_value_of_synthetic_rows_changes_sign_at_the_crossover():
    """s = 60 synthetic rows help with n = 10 real rows and hurt with n = 200; the
    crossover s*(n) says where, and the paired per-seed differences agree."""
    s = 60
    crossover = theory.linear_regression_crossover([10, 200], M, D, SIGMA2)
    assert crossover[0] > s > crossover[1], crossover
    for n, sign in ((10, -1), (200, +1)):
        diff = cell_losses(n, s) - cell_losses(n, 0)
        expected = float(theory.linear_regression_value(n, s, M, D, SIGMA2))
        assert np.sign(expected) == sign
        mean, se = within(diff, expected)
        assert sign * mean > Z * se, f"n = {n}: value {mean:.5f} +- {se:.5f} not decided"


def test_cells_share_their_world_and_pool_prefixes():
    """Cells of one seed are paired: the real rows of n are the first rows of any larger
    n, pool rows are prefixes of one stream per pool, and pools differ."""
    rngs = lambda: [chain_generators(k)[0] for k in range(4)]  # noqa: E731 (fresh streams each call)
    small = cell_task(5).real_data(10, rngs())
    large = cell_task(8).real_data(20, rngs())
    assert np.array_equal(small.train["y"][:, :10], large.train["y"][:, :10])
    assert np.array_equal(small.context.x[:, :10], large.context.x[:, :10])
    assert np.array_equal(small.train["y"][:, 10:], large.train["y"][:, 20:25])
    assert np.array_equal(small.context.w_true, large.context.w_true)
    other_pool = cell_task(5, pool=1).real_data(10, rngs())
    assert np.array_equal(small.train["y"][:, :10], other_pool.train["y"][:, :10])
    assert not np.allclose(small.train["y"][:, 10:], other_pool.train["y"][:, 10:])


@pytest.mark.parametrize("n, s", [(0, 12), (12, 30)])
def test_a_cell_through_the_chain_loop_is_the_same_fit(n, s):
    """The loop (statistics path, one iteration, and its draw after it) runs a cell as
    the direct fit does."""
    seeds = range(50)
    chain = ChainConfig(n_real=n, n_iterations=1, checkpoint_every=0).resolved()
    table = run_chain(cell_task(s), chain, seeds).table
    assert np.allclose(table.sort_values("seed")["test_loss"].to_numpy(), cell_losses(n, s, seeds=seeds))


BASE = {"task": {"name": "linear_regression", "dim": 3, "value_pool_size": 100, "value_pool_real": 10,
                 "n_value_pools": 2}, "chain": {"n_iterations": 1}, "seeds": 2,
        "grid": {"chain.n_real": [5, 10], "task.value_synthetic": [0, 50], "task.value_pool": [0, 1]}}


def test_specs_use_fig5_axes():
    root = Path(__file__).parent.parent / "sweeps"
    fig5 = ["chain.n_real", "task.value_synthetic", "task.value_pool"]  # as sweeps/fig5_value_grid.yaml
    assert {"chain.n_real", "task.value_synthetic"} == {VALUE_GRID.x, VALUE_GRID.y} and fig5[2] in REPLICATE_AXES
    for name in ("linear_regression_value_grid.yaml", "linear_regression_value_grid_quick.yaml"):
        spec = load_spec(root / name)
        assert {axis for point in spec.points for axis, _ in point.swept} == set(fig5)
        assert all(p.chain.n_iterations == 1 for p in spec.points)
    assert len(parse_spec(BASE).points) == 8


@pytest.mark.parametrize("change, message", [
    ({"chain": {"n_iterations": 2}}, "chain.n_iterations must be 1 for value-grid cells"),
    ({"grid": {**BASE["grid"], "chain.n_real": [0, 10]}}, "chain.n_real must be an integer >= 1 in the value-grid cell"),
    ({"task": {**BASE["task"], "value_pool_size": 0}, "grid": {"chain.n_real": [0, 10]}},
     "chain.n_real must be an integer >= 1 \\(0 only in value-grid cells"),
    ({"grid": {**BASE["grid"], "task.value_synthetic": [0, 101]}}, "task.value_synthetic must be <= value_pool_size"),
    ({"grid": {**BASE["grid"], "task.value_pool": [0, 2]}}, "task.value_pool must be < n_value_pools"),
    ({"task": {**BASE["task"], "value_pool_real": 2}}, "task.value_pool_real must be"),
])
def test_bad_value_grid_specs_are_refused(change, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**BASE, **change})


def test_figures_draw_the_value_grid_with_its_closed_form(tmp_path):
    """analysis/figures.py draws a toy value grid's own figures (closed form and crossover
    on them) and leaves its rows out of the chain figures (no linear_regression_theory.png)."""
    import pandas as pd

    from analysis import figures, value_grid_figures

    seeds = range(40)
    frames = []
    for n, s in [(0, 12), (8, 0), (8, 12), (8, 60), (200, 0), (200, 12), (200, 60)]:
        for pool in (0, 1):
            task = cell_task(s, pool)
            frames.append(pd.DataFrame({
                "seed": list(seeds), "iteration": 1, "test_loss": cell_losses(n, s, pool, seeds), "task": task.name,
                "dim": D, "sigma2": SIGMA2, "n_test": task.n_test, "value_pool_size": task.value_pool_size,
                "value_pool_real": M, "n_value_pools": 2, "value_pool": pool, "value_synthetic": s,
                "workflow": "replace", "n_real": n, "n_iterations": 1, "run_key": f"n{n}_s{s}_p{pool}"}))
    table = pd.concat(frames, ignore_index=True)
    value = value_grid_figures.value_per_cell(table).set_index(["n_real", "value_synthetic"])
    assert value.loc[(8, 60), "mean"] < 0 < value.loc[(200, 60), "mean"]  # the two sides, as theory
    drawn = {p.name for p in figures.draw_all(table, tmp_path)}
    assert drawn == {f"linear_regression_value_{kind}.png" for kind in ("grid", "proportion", "heatmap", "sign")}
    assert all((tmp_path / name).stat().st_size > 10_000 for name in drawn)


@pytest.mark.parametrize("n, s", [(4, 0), (4, 30), (50, 200)])
def test_gaussian_cells_mean_error_matches_the_closed_form(n, s):
    """The Gaussian's value grid: E||mu_hat||^2 of n real rows plus s rows sampled from the
    fit to m separate rows is sigma2 d [n + s^2/m + s (m-1)/m] / (n+s)^2."""
    from collapse_ray.tasks import GaussianTask

    d, m, sigma2 = 2, 10, 2.0
    task = GaussianTask(dim=d, sigma2=sigma2, n_test=50, value_pool_size=200, value_pool_real=m, n_value_pools=2,
                        value_pool=1, value_synthetic=s)
    real = task.real_data(n, [chain_generators(k)[0] for k in SEEDS])
    assert real.train["x"].shape[1] == n + s
    error = task.evaluate(task.fit(real.train), real.test)["mean_sq_error"]
    within(error, float(theory.gaussian_value_grid_mean_sq_error(n, s, m, d, sigma2)))


def test_gaussian_value_grid_spec():
    spec = load_spec(Path(__file__).parent.parent / "sweeps" / "gaussian_value_grid_quick.yaml")
    assert {axis for axis, _ in spec.grid} == {"chain.n_real", "task.value_synthetic", "task.value_pool"}
    raw = {"task": {"name": "gaussian", "value_pool_size": 10, "value_pool_real": 5}, "chain": {"n_real": 5,
           "n_iterations": 2}}
    with pytest.raises(SpecError, match="chain.n_iterations must be 1 for value-grid cells"):
        parse_spec(raw)



def test_the_sweeps_closing_lines_check_each_cell_against_its_own_closed_form():
    """The terminal's "(theory ...)" and "Expected" check of a value-grid cell use the
    cell's closed form (its n_real and value_synthetic), not the chain's at iteration 1
    (which ignores the synthetic rows)."""
    from collapse_ray.sweep.cells import closed_form, sweep_cells

    checked = 0
    for name, metric in (("linear_regression_value_grid_quick", "test_loss"),
                         ("gaussian_value_grid_quick", "mean_sq_error")):
        for cell in sweep_cells(load_spec(Path(__file__).parent.parent / "sweeps" / f"{name}.yaml").jobs()):
            task, chain = cell.job.point.task, cell.job.point.chain
            form = (theory.linear_regression_value_grid if task.name == "linear_regression"
                    else theory.gaussian_value_grid_mean_sq_error)
            want = float(form(chain.n_real, task.value_synthetic, task.value_pool_real, task.dim, task.sigma2))
            got = closed_form(cell, metric, 1)
            if not np.isfinite(want):
                assert got is None, cell.name
                continue
            assert got == pytest.approx(want, rel=1e-12), (cell.name, got, want)
            checked += 1
    assert checked >= 15
