"""Monte-Carlo linear-regression and discrete-distribution chains against closed forms.

Same method as test_theory_gaussian: the mean over S chains at every iteration within
Z standard errors of theory, fixed seeds, both the statistics path (the default) and
the rows path (sampling rows and refitting, as (A)'s code does).
"""

from __future__ import annotations

import numpy as np
import pytest

from collapse_ray import theory
from collapse_ray.core.loop import run_chain
from collapse_ray.core.chain import ChainConfig
from collapse_ray.tasks import DiscreteTask, LinearRegressionTask

from .helpers import WithoutStatistics
from .test_theory_gaussian import PATHS, assert_matches


def simulate(task, workflow, n, iterations, seeds, path):
    chain = ChainConfig(workflow=workflow, n_real=n, n_iterations=iterations).resolved()
    task = task if path == "statistics" else WithoutStatistics(task)
    return run_chain(task, chain, range(seeds)).table.groupby("iteration")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("d, n, sigma2", [(10, 100, 1.0), (3, 32, 10.0)])
def test_linear_regression_replace_and_accumulate(d, n, sigma2, path):
    t = np.arange(1, 13)
    task = LinearRegressionTask(dim=d, sigma2=sigma2, n_test=1000)
    replace = simulate(task, "replace", n, len(t), 3000, path)
    assert_matches(replace, "test_loss", theory.linear_regression_replace(n, d, sigma2, t))
    accumulate = simulate(task, "accumulate", n, len(t), 3000, path)
    assert_matches(accumulate, "test_loss", theory.linear_regression_accumulate(n, d, sigma2, t))


def test_linear_regression_reference_values_from_the_papers():
    # PAPERS.md: d = 10, n = 100, sigma2 = 1: replace 0.112, 0.562, 1.124, 3.371 at
    # t = 1, 5, 10, 30; accumulate 0.112, 0.165, 0.174, 0.181, bound 0.185
    t = [1, 5, 10, 30]
    assert np.allclose(theory.linear_regression_replace(100, 10, 1.0, t), [0.1124, 0.5618, 1.1236, 3.3708], atol=1e-3)
    assert np.allclose(theory.linear_regression_accumulate(100, 10, 1.0, t), [0.112, 0.165, 0.174, 0.181], atol=1.5e-3)
    assert np.pi**2 / 6 * theory.linear_regression_base(100, 10, 1.0) == pytest.approx(0.185, abs=1e-3)


@pytest.mark.parametrize("path", PATHS)
def test_discrete_gini_simpson(path):
    # PAPERS.md, K = 10, n = 20: replace 0.855, 0.696, 0.323, 0.042 at t = 1, 5, 20, 60;
    # accumulate 0.855, 0.835, 0.830, 0.829
    t = np.arange(1, 61)
    task = DiscreteTask(n_outcomes=10)
    replace = simulate(task, "replace", 20, len(t), 3000, path)
    assert_matches(replace, "gini_simpson", theory.discrete_replace_gini_simpson(10, 20, t))
    accumulate = simulate(task, "accumulate", 20, len(t), 3000, path)
    assert_matches(accumulate, "gini_simpson", theory.discrete_accumulate_gini_simpson(10, 20, t))
    assert np.allclose(theory.discrete_replace_gini_simpson(10, 20, [1, 5, 20, 60]), [0.855, 0.696, 0.323, 0.042], atol=1e-3)
    assert np.allclose(theory.discrete_accumulate_gini_simpson(10, 20, [1, 5, 20, 60]), [0.855, 0.835, 0.830, 0.829], atol=1e-3)
    # lost outcomes never come back under replace
    zeros = replace["n_zero_mass"].mean().to_numpy()
    assert (np.diff(zeros) >= -1e-12).all() and zeros[-1] > 5
