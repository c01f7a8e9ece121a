"""A sweep's end: its cell runs and the saved view over them, the last iteration's per-cell
table, the figures, an adaptive search's estimate shown with them, and the lines the
terminal prints (the cells themselves and their means: sweep/cells.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from collapse_ray.core.jobs import ChainJob
from collapse_ray.sweep.cells import (
    CELLS_JSON, RUN_COLOUR_TAG, Cell, answer_lines, cell_means, last_iteration_table, log_cell_runs, metric_columns,
    sweep_cells,
)
from collapse_ray.sweep.layout import SweepFolder


@dataclass(frozen=True)
class Conclusion:
    """What a sweep's end left: the terminal lines, and where its figures and table went."""

    lines: tuple[str, ...]
    figures: tuple[str, ...]  # PNG paths, also logged on the sweep run under figures/
    table: str  # cells.csv in the sweep folder, also on the sweep run


def is_value_grid(jobs: Sequence[ChainJob]) -> bool:
    swept = {k for job in jobs for k, _ in job.point.swept}
    return {"chain.n_real", "task.value_synthetic"} <= swept


def conclude_sweep(client, tracking_uri: str, experiment_id: str, experiment: str, sweep_run_id: str,
                   jobs: Sequence[ChainJob], swept: Sequence[str], folder: SweepFolder, description: str = "",
                   figures: bool = True, contour=None) -> Conclusion | None:
    """At a sweep's end (finished, failed or interrupted): its cell runs, the saved view over
    them, the last iteration's per-cell table and the figures (in the sweep folder and on
    the sweep run), and the lines the terminal shows. `contour`: an adaptive search's
    estimate (collapse_ray.sweep.contour_search.ContourEstimate), shown with them (`jobs` are then
    the ones it ran)."""
    import json
    import tempfile

    from collapse_ray.tracking.results import results_table
    from collapse_ray.tracking.runs import LOGGED_ARTIFACTS_TAG
    from collapse_ray.tracking.view import VALUE_GRID, save_sweep_view, sweep_view_inputs

    from collapse_ray.validation import SpecError

    try:
        table = results_table(tracking_uri, experiment, sweep_run_id)
    except SpecError:  # no chain finished (an interrupt came first): nothing to summarise
        return None
    cells = sweep_cells(jobs)
    means = cell_means(table, cells, metric_columns(table, jobs))
    run_ids = log_cell_runs(client, experiment_id, sweep_run_id, cells, means)
    if contour is not None:
        log_contour(client, experiment_id, sweep_run_id, cells, run_ids, contour)
    keys, spans, n_cells = sweep_view_inputs(client, experiment_id, sweep_run_id)
    save_sweep_view(client, experiment_id, sweep_run_id, keys, spans, swept=swept, n_cells=n_cells,
                    value_grid=VALUE_GRID if is_value_grid(jobs) else None,
                    contour_metric=P_HURTS if contour is not None else None)
    last = last_iteration_table(means, cells)
    path = folder.cells_table
    last.to_csv(path, index=False)
    client.log_artifact(sweep_run_id, str(path))
    with tempfile.TemporaryDirectory() as tmp:
        shown = last.copy()
        for column in ("mean", "se", "closed_form"):
            shown[column] = shown[column].map(lambda v: None if not math.isfinite(v) else float(f"{v:.6g}"))
        (Path(tmp) / CELLS_JSON).write_text(shown.to_json(orient="split", index=False))
        client.log_artifact(sweep_run_id, str(Path(tmp) / CELLS_JSON))
    logged = json.loads(client.get_run(sweep_run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    entry = {"path": CELLS_JSON, "type": "table"}
    if entry not in logged:
        client.set_tag(sweep_run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*logged, entry]))
    drawn: list[str] = []
    if figures:
        drawn = [str(p) for p in draw_sweep_figures(client, table, folder.figures, sweep_run_id, tracking_uri)]
        if contour is not None:
            drawn.append(str(draw_contour_figure(client, contour, jobs[0], folder.figures, sweep_run_id)))
    lines = answer_lines(last, cells, description)
    if contour is not None:
        lines.insert(0, contour.summary())
    return Conclusion(tuple(lines), tuple(drawn), str(path))


P_HURTS = "p_synthetic_hurts"  # an adaptive search's P(L(n, s) > L(n, 0)) per cell: 0.5 is the contour
CONTOUR_TAG = "collapse_ray.contour_search"  # "ran" or "estimated" on a searched value grid's cell runs
CONTOUR_JSON = "contour.json"
ESTIMATED_COLOUR = "#b4b4b4"  # cells the search did not run: grey in the view, the ones that ran in their workflow's colour


def log_contour(client, experiment_id: str, sweep_run_id: str, cells: Sequence[Cell], run_ids: dict[str, str],
                contour) -> None:
    """An adaptive search's estimate in the MLflow view: on every cell with a side, its
    P(s synthetic rows hurt) (`p_synthetic_hurts`; the contour is its 0.5 level, the cells
    between 1 - confidence and confidence are undecided) and the posterior mean and sd of
    the modelled value; the cells that ran carry it on their own cell runs (tag
    collapse_ray.contour_search = ran), the others get a run of their own with only these
    (= estimated), so the saved view's contour of p_synthetic_hurts covers the whole grid
    while test_loss's covers the cells that ran. The per-cell table goes on the sweep run
    as contour.json."""
    import json
    import tempfile
    import time

    from mlflow.entities import Metric, Param, RunTag

    from collapse_ray.tracking.layout import CELL_ROLE, PARENT_TAG, ROLE_TAG
    from collapse_ray.tracking.runs import LOGGED_ARTIFACTS_TAG

    now = int(time.time() * 1000)
    ran_runs = {}
    for cell in cells:
        swept = dict(cell.swept)
        if "chain.n_real" in swept and "task.value_synthetic" in swept:
            ran_runs[(int(swept["chain.n_real"]), int(swept["task.value_synthetic"]))] = run_ids[cell.name]
    grid = contour.cells
    for i, (n, s) in enumerate(zip(grid.n_real.tolist(), grid.synthetic.tolist())):
        if not grid.candidates[i]:
            if (n, s) in ran_runs:  # a baseline (s = 0), or a cell of n = 0 (no baseline: no side)
                client.set_tag(ran_runs[(n, s)], CONTOUR_TAG, "ran (baseline)" if s == 0 else "ran (no side)")
            continue
        metrics = [Metric(P_HURTS, float(contour.p_hurts[i]), now, 1),
                   Metric("contour_mean", float(contour.mean[i]), now, 1),
                   Metric("contour_sd", float(contour.sd[i]), now, 1)]
        run_id = ran_runs.get((n, s))
        if run_id is not None:
            client.log_batch(run_id, metrics=metrics, tags=[RunTag(CONTOUR_TAG, "ran")])
            continue
        run = client.create_run(experiment_id, run_name=f"est nr{n} vs{s}", tags={
            PARENT_TAG: sweep_run_id, ROLE_TAG: CELL_ROLE, CONTOUR_TAG: "estimated", RUN_COLOUR_TAG: ESTIMATED_COLOUR,
            "mlflow.note.content": f"Cell n_real {n}, value_synthetic {s}: not run; the contour search's estimate"})
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param("chain.n_real", str(n)), Param("task.value_synthetic", str(s))])
        client.set_terminated(run.info.run_id, "FINISHED")
    rows = contour.table()
    columns = list(rows[0]) if rows else []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / CONTOUR_JSON).write_text(json.dumps({"columns": columns,
                                                          "data": [[row[c] for c in columns] for row in rows]}))
        client.log_artifact(sweep_run_id, str(Path(tmp) / CONTOUR_JSON))
    logged = json.loads(client.get_run(sweep_run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    entry = {"path": CONTOUR_JSON, "type": "table"}
    if entry not in logged:
        client.set_tag(sweep_run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*logged, entry]))


def draw_contour_figure(client, contour, job: ChainJob, out, sweep_run_id: str):
    """The search's estimate as a figure (analysis/value_grid_figures.plot_contour), in the
    sweep folder's figures/ and on the sweep run."""
    from analysis import drawing, sweep_run, value_grid_figures

    task = job.point.task
    fig = value_grid_figures.plot_contour(contour, task.name, value_grid_figures.closed_form_crossover(task))
    path = drawing.save(fig, Path(out) / f"{task.name}_value_contour.png")
    client.log_artifact(sweep_run_id, str(path), sweep_run.FIGURES_FOLDER)
    return path


def draw_sweep_figures(client, table: pd.DataFrame, out, sweep_run_id: str, tracking_uri: str) -> list:
    """Every figure that applies (analysis/figures.py), in the sweep's own folder, logged on
    the sweep run under figures/ (what `analysis/figures.py --sweep` also does)."""
    import contextlib
    import io

    from analysis import figures, sweep_run, tables

    try:
        rows = figures.known_tasks(tables.one_sweep_per_chain(table))
    except tables.InputError:
        return []
    with contextlib.redirect_stderr(io.StringIO()):  # its notes ("drawn for ...") are for the figure command
        paths = figures.draw_all(rows, out, tracking_uri)
    for path in paths:
        client.log_artifact(sweep_run_id, str(path), sweep_run.FIGURES_FOLDER)
    return paths
