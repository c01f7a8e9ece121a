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
from typing import Any

import numpy as np
import pandas as pd

from collapse_ray.core import aggregate
from collapse_ray.core.jobs import ChainJob

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
