"""An adaptive value-grid sweep (`search: {method: level_set}`) end to end: `collapse-ray run`
through real Ray Tune (the ContourSearcher suggesting the cells' jobs) and a real MLflow
store, then grown with `--resume` and a larger budget. The sweep's state file must hold
exactly what ran, the engine's proposals must be the search's own (replayed in-process
from the per-seed losses the results table holds), and the view and the sweep run must
show the estimate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from collapse_ray import cli
from collapse_ray.sweep.contour_search import STATE_FILE, ContourSearch, ValueGridCells
from collapse_ray.sweep.spec import load_spec
from collapse_ray.tracking.layout import PARENT_TAG, ROLE_TAG
from collapse_ray.tracking.results import results_table
from collapse_ray.tracking.store import client_for
from collapse_ray.tracking.view import read_view_state

SPEC = {
    "name": "toy_contour",
    "task": {"name": "linear_regression", "dim": 2, "n_test": 100, "value_pool_size": 128, "value_pool_real": 8},
    "chain": {"n_iterations": 1, "checkpoint_every": 0},
    "seeds": 40,
    "grid": {"chain.n_real": [6, 12, 24, 48], "task.value_synthetic": [0, 8, 16, 32, 64, 128]},
    "search": {"method": "level_set", "budget": 6, "initial": 2},
    "run": {"max_concurrent_trials": 2},
}


def replay(spec_path, state: dict, table, *budgets: int) -> ContourSearch:
    """The search run in-process on the losses the sweep logged, under each budget in turn
    (a grown sweep: stopped at one, resumed with the next): what the engine should have proposed."""
    search = None
    last = table[table["iteration"] == 1].sort_values("seed")
    for budget in budgets:
        spec = load_spec(spec_path, [f"search.budget={budget}"])
        cells = ValueGridCells.from_jobs(spec.jobs())
        search = ContourSearch(cells, spec.search, state["batch_size"], None if search is None else
                               json.loads(json.dumps(search.to_json())))  # through JSON, as the file is
        while (jobs := search.next_jobs()) is not None:
            for job in jobs:
                rows = last[last["run_key"] == job.rsplit("__seeds", 1)[0]]  # the job's one seed block
                search.record(job, rows["seed"].tolist(), rows["test_loss"].tolist())
    return search


@pytest.mark.ray
def test_adaptive_sweep_runs_the_searchs_cells_and_grows(tmp_path, local_ray, migrated_store, capsys):
    import shutil

    spec_path = tmp_path / "toy_contour.yaml"
    spec_path.write_text("# A toy adaptive value grid.\n" + yaml.safe_dump(SPEC, sort_keys=False))
    out = tmp_path / "results"
    out.mkdir()
    shutil.copyfile(migrated_store, out / "mlflow.db")
    assert cli.main(["run", str(spec_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "contour search: ran" in printed and "stopped at the run budget" in printed
    (sweep_dir,) = (out / "toy_contour").iterdir()
    state = json.loads((sweep_dir / STATE_FILE).read_text())
    assert state["stopped"] == "budget" and state["batch_size"] == 2  # 2 concurrent trials, a cell is 1 job
    proposed = {c for batch in state["batches"] for c in batch}
    assert 4 <= len(proposed) <= 6

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = client_for(uri)
    table = results_table(uri, "toy_contour")
    # the chain runs are the proposed cells' jobs, each once; nothing else ran
    assert set(table["run_key"] + "__seeds0-39") == set(state["results"])
    assert len(table) == 40 * len(proposed) and not table.duplicated(["run_key", "seed"]).any()
    # the engine proposed what the search proposes from those losses
    assert replay(spec_path, state, table, 6).batches == state["batches"]

    # the view: P(hurts) over every cell with a side, test_loss where cells ran; the estimate's table
    experiment = client.get_experiment_by_name("toy_contour")
    view = read_view_state(experiment)
    charts = [c for c in view["compareRunCharts"] if not c["deleted"]]
    assert charts[0]["type"] == "CONTOUR" and charts[0]["zaxis"]["key"] == "p_synthetic_hurts"
    sweep_run_id = table["sweep_run_id"].iloc[0]
    cells = client.search_runs([experiment.experiment_id], max_results=500, filter_string=(
        f"tags.`{ROLE_TAG}` = 'cell' and tags.`{PARENT_TAG}` = '{sweep_run_id}'"))
    tags = [run.data.tags.get("collapse_ray.contour_search") for run in cells]
    grid = ValueGridCells.from_jobs(load_spec(spec_path).jobs())
    ran_with_side = sum(bool(grid.candidates[c]) for c in proposed)
    assert tags.count("estimated") == grid.candidates.sum() - ran_with_side and tags.count("ran") == ran_with_side
    assert tags.count("ran (baseline)") == len(proposed) - ran_with_side
    assert all("p_synthetic_hurts" in run.data.metrics for run, tag in zip(cells, tags) if tag in ("ran", "estimated"))
    contour = json.loads(Path(client.download_artifacts(sweep_run_id, "contour.json", str(tmp_path))).read_text())
    assert len(contour["data"]) == 4 * 6 and "p_hurts" in contour["columns"]

    # grown: a larger budget goes on from the state, the first batches kept
    assert cli.main(["run", str(spec_path), "--out", str(out), "--resume", "--set", "search.budget=9"]) == 0
    grown = json.loads((sweep_dir / STATE_FILE).read_text())
    assert grown["batches"][:len(state["batches"])] == state["batches"]
    assert len(proposed) < len({c for batch in grown["batches"] for c in batch}) <= 9
    table = results_table(uri, "toy_contour")
    assert replay(spec_path, grown, table, 6, 9).batches == grown["batches"]
    assert not table.duplicated(["run_key", "seed"]).any()
    assert np.isfinite(table["test_loss"]).all()
