"""Monte-Carlo Gaussian chains against the closed forms of (A).

Each check compares the mean over S chains with theory at every iteration, within
Z standard errors of that mean (SE from the chains' own spread). Seeds are fixed, so
these tests are deterministic; Z = 4 keeps them honest (a real bias of a few SE fails)
without flaking on reseeding.
"""

from __future__ import annotations

import numpy as np
import pytest

from collapse_ray import theory
from collapse_ray.core.loop import run_chain
from collapse_ray.core.chain import ChainConfig
from collapse_ray.tasks import GaussianTask

from .helpers import WithoutStatistics

Z = 4.0
S = 4000
# Both ways of running a chain must match theory: drawing the statistics of the
# synthetic rows directly (the engine's default) and sampling rows and refitting.
PATHS = ["statistics", "rows"]


def simulate(workflow, d, n, iterations, seeds=S, sigma2=1.0, path="statistics"):
    chain = ChainConfig(workflow=workflow, n_real=n, n_iterations=iterations).resolved()
    task = GaussianTask(dim=d, sigma2=sigma2, n_test=10)
    table = run_chain(task if path == "statistics" else WithoutStatistics(task), chain, range(seeds)).table
    return table.groupby("iteration")


def assert_matches(grouped, metric, expected):
    mean = grouped[metric].mean().to_numpy()
    se = (grouped[metric].std() / np.sqrt(grouped[metric].count())).to_numpy()
    z = np.abs(mean - expected) / se
    assert (z < Z).all(), f"{metric}: MC {np.round(mean, 4)} vs theory {np.round(expected, 4)} (z = {np.round(z, 1)})"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("d, n", [(2, 10), (10, 32), (12, 8)])
def test_replace_trace_and_mean_error(d, n, path):
    t = np.arange(1, 16)
    grouped = simulate("replace", d, n, len(t), sigma2=2.0, path=path)
    assert_matches(grouped, "cov_trace_ratio", theory.gaussian_replace_trace_ratio(n, t))
    assert_matches(grouped, "mean_sq_error", theory.gaussian_replace_mean_sq_error(n, d, 2.0, t))


@pytest.mark.parametrize("path", PATHS)
def test_replace_determinant(path):
    t = np.arange(1, 6)
    grouped = simulate("replace", 2, 20, len(t), path=path)
    assert_matches(grouped, "cov_det_ratio", theory.gaussian_replace_det_ratio(20, 2, t))


def test_replace_determinant_is_zero_when_n_does_not_exceed_d():
    grouped = simulate("replace", 5, 5, 3, seeds=50)
    assert (grouped["cov_det_ratio"].max() == 0).all()
    assert (theory.gaussian_replace_det_ratio(5, 5, [1, 2, 3]) == 0).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("d, n", [(2, 10), (3, 32), (25, 6)])
def test_accumulate_trace_and_mean_error(d, n, path):
    t = np.arange(1, 21)
    grouped = simulate("accumulate", d, n, len(t), seeds=S if d < 10 else 1000, path=path)
    assert_matches(grouped, "cov_trace_ratio", theory.gaussian_accumulate_trace_ratio(n, t))
    assert_matches(grouped, "mean_sq_error", theory.gaussian_accumulate_mean_sq_error(n, d, 1.0, t))
    assert grouped["mean_sq_error"].mean().max() <= theory.gaussian_accumulate_mean_sq_error_bound(n, d, 1.0)


def test_accumulate_limit_values_from_the_paper():
    # PAPERS.md: 0.8434 (n=10), 0.9494 (n=32), 0.9836 (n=100)
    for n, value in [(10, 0.8434), (32, 0.9494), (100, 0.9836)]:
        assert theory.gaussian_accumulate_trace_limit(n) == pytest.approx(value, abs=5e-5)
        assert theory.gaussian_accumulate_trace_ratio(n, [200_000])[0] == pytest.approx(value, abs=1e-4)


def test_accumulate_subsample_sits_between_replace_and_accumulate():
    # no closed form: (A)'s claim is the ordering
    t = 20
    last = {w: simulate(w, 2, 10, t, seeds=1000)["cov_trace_ratio"].mean().iloc[-1] for w in
            ("replace", "accumulate_subsample", "accumulate")}
    assert last["replace"] < last["accumulate_subsample"] < last["accumulate"]


def test_one_dimensional_replace_log_variance_drift():
    # PAPERS.md: in 1-D, replace's log-variance is a random walk with drift
    # psi((n-1)/2) + ln 2 - ln n per iteration (-0.2206 for n = 10).
    from scipy.special import digamma

    n, t = 10, 50
    drift = digamma((n - 1) / 2) + np.log(2) - np.log(n)
    assert drift == pytest.approx(-0.2206, abs=1e-4)
    grouped = simulate("replace", 1, n, t, seeds=S)
    log_var = grouped["cov_log_det_ratio"]
    mean = log_var.mean().to_numpy()
    se = (log_var.std() / np.sqrt(log_var.count())).to_numpy()
    assert (np.abs(mean - drift * np.arange(1, t + 1)) < Z * se).all()
    # median variance after 50 iterations is about 2e-5
    assert np.exp(log_var.median().iloc[-1]) == pytest.approx(2e-5, rel=0.5)
