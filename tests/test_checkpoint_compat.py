"""A chain checkpoint written before issue 29's layout (the state class then named
collapse_ray.loop:_State) still resumes, exactly.

The fixtures in tests/data/checkpoint_v1/ were written by the old code:
    run_chain(GaussianTask(dim=2), ChainConfig(workflow="accumulate", n_real=10, n_iterations=3),
              seeds=[0, 1], checkpoint_dir=...)                      # the statistics path
    run_chain(KDETask(), ChainConfig(workflow="accumulate", n_real=10, n_iterations=3, persist_pool=True),
              seeds=[0, 1], checkpoint_dir=...)                      # rows kept in pool shards
Both finished at iteration 3 and can run on (their checkpoint says continues: true).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from collapse_ray.core.chain import ChainConfig
from collapse_ray.core.loop import checkpoint_continues, is_finished, run_chain
from collapse_ray.tasks import GaussianTask, KDETask

FIXTURES = Path(__file__).resolve().parent / "data" / "checkpoint_v1"
SEEDS = [0, 1]
CASES = {
    "gaussian_accumulate": (GaussianTask(dim=2), {}),
    "kde_accumulate": (KDETask(), {"persist_pool": True}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_checkpoint_of_the_old_layout_runs_on_exactly(name, tmp_path):
    task, knobs = CASES[name]
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    state = json.loads((folder / "checkpoint.json").read_text())["state"]
    assert state["dataclass"] == "collapse_ray.loop:_State"  # the old name, as written then
    assert checkpoint_continues(folder) and is_finished(folder, 3) and not is_finished(folder, 5)

    chain = ChainConfig(workflow="accumulate", n_real=10, n_iterations=5, **knobs)
    resumed = run_chain(task, chain, SEEDS, checkpoint_dir=folder)
    fresh_dir = tmp_path / "fresh" if knobs.get("persist_pool") else None
    fresh = run_chain(task, chain, SEEDS, checkpoint_dir=fresh_dir)

    assert resumed.resumed_from == 3
    assert sorted(set(resumed.table.iteration)) == [1, 2, 3, 4, 5]
    pd.testing.assert_frame_equal(resumed.table, fresh.table, check_exact=True)
