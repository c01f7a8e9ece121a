"""A sweep's answer: its cells (grid points, the seed blocks of one combined), their means
over seeds per iteration (collapse_ray.core.aggregate, the one rule), the last iteration's
table with the closed forms, and the lines `collapse-ray run` ends with.

A cell is every swept axis but the seeds and Fig. 5's synthetic pools (`task.value_pool`,
averaged like seeds: the figure's question is over n_real and value_synthetic). Its means
are over all its chains with equal weight, so a grown sweep's 50-seed and 10-seed blocks
count by their seeds, never as two equal runs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from collapse_ray.core import aggregate
from collapse_ray.core.jobs import ChainJob
from collapse_ray.sweep.layout import SweepFolder

REPLICATE_AXES = ("task.value_pool",)  # averaged over like seeds
NOT_METRICS = frozenset({"seed", "iteration", "run_id", "sweep_run_id"})
HEADLINE = {"gaussian": "cov_trace_ratio", "discrete": "gini_simpson"}  # else test_loss
WITHIN_SE = 3.0  # a closed form "holds" where |mean - closed form| <= 3 SE
MAX_LINES = 12  # terminal lines of the answer; the rest is in the table on the sweep run
ABBREVIATIONS = {"replace": "rep", "accumulate": "acc", "accumulate_subsample": "accsub"}
NAME_WIDTH = 15  # the MLflow runs table cuts run names about here


@dataclass(frozen=True)
class Cell:
    """One line of the sweep's view: a grid point less its replicate axes."""

    name: str  # e.g. "acc nr20"
    workflow: str
    task: str
    swept: tuple[tuple[str, Any], ...]  # (dotted key, value), replicate axes left out
    point_keys: tuple[str, ...]  # the grid points (results-table run_key) it combines
    job: ChainJob  # one job of it, for its params and settings


def _short(field: str, value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "".join(part[:1] for part in field.split("_")) + f"{value:g}"
    return str(value).rstrip("/").rsplit("/", 1)[-1]


def sweep_cells(jobs: Sequence[ChainJob]) -> list[Cell]:
    """The sweep's cells in grid order, named as the chain runs are ("acc nr20")."""
    grouped: dict[tuple, list[ChainJob]] = {}
    for job in jobs:
        swept = tuple((k, v) for k, v in job.point.swept if k not in REPLICATE_AXES)
        grouped.setdefault((job.point.chain.workflow, job.point.task.name, swept), []).append(job)
    cells = []
    for (workflow, task, swept), members in grouped.items():
        parts = [ABBREVIATIONS.get(workflow, workflow)]
        parts += [_short(k.split(".", 1)[1], v) for k, v in swept if k not in ("task.name", "chain.workflow")]
        cells.append(Cell(" ".join(parts), workflow, task, swept,
                          tuple(dict.fromkeys(j.point.key for j in members)), members[0]))
    if len({c.name[:NAME_WIDTH] for c in cells}) < len(cells):  # too many axes to tell apart: numbered
        width = len(str(len(cells)))
        cells = [dataclasses.replace(c, name=f"{i:0{width}d} {c.name}") for i, c in enumerate(cells, 1)]
    return cells


def metric_columns(table: pd.DataFrame, jobs: Sequence[ChainJob]) -> list[str]:
    from collapse_ray.tracking.params import job_params

    settings = {key for job in jobs for key in job_params(job)}
    return [c for c in table.columns if c not in settings | NOT_METRICS and pd.api.types.is_numeric_dtype(table[c])]


def cell_means(table: pd.DataFrame, cells: Sequence[Cell], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (cell, iteration, metric): mean, se, count (finite chains), total."""
    index = {key: i for i, cell in enumerate(cells) for key in cell.point_keys}
    rows = table[table["run_key"].isin(index)]
    frames = []
    for metric in metrics:
        keyed = pd.DataFrame({"cell": rows["run_key"].map(index).to_numpy(), "iteration": rows["iteration"].to_numpy(),
                              "value": rows[metric].astype(np.float64).to_numpy()})
        grouped = keyed.groupby(["cell", "iteration"], sort=True)
        stats = aggregate.mean_se(keyed["value"].to_numpy(), grouped.ngroup().to_numpy(), grouped.ngroups)
        out = grouped.size().index.to_frame(index=False)
        out["metric"], out["mean"], out["se"], out["count"], out["total"] = (
            metric, stats.mean, stats.se, stats.count, stats.total)
        frames.append(out)
    out = pd.concat(frames, ignore_index=True)
    out["cell"] = out["cell"].map(lambda i: cells[i].name)
    return out


def closed_form(cell: Cell, metric: str, iteration: int) -> float | None:
    """E[metric] at `iteration` where a closed form is known (analysis.closed_forms)."""
    from analysis import closed_forms
    from collapse_ray.tracking.params import job_params

    cfg = job_params(cell.job)
    try:
        value = closed_forms.expected(cell.task, metric, cell.workflow, cfg, np.array([iteration]))
    except (KeyError, TypeError, ValueError):
        return None
    return None if value is None else float(np.asarray(value).ravel()[0])


def last_iteration_table(means: pd.DataFrame, cells: Sequence[Cell]) -> pd.DataFrame:
    """Per cell and metric at the cell's last iteration: mean, se, chains, closed form
    (NaN where none is known), and the swept values as columns."""
    by_name = {c.name: c for c in cells}
    last = means[means["iteration"] == means.groupby("cell")["iteration"].transform("max")]
    rows = []
    for record in last.itertuples(index=False):
        cell = by_name[record.cell]
        if record.metric.endswith("_se"):
            continue
        theory = closed_form(cell, record.metric, int(record.iteration))
        # a swept value under its field name (MLflow's table view reads a dotted column as nested)
        rows.append({"cell": cell.name, "workflow": cell.workflow,
                     **{k.split(".", 1)[1]: v for k, v in cell.swept if k not in ("chain.workflow", "task.name")},
                     "iteration": int(record.iteration), "metric": record.metric, "mean": record.mean, "se": record.se,
                     "chains": int(record.count), "of": int(record.total),
                     "closed_form": np.nan if theory is None else theory})
    frame = pd.DataFrame(rows)
    return frame if frame.empty else frame.sort_values(["metric", "cell"], kind="stable", ignore_index=True)


TABLE_FIELDS = frozenset({"cell", "workflow", "iteration", "metric", "mean", "se", "chains", "of", "closed_form"})


def setting_columns(last: pd.DataFrame) -> list[str]:
    """The swept values (other than the workflow) of a last_iteration_table."""
    return [c for c in last.columns if c not in TABLE_FIELDS]


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else str(value)
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"


def _with_se(mean: float, se: float) -> str:
    return _number(mean) + ("" if not math.isfinite(se) else f" ± {_number(se)}")


def expected_claim(description: str) -> str | None:
    """The spec header's "Expected:" sentence(s), joined into one line."""
    match = re.search(r"Expected:(.*?)(?:\n\s*\n|\n[A-Z][\w -]*:|\Z)", description, re.S)
    return " ".join(match.group(1).split()) if match else None


def answer_lines(last: pd.DataFrame, cells: Sequence[Cell], description: str = "") -> list[str]:
    """What `collapse-ray run` ends with: the headline metric of every cell at its last
    iteration, a line per setting of the other axes with the workflows side by side
    (closed forms in brackets), and whether the header's "Expected:" claim holds."""
    if last.empty:
        return ["no finished chains: nothing to summarise"]
    lines = []
    task = cells[0].task
    metric = HEADLINE.get(task, "test_loss")
    if metric not in set(last["metric"]):
        metric = "test_loss" if "test_loss" in set(last["metric"]) else sorted(set(last["metric"]))[0]
    shown = last[last["metric"] == metric]
    others = setting_columns(shown)
    groups = shown.groupby(others, sort=False, dropna=False) if others else [((), shown)]
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        setting = " ".join(f"{k}={_number(v) if isinstance(v, float) else v}"
                           for k, v in zip(others, values))
        parts = []
        group = group.sort_values("workflow", key=lambda w: w.map(_workflow_rank), kind="stable")
        for row in group.itertuples(index=False):
            theory = "" if not math.isfinite(row.closed_form) else f" (theory {_number(row.closed_form)})"
            parts.append(f"{row.workflow} {_with_se(row.mean, row.se)}{theory}")
        t = int(group["iteration"].max())
        lines.append(f"t={t} {metric}{' ' + setting if setting else ''}: " + " | ".join(parts))
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES] + [f"... {len(lines) - MAX_LINES} more settings in the sweep run's cells.csv"]
    lines.append(claim_line(last, description, metric))
    return lines


def _workflow_rank(workflow: str) -> int:
    from analysis.style import ORDER  # the papers' order: replace, accumulate-subsample, accumulate, ...

    return ORDER.index(workflow) if workflow in ORDER else len(ORDER)


def claim_checks(last: pd.DataFrame, metric: str) -> list[tuple[str, int, int]]:
    """(what, held, of) for the checks a sweep's result allows: the headline metric's closed
    forms within 3 SE of the mean, and replace's final test_loss above accumulate's in each
    setting."""
    checks = []
    last = last.assign(closed_form=last["closed_form"].astype(float), se=last["se"].astype(float))
    theory = last[(last["metric"] == metric) & np.isfinite(last["closed_form"]) & np.isfinite(last["se"])]
    if not theory.empty:
        held = (theory["mean"] - theory["closed_form"]).abs() <= WITHIN_SE * theory["se"] + 1e-12
        checks.append((f"{metric}'s closed form within {WITHIN_SE:g} SE", int(held.sum()), len(theory)))
    loss = last[last["metric"] == "test_loss"]
    others = setting_columns(loss)
    pairs = held = 0
    for _, group in (loss.groupby(others, dropna=False) if others else [((), loss)]):
        by = dict(zip(group["workflow"], group["mean"]))
        if "replace" in by and "accumulate" in by:
            pairs += 1
            held += int(by["replace"] > by["accumulate"])
    if pairs:
        checks.append(("replace's test_loss above accumulate's", held, pairs))
    return checks


def claim_line(last: pd.DataFrame, description: str, metric: str) -> str:
    claim = expected_claim(description)
    checks = claim_checks(last, metric)
    said = f'Expected: "{claim}"' if claim else "Expected: (the spec header states no claim)"
    if not checks:
        return f"{said} -> not checked (no closed form and no replace/accumulate pair)"
    verdict = "holds" if all(held == of for _, held, of in checks) else "does NOT hold"
    return f"{said} -> {verdict}: " + "; ".join(f"{what} in {held} of {of} cells" for what, held, of in checks)


CELLS_JSON = "cells.json"  # the same rows in MLflow's table format, which the UI shows as a table


RUN_COLOUR_TAG = "mlflow.runColor"  # the colour the MLflow UI draws a run in (what its colour picker sets)


def cell_colours(cells: Sequence[Cell]) -> dict[str, str]:
    """A hex colour per cell: its workflow's colour in the figures, light to dark over
    the workflow's cells in grid order, so the view's lines read as the figures' do
    (MLflow otherwise picks colours that can repeat across workflows)."""
    from matplotlib.colors import to_hex, to_rgb

    from analysis.style import colour

    by_workflow: dict[str, list[str]] = {}
    for cell in cells:
        by_workflow.setdefault(cell.workflow, []).append(cell.name)
    out = {}
    for workflow, names in by_workflow.items():
        base = np.asarray(to_rgb(colour(workflow)))
        for i, name in enumerate(names):
            shade = 0.0 if len(names) == 1 else -0.45 + 0.9 * i / (len(names) - 1)  # lighter .. darker
            out[name] = to_hex(base + (1 - base) * -shade if shade < 0 else base * (1 - shade))
    return out


def log_cell_runs(client, experiment_id: str, sweep_run_id: str, cells: Sequence[Cell], means: pd.DataFrame) -> dict[str, str]:
    """One child run per cell of the sweep (tag collapse_ray.role = cell): per iteration the
    mean over all its chains and the standard error (`test_loss`, `test_loss_se`), the
    chain runs' params less the replicate axes, and how many chains. Cell runs an earlier
    `collapse-ray run` of this sweep logged (before it grew) are deleted first. Returns
    the run id of each cell by name."""
    from mlflow.entities import Metric, Param, RunTag

    from collapse_ray.tracking.layout import CELL_ROLE, CELL_SEEDS_TAG, PARENT_TAG, ROLE_TAG
    from collapse_ray.tracking.params import N_ITERATIONS_TAG, chain_run_params
    from collapse_ray.tracking.sink import MAX_METRICS_PER_BATCH
    from collapse_ray.tracking.view import cell_filter

    for old in client.search_runs([experiment_id], filter_string=cell_filter(sweep_run_id), max_results=5000):
        client.delete_run(old.info.run_id)
    now = int(__import__("time").time() * 1000)
    colours = cell_colours(cells)
    run_ids = {}
    for cell in cells:
        rows = means[means["cell"] == cell.name]
        chains = int(rows["total"].max()) if not rows.empty else 0
        run = client.create_run(experiment_id, run_name=cell.name, tags={
            PARENT_TAG: sweep_run_id, ROLE_TAG: CELL_ROLE, "workflow": cell.workflow, CELL_SEEDS_TAG: str(chains),
            N_ITERATIONS_TAG: str(int(rows["iteration"].max()) if not rows.empty else 0),
            RUN_COLOUR_TAG: colours[cell.name]})
        run_ids[cell.name] = run.info.run_id
        params = [Param(k, v) for k, v in chain_run_params(cell.job).items() if k not in (*REPLICATE_AXES, "run_key")]
        metrics = []
        for record in rows.itertuples(index=False):
            if math.isfinite(record.mean):
                metrics.append(Metric(record.metric, float(record.mean), now, int(record.iteration)))
            if math.isfinite(record.se):
                metrics.append(Metric(f"{record.metric}_se", float(record.se), now, int(record.iteration)))
        for i in range(0, max(len(metrics), 1), MAX_METRICS_PER_BATCH):
            client.log_batch(run.info.run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH],
                             params=params if i == 0 else (), tags=[RunTag("mlflow.note.content",
                                                                            f"Cell {cell.name}: means over {chains} chains")] if i == 0 else ())
        client.set_terminated(run.info.run_id, "FINISHED")
    return run_ids


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
                   jobs: Sequence[ChainJob], swept: Sequence[str], sweep_dir, description: str = "",
                   figures: bool = True, contour=None) -> Conclusion | None:
    """At a sweep's end (finished, failed or interrupted): its cell runs, the saved view over
    them, the last iteration's per-cell table and the figures (in the sweep folder and on
    the sweep run), and the lines the terminal shows. `contour`: an adaptive search's
    estimate (collapse_ray.sweep.contour_search.ContourEstimate), shown with them (`jobs` are then
    the ones it ran)."""
    import json
    import tempfile
    from pathlib import Path

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
    sweep_dir = Path(sweep_dir)
    path = SweepFolder(sweep_dir).cells_table
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
        drawn = [str(p) for p in draw_sweep_figures(client, table, SweepFolder(sweep_dir).figures, sweep_run_id, tracking_uri)]
        if contour is not None:
            drawn.append(str(draw_contour_figure(client, contour, jobs[0], SweepFolder(sweep_dir).figures, sweep_run_id)))
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
    collapse_ray.sweep.contour_search = ran), the others get a run of their own with only these
    (= estimated), so the saved view's contour of p_synthetic_hurts covers the whole grid
    while test_loss's covers the cells that ran. The per-cell table goes on the sweep run
    as contour.json."""
    import json
    import tempfile
    import time
    from pathlib import Path

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
