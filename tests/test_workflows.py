"""Which rows each workflow (mixing-policy preset) trains on, pinned on a toy pool whose
data are their own origin: synthetic rows of iteration t hold t, real rows 100 + t."""

from __future__ import annotations

import numpy as np
import pytest

from collapse_ray.pool import ArrayPool
from collapse_ray.validation import SpecError
from collapse_ray.workflows import KNOBS, PRESETS, make_workflow

N_CHAINS, N = 3, 4
REAL = 100.0


def toy_pool(last_iteration: int, n=N, n_fresh=0, keep_history=True) -> ArrayPool:
    pool = ArrayPool(range(N_CHAINS), keep_history=keep_history)
    pool.add({"x": np.full((N_CHAINS, n), REAL)}, 0, "real")
    for t in range(1, last_iteration + 1):
        pool.add({"x": np.full((N_CHAINS, n), float(t))}, t, "synthetic")
        if n_fresh:
            pool.add({"x": np.full((N_CHAINS, n_fresh), REAL + t)}, t, "real")
    return pool


def train_values(workflow, iteration, **pool_kw):
    pool = toy_pool(iteration - 1, **pool_kw)
    rngs = [np.random.default_rng(s) for s in range(N_CHAINS)]
    return pool.take(workflow.select(pool.index, iteration, rngs))["x"]


def sorted_rows(values):
    return np.sort(values, axis=1)


def preset(name):
    """A preset with every knob it takes set."""
    knobs = {"n_train": N, "synthetic_ratio": 1.0, "real_fraction": 0.5, "n_fresh_real": 2}
    return make_workflow(name, **{k: v for k, v in knobs.items() if k in PRESETS[name][1]})


@pytest.mark.parametrize("name", list(PRESETS))
def test_iteration_one_fits_the_initial_real_rows_only(name):
    workflow = preset(name)
    assert np.array_equal(sorted_rows(train_values(workflow, 1, n_fresh=2)), np.full((N_CHAINS, N), REAL))


def test_replace_trains_on_the_previous_iterations_samples_only():
    for t in (2, 3, 6):
        assert np.array_equal(train_values(make_workflow("replace"), t), np.full((N_CHAINS, N), t - 1.0))


def test_accumulate_trains_on_everything_so_far():
    x = train_values(make_workflow("accumulate"), 5)
    assert np.array_equal(x[0], np.repeat([REAL, 1, 2, 3, 4], N)) and (x == x[0]).all()
    with_fresh = train_values(make_workflow("accumulate", n_fresh_real=2), 3, n_fresh=2)
    assert sorted(with_fresh[0]) == sorted([REAL] * N + [1.0] * N + [101.0] * 2 + [2.0] * N + [102.0] * 2)


def test_accumulate_subsample_draws_n_train_distinct_rows_uniformly_from_the_pool():
    t, n_train = 5, N
    pool = toy_pool(t - 1)
    rngs = [np.random.default_rng(s) for s in range(N_CHAINS)]
    workflow = make_workflow("accumulate_subsample", n_train=n_train)
    counts = {}
    for _ in range(2000):
        selection = workflow.select(pool.index, t, rngs)
        assert selection.shape == (N_CHAINS, n_train)
        assert all(len(set(row)) == n_train for row in selection)  # without replacement
        for v in pool.take(selection)["x"].ravel():
            counts[v] = counts.get(v, 0) + 1
    # not stratified: each iteration's share matches its share of the pool (1/t each);
    # 24,000 draws, SE of a share ~0.0026: 0.015 is > 5 SE
    shares = np.array([counts[v] for v in (REAL, 1.0, 2.0, 3.0, 4.0)]) / sum(counts.values())
    assert np.allclose(shares, 1 / t, atol=0.015)
    assert not np.array_equal(selection[0], selection[1]), "each chain draws its own subsample"


def test_accumulate_subsample_keeps_a_fixed_training_size():
    for t in (2, 4, 8):
        assert train_values(make_workflow("accumulate_subsample", n_train=6), t).shape == (N_CHAINS, 6)


def test_fresh_data_trains_on_the_newest_real_and_synthetic_rows():
    for t in (2, 4):
        x = train_values(make_workflow("fresh_data", n_fresh_real=3), t, n_fresh=3)
        assert sorted(x[0]) == [t - 1.0] * N + [REAL + t - 1] * 3 and (x == x[0]).all()


def test_iterative_retraining_is_all_real_plus_lambda_times_as_many_latest_synthetic():
    x = train_values(make_workflow("iterative_retraining", synthetic_ratio=0.5), 4, n=8)
    assert x.shape == (N_CHAINS, 8 + 4)
    assert (sorted_rows(x)[:, :4] == 3.0).all() and (sorted_rows(x)[:, 4:] == REAL).all()
    full = train_values(make_workflow("iterative_retraining", synthetic_ratio=1.0), 4, n=8)
    assert sorted(full[0]) == [3.0] * 8 + [REAL] * 8


def test_real_fraction_keeps_a_real_share_of_a_fixed_size_training_set():
    x = train_values(make_workflow("real_fraction", n_train=8, real_fraction=0.25), 5, n=8)
    assert x.shape == (N_CHAINS, 8)
    assert ((x == REAL).sum(axis=1) == 2).all() and ((x == 4.0).sum(axis=1) == 6).all()


def test_statistics_shortcuts_are_offered_only_where_exact():
    update = {name: preset(name).update for name in PRESETS}
    assert update == {"replace": "replace", "accumulate": "merge", "accumulate_subsample": None,
                      "fresh_data": "replace", "iterative_retraining": None, "real_fraction": None}
    with pytest.raises(SpecError, match=r"n_train must be null unless workflow is one of \{accumulate_subsample, real_fraction\}"):
        make_workflow("replace", n_train=4)


@pytest.mark.parametrize("knob", KNOBS)
def test_one_check_of_which_knobs_a_workflow_takes(knob):
    """A spec's chain block and make_workflow refuse a knob a preset does not take with
    the same SpecError (the check lives in workflows.check_knobs only)."""
    from collapse_ray.spec import parse_spec

    value = {"n_train": 5, "synthetic_ratio": 0.5, "real_fraction": 0.5, "n_fresh_real": 3}[knob]
    for name, (_, takes) in PRESETS.items():
        if knob in takes:
            make_workflow(name, **{knob: value})
            continue
        with pytest.raises(SpecError) as direct:
            make_workflow(name, **{knob: value})
        with pytest.raises(SpecError) as in_spec:
            parse_spec({"task": {"name": "gaussian"}, "chain": {"workflow": name, knob: value}})
        assert str(in_spec.value) == str(direct.value).replace("workflow.", "chain.", 1)
        assert in_spec.value.field == f"chain.{knob}"
    with pytest.raises(SpecError, match="unknown knob 'n_trian'"):
        make_workflow("accumulate_subsample", n_trian=5)


def test_pool_without_history_keeps_only_the_newest_iteration():
    pool = toy_pool(2, n=3, n_fresh=1, keep_history=False)
    assert len(pool) == 4 and set(pool.take(slice(None))["x"].ravel()) == {2.0, 102.0}
    replace = make_workflow("replace")
    assert np.array_equal(pool.take(replace.select(pool.index, 3, None))["x"], np.full((N_CHAINS, 3), 2.0))
