"""The Gaussian task's numerics: exact test NLL, singular fits, sampling covariances."""

from __future__ import annotations

import numpy as np
import pytest

from collapse_ray.tasks import GaussianTask
from collapse_ray.tasks.gaussian import GaussianTestSet


def gens(n, seed=0):
    return [np.random.default_rng([seed, i]) for i in range(n)]


def direct_mean_nll(points, mean, cov):
    d = len(mean)
    diff = points - mean
    sign, logdet = np.linalg.slogdet(cov)
    quad = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    return float(np.mean(0.5 * (d * np.log(2 * np.pi) + logdet + quad)))


def test_test_loss_equals_mean_nll_of_the_held_out_points():
    task = GaussianTask(dim=4, sigma2=2.0)
    rng = np.random.default_rng(1)
    train = {"x": rng.standard_normal((2, 30, 4)) * 1.3 + 0.2}
    test_points = rng.standard_normal((2, 200, 4)) * np.sqrt(2.0)
    model = task.fit(train)
    test = task.statistics({"x": test_points})
    metrics = task.evaluate(model, GaussianTestSet(test.mean, test.scatter / test.count))
    for c in range(2):
        assert metrics["test_loss"][c] == pytest.approx(direct_mean_nll(test_points[c], model.mean[c], model.cov[c]), rel=1e-10)
        assert metrics["cov_trace_ratio"][c] == pytest.approx(np.trace(np.cov(train["x"][c].T, bias=True)) / 8)
        assert metrics["mean_sq_error"][c] == pytest.approx(np.sum(train["x"][c].mean(0) ** 2))


def test_fit_is_the_mle_of_np_cov_bias_true():
    x = np.random.default_rng(2).standard_normal((3, 12, 5))
    model = GaussianTask(dim=5).fit({"x": x})
    for c in range(3):
        assert np.allclose(model.cov[c], np.cov(x[c].T, bias=True))
        assert np.allclose(model.mean[c], x[c].mean(0))


def test_singular_fit_gives_infinite_loss_not_a_crash():
    task = GaussianTask(dim=6, n_test=50)
    real = task.real_data(4, gens(3))  # 4 rows in 6 dimensions: rank <= 3
    model = task.fit(real.train)
    metrics = task.evaluate(model, real.test)
    assert np.isposinf(metrics["test_loss"]).all()
    assert (metrics["cov_det_ratio"] == 0).all() and np.isneginf(metrics["cov_log_det_ratio"]).all()
    assert np.isfinite(metrics["cov_trace_ratio"]).all()
    rows = task.sample(model, 10, gens(3, seed=1))["x"]
    assert np.isfinite(rows).all()
    # samples stay in the affine span of the training rows
    centred = real.train["x"][0] - model.mean[0]
    resid = rows[0] - model.mean[0]
    coef, *_ = np.linalg.lstsq(centred.T, resid.T, rcond=None)
    assert np.allclose(centred.T @ coef, resid.T)


@pytest.mark.parametrize("n_train", [3, 40], ids=["rank-deficient (data factor)", "full rank (Cholesky)"])
def test_samples_have_the_fitted_covariance(n_train):
    task = GaussianTask(dim=4)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, n_train, 4)) @ np.array([[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0.5, 0], [0, 0, 0, 1.0]])
    model = task.fit({"x": x})
    samples = task.sample(model, 200_000, gens(1))["x"][0]
    # 200k draws: entries of the sample covariance are within ~1% of their scale
    assert np.allclose(np.cov(samples.T), model.cov[0], atol=0.03 * np.abs(model.cov[0]).max())
    assert np.allclose(samples.mean(0), model.mean[0], atol=0.02 * np.sqrt(model.cov[0].diagonal().max()))


def test_eigen_fallback_for_a_collapsed_covariance_without_rows():
    task = GaussianTask(dim=3)
    stats = task.statistics({"x": np.random.default_rng(4).standard_normal((1, 2, 3))})
    model = task.fit_statistics(stats)  # 2 rows in 3-D, no rows kept: eigen path
    samples = task.sample(model, 100_000, gens(1))["x"][0]
    assert np.allclose(np.cov(samples.T), model.cov[0], atol=0.03 * np.abs(model.cov[0]).max())


def test_merged_statistics_equal_statistics_of_the_union():
    task = GaussianTask(dim=3)
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 7, 3)) + 100.0, rng.standard_normal((2, 11, 3)) + 100.0  # far from 0: no cancellation
    merged = task.merge(task.statistics({"x": a}), task.statistics({"x": b}))
    whole = task.statistics({"x": np.concatenate([a, b], axis=1)})
    assert merged.count == 18
    assert np.allclose(merged.mean, whole.mean) and np.allclose(merged.scatter, whole.scatter, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("n_fit, n_draw", [(40, 12), (40, 3), (3, 12)], ids=["full rank", "n-1 < d", "rank-deficient fit"])
def test_sampled_statistics_match_statistics_of_sampled_rows(n_fit, n_draw):
    """sample_statistics is equal in distribution to statistics(sample(...)): compare
    the mean and spread of the mean and scatter entries over 20,000 chains."""
    d, chains = 4, 20_000
    task = GaussianTask(dim=d)
    x = np.random.default_rng(7).standard_normal((1, n_fit, d)) @ np.diag([2.0, 1.0, 0.5, 0.3])
    model = task.fit({"x": np.repeat(x, chains, axis=0)})
    direct = task.sample_statistics(model, n_draw, gens(chains, seed=1))
    via_rows = task.statistics(task.sample(model, n_draw, gens(chains, seed=2)))
    assert direct.count == via_rows.count == n_draw
    for a, b in [(direct.mean, via_rows.mean), (direct.scatter, via_rows.scatter)]:
        se = np.sqrt(a.var(axis=0) / chains + b.var(axis=0) / chains) + 1e-12
        assert (np.abs(a.mean(axis=0) - b.mean(axis=0)) < 4.5 * se).all()
        # spreads agree to within sampling error of a standard deviation (~1% here)
        assert np.allclose(a.std(axis=0), b.std(axis=0), rtol=0.06, atol=1e-9)
    assert np.allclose(direct.scatter.mean(axis=0), (n_draw - 1) * model.cov[0], atol=0.05 * (n_draw - 1) * np.abs(model.cov[0]).max())
    if n_draw <= d:  # a rank-deficient result carries a factor that reproduces its scatter
        f = direct.factor
        assert np.allclose(np.matmul(f.transpose(0, 2, 1), f), direct.scatter)


@pytest.mark.parametrize("workflow", ["replace", "accumulate"])
def test_fig1_density_row_draws_the_sweeps_own_chain(workflow):
    # analysis/fig1_gaussian.py's density row: the fitted 1-D mean and variance of seed
    # 0, which must be the chain the sweep ran (same loop, same draws)
    import importlib.util
    from pathlib import Path

    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig

    path = Path(__file__).parent.parent / "analysis" / "fig1_gaussian.py"
    spec = importlib.util.spec_from_file_location("fig1_for_density", path)
    fig1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fig1)
    fits = fig1.density_chain(20, 2.0, 30, workflow)
    sweep = run_chain(GaussianTask(dim=1, sigma2=2.0, n_test=10),
                      ChainConfig(workflow=workflow, n_real=20, n_iterations=30).resolved(), [0]).table
    assert np.allclose(fits["fit_var"] / 2.0, sweep["cov_trace_ratio"], rtol=1e-12)
    assert np.allclose(fits["fit_mean"] ** 2, sweep["mean_sq_error"], rtol=1e-10)
    if workflow == "replace":  # one chain of n = 20 over 30 fits: visibly narrower
        assert fits["fit_var"].iloc[-1] < 0.7 * fits["fit_var"].iloc[0]


@pytest.mark.parametrize("df, dim", [(9, 3), (2, 5)])
def test_bartlett_draws_are_the_documented_stream(df, dim):
    """One fill per chain for z and R's normals draws exactly what separate calls would
    (so fixed seeds give the results they gave before the fill was fused)."""
    from collapse_ray.tasks.gaussian import _mean_and_bartlett_draws

    z, r = _mean_and_bartlett_draws([np.random.default_rng(s) for s in (5, 6)], df, dim)
    q = min(df, dim)
    for c, seed in enumerate((5, 6)):
        rng = np.random.default_rng(seed)
        assert np.array_equal(z[c], rng.standard_normal(dim))
        expected = np.triu(rng.standard_normal((q, dim)), 1)
        expected[np.arange(q), np.arange(q)] = np.sqrt(rng.chisquare(df - np.arange(q)))
        assert np.array_equal(r[c], expected)
