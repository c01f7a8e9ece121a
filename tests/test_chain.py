"""The chain config is built and resolved once per grid cell, when the spec is read, and
its jobs carry it: nothing downstream (the job list, the trial count, a pickled job as
tune.with_parameters ships it, the loop) resolves it or builds its policy again."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from collapse_ray.core import chain as chain_module
from collapse_ray.core.chain import ChainConfig
from collapse_ray.core.loop import run_chain
from collapse_ray.sweep.spec import parse_spec
from collapse_ray.validation import as_flat_dict

SPEC = {"task": {"name": "gaussian", "dim": 2}, "chain": {"n_real": 10, "n_iterations": 3}, "seeds": 4,
        "grid": {"chain.workflow": ["replace", "accumulate", "accumulate_subsample"], "chain.n_real": [10, 20]},
        "run": {"seeds_per_trial": 2}}  # several trials per cell


@pytest.fixture
def counted(monkeypatch):
    """Counts of resolutions and of policies built (the real functions, only counted)."""
    counts = {"resolve": 0, "policy": 0}
    resolve, make_workflow = chain_module._resolve, chain_module.make_workflow

    def counting_resolve(chain):
        counts["resolve"] += 1
        return resolve(chain)

    def counting_make_workflow(*args, **kwargs):
        counts["policy"] += 1
        return make_workflow(*args, **kwargs)

    monkeypatch.setattr(chain_module, "_resolve", counting_resolve)
    monkeypatch.setattr(chain_module, "make_workflow", counting_make_workflow)
    return counts


def test_each_cell_is_resolved_once_and_its_jobs_carry_it(counted):
    spec = parse_spec(SPEC)
    cells = len(spec.points)
    assert cells == 6 and counted == {"resolve": cells, "policy": cells}
    jobs = spec.jobs()
    assert len(jobs) == spec.n_trials() > cells  # several trials per cell share its chain
    assert spec.jobs() == jobs and spec.jobs()[0] is jobs[0]  # made once
    shipped = pickle.loads(pickle.dumps({job.key: job for job in jobs}))  # as the object store ships them
    for job in jobs:
        received = shipped[job.key]
        assert received == job and received.point.chain.resolved() is received.point.chain
        run_chain(received.point.task, received.point.chain, received.seeds)
    assert counted == {"resolve": cells, "policy": cells}, "nothing after the spec resolves a chain again"


def test_resolution_is_remembered_but_is_not_configuration(counted):
    given = ChainConfig(workflow="accumulate_subsample", n_real=30)
    resolved = given.resolved()
    assert counted["resolve"] == 1 and given.resolved() is resolved and resolved.resolved() is resolved
    assert (resolved.n_synthetic, resolved.n_train, resolved.n_fresh_real) == (30, 30, 0)
    assert given.policy() is resolved.policy() and counted["policy"] == 1
    assert resolved.policy().n_train == 30 and resolved.policy().name == "accumulate_subsample"
    # equality, hashing and the logged columns see the fields only
    assert resolved == dataclasses.replace(given, n_synthetic=30, n_train=30, n_fresh_real=0)
    assert hash(resolved) == hash(dataclasses.replace(given, n_synthetic=30, n_train=30, n_fresh_real=0))
    assert list(as_flat_dict(resolved)) == [f.name for f in dataclasses.fields(ChainConfig)]
    # a changed copy is a new config: resolved afresh
    longer = dataclasses.replace(resolved, n_iterations=7).resolved()
    assert counted["resolve"] == 2 and longer.n_iterations == 7


def test_the_spec_module_still_offers_the_chain_config():
    from collapse_ray.core import workflows
    from collapse_ray.sweep import spec

    assert spec.ChainConfig is ChainConfig
    # the task-asking rules live with the chain only (workflows do not know tasks)
    assert not hasattr(workflows, "max_rows_held") and not hasattr(workflows, "by_statistics")
