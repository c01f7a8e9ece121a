"""Where users read results: a sweep as the MLflow UI shows it, and sweeps that grow.

One tiny sweep (2 workflows x 2 seeds x 3 iterations) is run, grown by seeds and then by
iterations with `--resume`, and compared with the larger spec run from scratch; headless
Chromium then opens the grown sweep in a real `mlflow server` and reads what issue 15
asks users to see there.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import collapse_ray
from collapse_ray import cli
from collapse_ray.sweep.spec import parse_spec
from collapse_ray.sweep.plan import check_growable
from collapse_ray.tracking.layout import CELL_SEEDS_TAG, JOB_KEY_TAG
from collapse_ray.tracking.params import chain_run_params, sweep_params
from collapse_ray.tracking.runs import PER_SEED_TABLE
from collapse_ray.tracking.store import client_for
from collapse_ray.tracking.view import VIEW_TAG, cell_filter, read_view_state, run_url, ui_url
from collapse_ray.validation import SpecError
from tests.helpers import free_ports, mlflow_server_env

SCREENSHOTS = Path(os.environ.get("COLLAPSE_RAY_SCREENSHOTS", "/tmp/collapse_ray_screenshots"))
HEADER = "# tinyui: does replace collapse where accumulate_subsample holds? (a test's sweep)"
SPEC = f"""{HEADER}
name: tinyui
task: {{name: gaussian, dim: 2}}
chain: {{n_real: 20, n_iterations: 3}}
seeds: 2
grid:
  chain.workflow: [replace, accumulate_subsample]
"""
GROWN = ("--set", "seeds=4", "--set", "chain.n_iterations=5")


# --- parameters and growth rules (no Ray) ---

def test_parent_and_chain_runs_share_dotted_params_and_leave_unset_ones_out():
    spec = parse_spec({"name": "p", "task": {"name": "gaussian", "dim": 2}, "chain": {"n_real": 20}, "seeds": 2,
                       "grid": {"chain.workflow": ["replace", "accumulate"], "chain.n_real": [20, 50]}})
    parent = sweep_params(json.loads(json.dumps(spec.resolved_dict())))
    child = chain_run_params(spec.jobs()[0])
    for params in (parent, child):
        assert "null" not in params.values() and "None" not in params.values(), params
        assert all(key.split(".", 1)[0] in ("task", "chain", "grid") for key in params if key != "run_key"), params
    assert parent["grid.chain.n_real"] == "[20, 50]" and "chain.n_real" not in parent  # swept: the axis only
    assert child["chain.n_real"] in ("20", "50") and child["task.dim"] == "2"
    assert "chain.n_train" not in child  # unset for replace / accumulate
    assert "chain.n_iterations" not in child  # a tag: a grown sweep changes it


def test_the_real_data_is_named_by_its_source_a_folder_a_hub_id_or_the_task(tmp_path):
    """A local folder (as the paper-scale specs' stand-ins), a hub id, data the task draws."""
    import warnings
    from types import SimpleNamespace

    from collapse_ray.tracking.runs import real_data_datasets

    (tmp_path / "helpsteer2").mkdir()
    points = [SimpleNamespace(task=SimpleNamespace(name="sft", source=str(tmp_path / "helpsteer2"))),
              SimpleNamespace(task=SimpleNamespace(name="sft", source="nvidia/HelpSteer2")),
              SimpleNamespace(task=SimpleNamespace(name="gaussian"))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MLflow's ambiguity warning stays out of the user's output
        local, hub, drawn = real_data_datasets(points)
    assert (local.name, local.source_type, json.loads(local.source)) == (
        "helpsteer2", "local", {"uri": str(tmp_path / "helpsteer2")})
    assert (hub.name, hub.source_type) == ("nvidia/HelpSteer2", "hugging_face")
    assert (drawn.name, drawn.source_type) == ("gaussian (drawn by the task)", "code")


def test_resume_refuses_changes_other_than_more_seeds_or_iterations():
    base = {"name": "g", "task": {"name": "gaussian", "dim": 2}, "chain": {"n_iterations": 3}, "seeds": 2}
    saved = json.loads(json.dumps(parse_spec(base).resolved_dict()))

    def grown(**changes):
        raw = json.loads(json.dumps(base))
        for key, value in changes.items():
            part, _, field = key.partition("__")
            if field:
                raw[part][field] = value
            else:
                raw[part] = value
        return json.loads(json.dumps(parse_spec(raw).resolved_dict()))

    check_growable(saved, grown(seeds=5, chain__n_iterations=7), Path("x"))  # more seeds, more iterations
    for changes, named in [({"task__dim": 3}, "task"), ({"chain__n_real": 10}, "chain.n_real"),
                           ({"seeds": [1, 2]}, "seeds (some were removed)"),
                           ({"chain__n_iterations": 2}, "chain.n_iterations (lowered)")]:
        with pytest.raises(SpecError, match="grows only by") as err:
            check_growable(saved, grown(**changes), Path("x"))
        assert named in str(err.value)


# --- a real sweep, grown, and in the browser ---

def _table(out: Path, tmp: Path, name: str) -> pd.DataFrame:
    assert cli.main(["results", "tinyui", "--out", str(tmp / f"{name}.parquet"), "--results-dir", str(out)]) == 0
    table = pd.read_parquet(tmp / f"{name}.parquet").drop(columns=["run_id", "sweep_run_id"])
    return table.sort_values(["run_key", "seed", "iteration"], ignore_index=True)


@pytest.fixture(scope="module")
def grown_sweep(tmp_path_factory, local_ray):
    """The tiny sweep run, grown by seeds, then by iterations, and the grown spec run from
    scratch: (results folder of the grown one, of the fresh one, seconds per step, output)."""
    tmp = tmp_path_factory.mktemp("grow")
    spec = tmp / "tinyui.yaml"
    spec.write_text(SPEC)
    grown, fresh = tmp / "grown", tmp / "fresh"
    seconds, outputs = {}, {}
    drawing = os.environ.get("COLLAPSE_RAY_SWEEP_FIGURES")
    os.environ["COLLAPSE_RAY_SWEEP_FIGURES"] = "1"  # the grown sweep draws its figures, as a user's does
    try:
        for step, out, args in [("base", grown, ()), ("more seeds", grown, ("--resume", "--set", "seeds=4")),
                                ("more iterations", grown, ("--resume", *GROWN)), ("from scratch", fresh, GROWN)]:
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                code = cli.main(["run", str(spec), "--out", str(out), *args])
            seconds[step] = time.perf_counter() - started
            outputs[step] = printed.getvalue()
            assert code == 0, step
    finally:
        if drawing is None:
            del os.environ["COLLAPSE_RAY_SWEEP_FIGURES"]
        else:
            os.environ["COLLAPSE_RAY_SWEEP_FIGURES"] = drawing
    print(f"\ngrowing tinyui, seconds per step: {seconds}")
    return grown, fresh, seconds, tmp, outputs


@pytest.mark.ray
@pytest.mark.slow
def test_growing_a_sweep_gives_the_table_of_the_larger_spec_run_from_scratch(grown_sweep):
    grown, fresh, seconds, tmp, outputs = grown_sweep
    # the trials the first run finished are said to be kept when the sweep grows, not "done" again
    kept = [line for line in outputs["more seeds"].splitlines() if "already finished, kept" in line]
    assert len(kept) == 2 and all("seeds0-1" in line for line in kept), outputs["more seeds"]
    grown_table, fresh_table = _table(grown, tmp, "grown"), _table(fresh, tmp, "fresh")
    assert len(fresh_table) == 2 * 4 * 5  # workflows x seeds x iterations
    pd.testing.assert_frame_equal(grown_table, fresh_table, check_exact=True)  # bit for bit

    # one sweep run grew (not a second one), its runs hold every iteration exactly once
    client = client_for(f"sqlite:///{grown / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tinyui")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["seeds"] == "0-3"
    children = [r for r in runs if JOB_KEY_TAG in r.data.tags]
    assert len(children) == 4  # the first trials (seeds 0-1) and the new seeds' (2-3), per workflow

    # issue 26, 1: the grown sweep's view has one run per cell, its two seed blocks combined:
    # the mean and standard error over all 4 seeds (not the blocks' average and min-max band)
    state = read_view_state(experiment)
    assert state["searchFilter"] == cell_filter(parents[0].info.run_id) and state["groupBy"] is None
    cells = client.search_runs([experiment.experiment_id], filter_string=state["searchFilter"])
    assert sorted(r.info.run_name for r in cells) == ["accsub", "rep"]
    table = _table(grown, tmp, "grown")
    for cell in cells:
        rows = table[table.workflow == cell.data.tags["workflow"]]
        assert cell.data.tags[CELL_SEEDS_TAG] == "4"
        for metric in ("test_loss", "test_loss_se"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(cell.info.run_id, metric))
            per_seed = rows.groupby("iteration")["test_loss"]
            expected = per_seed.mean() if metric == "test_loss" else per_seed.std(ddof=1) / 2
            assert [s for s, _ in history] == [1, 2, 3, 4, 5]
            assert [v for _, v in history] == pytest.approx(expected.tolist(), rel=1e-9), metric
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_loss")]
        assert sorted(steps) == [1, 2, 3, 4, 5], (run.data.tags[JOB_KEY_TAG], steps)
        assert run.info.status == "FINISHED" and run.data.tags["chain.n_iterations"] == "5"
        # replace (statistics path) ran on from iteration 3; accumulate_subsample keeps no pool
        # when finished, so it reran from iteration 1 (identically: the table above)
        resumed = run.data.tags.get("collapse_ray.resumed_from_iteration")
        assert resumed == ("3" if run.data.params["chain.workflow"] == "replace" else None), run.data.tags


@pytest.fixture(scope="module")
def ui_server(grown_sweep):
    """`mlflow server` on loopback over the grown sweep's own store, as the closing summary says."""
    grown = grown_sweep[0]
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{grown / 'mlflow.db'}"],
        env=mlflow_server_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(server + "/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                pass
            assert time.time() < deadline, "the MLflow server did not start"
            time.sleep(0.3)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.ray
@pytest.mark.slow
def test_mlflow_ui_opens_the_sweep_as_a_researcher_wants_it(grown_sweep, ui_server, browser):
    grown = grown_sweep[0]
    client = client_for(f"sqlite:///{grown / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tinyui")
    assert VIEW_TAG in experiment.tags
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if JOB_KEY_TAG in r.data.tags]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # the sweep's figures, drawn from the sweep and logged on its run (as `make quickstart` does)
    # (the sweep's end drew them into its own folder and logged them: issue 26, 3)
    pngs = sorted(p.name for p in (Path(parent.data.tags["collapse_ray.sweep_dir"]) / "figures").glob("*.png"))
    assert pngs and {a.path for a in client.list_artifacts(parent.info.run_id, "figures")} >= {f"figures/{n}" for n in pngs}
    page = browser.new_page(viewport={"width": 1600, "height": 1000})

    # the link of the closing summary: model-training view, a line per cell of this sweep (its
    # two seed blocks in one run), test_loss first, the standard errors folded away
    page.goto(ui_url(ui_server, experiment.experiment_id), wait_until="load")
    page.get_by_text("Model metrics").first.wait_for(timeout=120_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    page.get_by_text("2 matching runs").first.wait_for(timeout=60_000)  # the cells, not the 4 chain runs
    page.screenshot(path=str(SCREENSHOTS / "ui_sweep_charts.png"))
    text = page.inner_text("body")
    assert "Group: " not in text and "Sessions" not in text and "Judges" not in text  # ungrouped; not the GenAI view
    titles = text[text.index("Model metrics"):].split("\n")
    charts = [line for line in titles if line in {"test_loss", "cov_trace_ratio", "cov_det_ratio", "mean_sq_error"}]
    assert charts and charts[0] == "test_loss", charts
    assert "Standard errors (over seeds)" in text and "test_loss_se" not in text  # folded section
    assert "rep (test_loss)" in text and "accsub (test_loss)" in text  # a legend entry per cell
    assert f"{parent.info.run_name} (" not in text and "Additional runs (" not in text

    # a value-grid sweep's view (Fig. 5's cells, logged into this store as a sweep's end logs
    # them): the contour of test_loss over n_real and value_synthetic, and loss against n_real
    fig5_experiment, _ = log_fig5_standin(f"sqlite:///{grown / 'mlflow.db'}")
    page.goto(ui_url(ui_server, fig5_experiment), wait_until="load")
    page.get_by_text("chain.n_real vs. task.value_synthetic vs. test_loss").first.wait_for(timeout=120_000)  # its title
    page.locator(".js-plotly-plot .contour").first.wait_for(timeout=120_000)  # plotly's contour trace, drawn
    page.get_by_text("12 matching runs").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SCREENSHOTS / "ui_value_grid_contour.png"))
    text = page.inner_text("body")
    assert "chain.n_real vs. test_loss" in text and "rep nr150 vs100" in text  # the scatter; a cell's name
    assert "Step" not in text  # no line charts of one point each

    # the sweep run: its name, its description (the spec's header), commit, version, source, data
    # (the printed link opens it in the model-training layout: the Runs breadcrumb, not GenAI's Evaluations)
    page.goto(run_url(ui_server, experiment.experiment_id, parent.info.run_id), wait_until="load")
    page.get_by_text(parent.info.run_name).first.wait_for(timeout=120_000)
    page.get_by_text("does replace collapse").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SCREENSHOTS / "ui_sweep_run.png"))
    text = page.inner_text("body")
    assert "Evaluation runs" not in text and "Sessions" not in text and "Model training" in text
    assert parent.info.run_name.startswith("tinyui ") and "tinyui.yaml" in text
    assert parent.data.tags["collapse_ray.version"] == collapse_ray.__version__
    assert "mlflow.source.git.commit" in parent.data.tags
    assert "gaussian (drawn by the task)" in text  # the real data, as a dataset input

    # the figure, shown in the sweep run's artifacts
    page.goto(f"{ui_server}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}/artifacts/"
              f"figures/{pngs[0]}", wait_until="load")
    page.get_by_text(pngs[0]).first.wait_for(timeout=120_000)  # in the artifact tree
    # the PNG itself, rendered (MLflow shows it from a blob URL, so found by its size)
    page.wait_for_function("() => [...document.images].some(i => i.complete && i.naturalWidth >= 600)",
                           timeout=120_000)
    page.screenshot(path=str(SCREENSHOTS / "ui_sweep_figure.png"))

    # the runs named by cell, and one chain run's seeds as a table in its artifacts
    page.goto(f"{ui_server}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
              wait_until="load")
    row = page.get_by_role("row").filter(has_text=parent.info.run_name).first
    row.wait_for(timeout=120_000)
    row.locator("button[data-component-id*='runnamecellrenderer']").click()
    names = sorted(r.info.run_name for r in children)
    page.get_by_text(names[0]).first.wait_for(timeout=60_000)
    text = page.inner_text("body")
    assert all(name in text for name in names), (names, text[:2000])
    chain = children[0]
    page.goto(f"{ui_server}/#/experiments/{experiment.experiment_id}/runs/{chain.info.run_id}/artifacts/"
              f"{PER_SEED_TABLE}", wait_until="load")
    page.get_by_text("test_loss").first.wait_for(timeout=120_000)
    page.screenshot(path=str(SCREENSHOTS / "ui_per_seed_table.png"))
    text = page.inner_text("body")
    assert "seed" in text and "iteration" in text
    page.close()
    print(f"\nscreenshots: {SCREENSHOTS}/ui_sweep_charts.png, ui_sweep_run.png, ui_per_seed_table.png")


# --- a value-grid sweep (Fig. 5): its question is a surface ---

ROOT = Path(__file__).resolve().parent.parent


def fig5_standin_loss(n_real: int, value_synthetic: int, pool: int) -> float:
    """A smooth stand-in for the fine-tunes' test loss (falls with real and synthetic rows,
    pools differ a little): the view and the UI are under test here, not the fits, which
    the slow lane's fig5_value_grid_quick runs."""
    return 3.0 - 0.4 * float(np.log1p(n_real / 50)) - 0.1 * float(np.log1p(value_synthetic / 100)) + 0.05 * pool


def log_fig5_standin(uri: str) -> tuple[str, str]:
    """The quick Fig. 5 spec's cells, logged as a sweep's end logs them (cell runs, saved
    view), from a per-chain table of stand-in losses; returns (experiment id, sweep run id)."""
    from collapse_ray.sweep.cells import cell_means, log_cell_runs, sweep_cells
    from collapse_ray.sweep.conclusion import is_value_grid
    from collapse_ray.sweep.spec import load_spec
    from collapse_ray.tracking.layout import SWEEP_TAG
    from collapse_ray.tracking.params import job_params
    from collapse_ray.tracking.store import ensure_experiment
    from collapse_ray.tracking.view import VALUE_GRID, save_sweep_view, sweep_view_inputs

    spec = load_spec(ROOT / "sweeps" / "fig5_value_grid_quick.yaml")
    jobs = spec.jobs()
    assert is_value_grid(jobs)
    client = client_for(uri)
    experiment_id = ensure_experiment(client, spec.name)
    sweep = client.create_run(experiment_id, run_name=f"{spec.name} stand-in", tags={SWEEP_TAG: "standin"})
    table = pd.DataFrame([{**job_params(job), "seed": seed, "iteration": 1,
                           "test_loss": fig5_standin_loss(job.point.chain.n_real, job.point.task.value_synthetic,
                                                          job.point.task.value_pool)}
                          for job in jobs for seed in job.seeds])
    cells = sweep_cells(jobs)
    log_cell_runs(client, experiment_id, sweep.info.run_id, cells, cell_means(table, cells, ["test_loss"]))
    keys, spans, n_cells = sweep_view_inputs(client, experiment_id, sweep.info.run_id)
    save_sweep_view(client, experiment_id, sweep.info.run_id, keys, spans,
                    swept=["chain.n_real", "task.value_synthetic", "task.value_pool"], n_cells=n_cells,
                    value_grid=VALUE_GRID)
    return experiment_id, sweep.info.run_id


def test_a_value_grid_sweeps_view_is_a_contour_over_its_two_axes(tmp_path, migrated_store):
    import shutil

    shutil.copyfile(migrated_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id, sweep_run_id = log_fig5_standin(uri)
    client = client_for(uri)
    state = read_view_state(client.get_experiment(experiment_id))
    charts = {}
    for chart in state["compareRunCharts"]:  # the first chart of each type (the SE scatter comes later)
        charts.setdefault(chart["type"], chart)
    contour = charts["CONTOUR"]
    assert (contour["xaxis"], contour["yaxis"], contour["zaxis"]) == (
        {"key": "chain.n_real", "type": "PARAM"}, {"key": "task.value_synthetic", "type": "PARAM"},
        {"key": "test_loss", "type": "METRIC"})
    assert charts["SCATTER"]["xaxis"] == {"key": "chain.n_real", "type": "PARAM"}
    assert charts["SCATTER"]["yaxis"] == {"key": "test_loss", "type": "METRIC"}
    assert all(c["deleted"] for c in state["compareRunCharts"] if c["type"] == "LINE")  # lone dots: kept away
    # a cell per (n_real, value_synthetic): the two pools and the seed averaged, as the figure does
    cells = client.search_runs([experiment_id], filter_string=state["searchFilter"])
    assert len(cells) == 4 * 3 and state["searchFilter"] == cell_filter(sweep_run_id)
    for cell in cells:
        n_real, synthetic = int(cell.data.params["chain.n_real"]), int(cell.data.params["task.value_synthetic"])
        assert "task.value_pool" not in cell.data.params and cell.data.tags[CELL_SEEDS_TAG] == "2"
        expected = np.mean([fig5_standin_loss(n_real, synthetic, pool) for pool in (0, 1)])
        assert cell.data.metrics["test_loss"] == pytest.approx(expected, rel=1e-12)
