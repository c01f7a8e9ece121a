"""Which rows each workflow trains on, pinned on a toy pool whose data is its own
iteration of origin."""

from __future__ import annotations

import numpy as np
import pytest

from collapse_ray.pool import ArrayPool
from collapse_ray.workflows import Accumulate, AccumulateSubsample, Replace

N_CHAINS, N = 3, 4


def toy_pool(last_iteration: int) -> ArrayPool:
    """Real rows (value 0) plus N rows per iteration 1..last, each valued by its iteration."""
    pool = ArrayPool(range(N_CHAINS))
    pool.add({"x": np.zeros((N_CHAINS, N))}, 0, "real")
    for t in range(1, last_iteration + 1):
        pool.add({"x": np.full((N_CHAINS, N), float(t))}, t, "synthetic")
    return pool


def train_values(workflow, iteration, rngs=None):
    pool = toy_pool(iteration - 1)
    rngs = rngs or [np.random.default_rng(s) for s in range(N_CHAINS)]
    return pool.take(workflow.select(pool.index, iteration, rngs))["x"]


@pytest.mark.parametrize("workflow", [Replace(), Accumulate(), AccumulateSubsample(n_train=N)])
def test_iteration_one_fits_the_real_rows_only(workflow):
    assert np.array_equal(np.sort(train_values(workflow, 1), axis=1), np.zeros((N_CHAINS, N)))


def test_replace_trains_on_the_previous_iterations_samples_only():
    for t in (2, 3, 6):
        assert np.array_equal(train_values(Replace(), t), np.full((N_CHAINS, N), t - 1.0))


def test_accumulate_trains_on_everything_so_far():
    x = train_values(Accumulate(), 5)
    assert np.array_equal(x[0], np.repeat([0.0, 1, 2, 3, 4], N)) and (x == x[0]).all()


def test_accumulate_subsample_draws_n_train_distinct_rows_uniformly_from_the_pool():
    t, n_train = 5, N
    pool = toy_pool(t - 1)
    rngs = [np.random.default_rng(s) for s in range(N_CHAINS)]
    counts = np.zeros(t)
    for _ in range(2000):
        selection = AccumulateSubsample(n_train=n_train).select(pool.index, t, rngs)
        assert selection.shape == (N_CHAINS, n_train)
        assert all(len(set(row)) == n_train for row in selection)  # without replacement
        values = pool.take(selection)["x"]
        counts += np.bincount(values.ravel().astype(int), minlength=t)
    # not stratified: each iteration's share matches its share of the pool (1/t each);
    # 24,000 draws, SE of a share ~0.0026: 0.015 is > 5 SE
    assert np.allclose(counts / counts.sum(), 1 / t, atol=0.015)
    chains_differ = not np.array_equal(selection[0], selection[1])
    assert chains_differ, "each chain draws its own subsample"


def test_accumulate_subsample_keeps_a_fixed_training_size():
    for t in (2, 4, 8):
        assert train_values(AccumulateSubsample(n_train=6), t).shape == (N_CHAINS, 6)


def test_pool_without_history_keeps_only_the_newest_iteration():
    pool = ArrayPool(range(2), keep_history=False)
    pool.add({"x": np.zeros((2, 3))}, 0, "real")
    pool.add({"x": np.ones((2, 3))}, 1, "synthetic")
    pool.add({"x": np.full((2, 3), 2.0)}, 2, "synthetic")
    assert len(pool) == 3 and (pool.rows_of(2)["x"] == 2).all()
    assert np.array_equal(pool.take(Replace().select(pool.index, 3, None))["x"], np.full((2, 3), 2.0))
