"""Figures of the neural tasks (vae, diffusion, conformer_diffusion) from a `collapse-ray
results` table:

* `{task}_workflows.png`: (B)'s image and diffusion panels: held-out test loss over
  model-fitting iterations, a line per workflow, with sample-quality rows below (kernel
  MMD to held-out real data; the digit classifier's confidence where it applies; for
  conformers GeoDiff's COV-R and MAT-R), a column per data set;
* `{task}_{source}_samples.png`: sample grids at iterations 1, 5 and the last, replace
  above accumulate, side by side. They are the per-iteration pictures the chains logged
  to MLflow (samples/iteration_TTT/samples.png of each run's first seed), so these need
  the tracking store (`--tracking-uri`); without one they are skipped with a note.

Means over seeds (of finite values, `analysis.tables`) with +-1 standard-error bands. Called by analysis/figures.py.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import drawing, style, tables

NEURAL_TASKS = ("vae", "diffusion", "conformer_diffusion")
DATA_COLUMN = "source"  # every neural task names its data set `source`
QUALITY = (("mmd", "kernel MMD$^2$ to held-out real (lower is better)"),
           ("classifier_confidence", "digit classifier confidence (higher is sharper)"))
# conformers: both of GeoDiff's measures, each its own row
TASK_QUALITY = {"conformer_diffusion": (("cov_r", "COV-R: references within the RMSD threshold (higher is better)"),
                                        ("mat_r", "MAT-R: mean nearest RMSD, Å (lower is better)"))}
LOSS_LABEL = {"vae": "test loss: -ELBO (nats/image, held-out real)",
              "diffusion": "test loss: denoising MSE (held-out real)",
              "conformer_diffusion": "test loss: denoising MSE (held-out conformers)"}
GRID_ITERATIONS = (1, 5)  # and the last


def plot_workflows(rows: pd.DataFrame, task: str) -> Figure:
    """Test loss (top) and sample quality (bottom) over iterations, a column per data set."""
    datasets = sorted(rows[DATA_COLUMN].astype(str).unique())
    if task in TASK_QUALITY:
        quality = [(m, label) for m, label in TASK_QUALITY[task] if m in rows and rows[m].notna().any()]
    else:
        quality = [(m, label) for m, label in QUALITY if m in rows and rows[m].notna().any()][:1]
    metrics = [("test_loss", LOSS_LABEL[task])] + quality
    width = max(4.5 * len(datasets), 6.0)  # one data set: room for the suptitle
    fig = drawing.figure((width, 3.4 * len(metrics)), layout="tight")
    axes = fig.subplots(len(metrics), len(datasets), squeeze=False)
    for j, data in enumerate(datasets):
        sub = rows[rows[DATA_COLUMN].astype(str) == data]
        for i, (metric, label) in enumerate(metrics):
            ax = axes[i][j]
            if metric not in sub or sub[metric].isna().all():
                ax.set_axis_off()
                continue
            summary = tables.mean_se(sub, ["workflow", "iteration"], metric)
            for workflow in style.ordered(summary.workflow):
                line = summary[summary.workflow == workflow].sort_values("iteration")
                drawing.mean_curve(ax, line, "iteration", style.colour(workflow), style.title(workflow), ms=3)
            ax.set_xlabel("model-fitting iteration")
            ax.set_ylabel(label, fontsize=8)
            ax.set_title(f"{task} on {data}", fontsize=10)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"{task}: replace collapses, accumulate holds" if {"replace", "accumulate"} <= set(rows.workflow)
                 else task)
    return fig


def grid_iterations(last: int) -> list[int]:
    return sorted({t for t in GRID_ITERATIONS if t <= last} | {last})


def plot_sample_grids(pictures: dict[tuple[str, int], Path], title: str) -> Figure:
    """pictures[(workflow, iteration)] -> PNG; a row per workflow, a column per iteration."""
    import matplotlib.image

    workflows = style.ordered({w for w, _ in pictures})
    iterations = sorted({t for _, t in pictures})
    fig = drawing.figure((3.2 * len(iterations), 3.4 * len(workflows)), layout="tight")
    axes = fig.subplots(len(workflows), len(iterations), squeeze=False)
    for i, workflow in enumerate(workflows):
        for j, iteration in enumerate(iterations):
            ax = axes[i][j]
            ax.set_axis_off()
            path = pictures.get((workflow, iteration))
            if path is not None:
                ax.imshow(matplotlib.image.imread(path))
            ax.set_title(f"{style.title(workflow)}, iteration {iteration}", fontsize=9, color=style.colour(workflow))
    fig.suptitle(title)
    return fig


def fetch_pictures(rows: pd.DataFrame, tracking_uri: str, folder: Path) -> dict[tuple[str, int], Path]:
    """The logged samples.png of iterations 1, 5 and the last, for the first run (lowest
    seeds) of replace and accumulate."""
    from collapse_ray.tracking.sink import SAMPLES, iteration_folder
    from collapse_ray.tracking.store import client_for

    client = client_for(tracking_uri)
    last = int(rows["iteration"].max())
    pictures = {}
    for workflow in ("replace", "accumulate"):
        runs = rows[rows.workflow == workflow].sort_values(["seed", "run_id"])
        if runs.empty:
            continue
        run_id = runs["run_id"].iloc[0]
        for iteration in grid_iterations(last):
            target = folder / workflow / str(iteration)
            target.mkdir(parents=True, exist_ok=True)
            try:
                local = client.download_artifacts(run_id, f"{SAMPLES}/{iteration_folder(iteration)}/samples.png",
                                                  str(target))
            except Exception:  # noqa: BLE001 - not logged (an older run): leave the cell empty
                continue
            pictures[(workflow, iteration)] = Path(local)
    return pictures


def write_figures(table: pd.DataFrame, out: Path, tracking_uri: str | None = None, pdf: bool = False) -> list[Path]:
    written = []
    for task in NEURAL_TASKS:
        rows = table[table["task"] == task]
        if rows.empty:
            continue
        written.append(drawing.save(plot_workflows(rows, task), out / f"{task}_workflows.png", pdf))
        if tracking_uri is None:
            print(f"note: {task} sample grids need the MLflow store (--tracking-uri); skipped", file=sys.stderr)
            continue
        for data, sub in rows.groupby(rows[DATA_COLUMN].astype(str)):
            with tempfile.TemporaryDirectory() as tmp:
                pictures = fetch_pictures(sub, tracking_uri, Path(tmp))
                if not pictures:
                    print(f"note: no sample pictures logged for {task} on {data}; grid skipped", file=sys.stderr)
                    continue
                name = f"{task}_{Path(data).name.replace('.', '_')}_samples.png"
                fig = plot_sample_grids(pictures, f"{task} on {data}: samples of the first seed")
                written.append(drawing.save(fig, out / name, pdf))
    return written

