"""Language-model figures from a `collapse-ray results` table:

* `pretraining_workflows.png`: (B)'s pretraining figure, held-out real test loss over
  model-fitting iterations, a line per workflow (replace, accumulate_subsample,
  accumulate), a panel per model (and per ablation: temperature, epochs, generation);
* `fig3_sft.png`: (A)'s Fig. 3, SFT validation loss over iterations (log y), a line
  per model, a panel per workflow (replace and accumulate side by side);
* `fig5_value_grid.png`, `fig5_value_proportion.png` and `fig5_value_heatmap.png`:
  (A)'s Fig. 5 as its notebook 10 draws it: validation loss against the number of real
  rows (symlog x, log y), a curve per number of synthetic rows; against the proportion
  of real data, a curve per number of real rows; and the grid as a heatmap.

Means (of finite values, `analysis.tables`) with +-1 standard-error bands over every
run of a cell: seeds, and in Fig. 5 also the synthetic pools. Called by analysis/figures.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import drawing, style, tables

LM_TASKS = ("pretraining", "sft")


def _mean_se(frame: pd.DataFrame, keys: list[str], metric: str = "test_loss") -> pd.DataFrame:
    return tables.mean_se(frame, keys, metric)


ABLATIONS = ("temperature", "epochs", "generation")  # (B)'s ablation fields: a panel each


def _panel_keys(rows: pd.DataFrame, first: str) -> list[str]:
    """`first` and the ablation fields that take more than one value in `rows`."""
    keys = [first] if first in rows else []
    return keys + [k for k in ABLATIONS if k in rows and rows[k].astype(str).nunique() > 1]


def plot_workflows(rows: pd.DataFrame, title: str, panel_key: str = "model") -> Figure:
    """Test loss over iterations, a line per workflow, a panel per value of `panel_key`
    (and of each ablation field that varies)."""
    keys = _panel_keys(rows, panel_key)
    labels = rows[keys].astype(str).agg(", ".join, axis=1) if keys else pd.Series("all", index=rows.index)
    panels = sorted(labels.unique())
    columns = min(len(panels), 4)
    n_rows = -(-len(panels) // columns)
    fig = drawing.figure((5 * columns, 4 * n_rows), layout="tight")
    axes = fig.subplots(n_rows, columns, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        sub = rows[labels == panel]
        summary = _mean_se(sub, ["workflow", "iteration"])
        for workflow in style.ordered(summary.workflow):
            line = summary[summary.workflow == workflow].sort_values("iteration")
            drawing.mean_curve(ax, line, "iteration", style.colour(workflow), style.title(workflow))
        ax.set_xlabel("model-fitting iteration")
        ax.set_ylabel("test loss (nats/token, held-out real)")
        ax.set_title(", ".join(f"{k} = {v}" for k, v in zip(keys, panel.split(", "))) if keys else title, fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


def plot_fig3(rows: pd.DataFrame) -> Figure:
    """(A)'s Fig. 3: iterations on x, log y, a line per model, the workflows side by side."""
    workflows = style.ordered(rows.workflow)
    models = sorted(rows["model"].astype(str).unique()) if "model" in rows else ["model"]
    colours = style.ramp(models, "viridis", 0.0, 0.85, single=0.0)
    fig = drawing.figure((5 * len(workflows), 4), layout="tight")
    axes = fig.subplots(1, len(workflows), squeeze=False, sharey=True)
    for ax, workflow in zip(axes[0], workflows):
        sub = rows[rows.workflow == workflow]
        for model in models:
            line = _mean_se(sub[sub["model"].astype(str) == model] if "model" in sub else sub, ["iteration"])
            drawing.mean_curve(ax, line, "iteration", colours[model], model)
        ax.set_yscale("log")
        ax.set_xlabel("model-fitting iteration")
        ax.set_title(style.title(workflow))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="model", fontsize=8)
    axes[0][0].set_ylabel("validation loss (nats/token, log)")
    fig.suptitle("SFT: validation loss over iterations (Fig. 3; Fig. 4: accumulate_subsample)")
    return fig


def value_grid_rows(rows: pd.DataFrame) -> pd.DataFrame:
    if "value_pool_size" not in rows:
        return rows.iloc[:0]
    return rows[pd.to_numeric(rows["value_pool_size"], errors="coerce").fillna(0) > 0]


def _fig5_curves(summary: pd.DataFrame, x: str, by: str, cmap: str, stop: float, label) -> tuple[Figure, object]:
    """Fig. 5's line panels: validation loss (log y) against `x`, a curve per value of `by`."""
    fig = drawing.figure((7, 5), layout="tight")
    ax = fig.subplots()
    keys = sorted(summary[by].unique())
    colours = style.ramp(keys, cmap, 0.0, stop, single=0.0)
    for key in keys:
        line = summary[summary[by] == key].sort_values(x)
        drawing.mean_curve(ax, line, x, colours[key], label(key), alpha=0.15)
    ax.set_yscale("log")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return fig, ax


def plot_fig5(rows: pd.DataFrame) -> Figure:
    """Validation loss against n_real, a curve per number of synthetic rows."""
    summary = _mean_se(rows, ["n_real", "value_synthetic"])
    fig, ax = _fig5_curves(summary, "n_real", "value_synthetic", "viridis", 1.0, lambda n: f"{int(n)} synthetic")
    positive = summary.n_real[summary.n_real > 0]
    ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1.0)
    ax.set_xlabel("number of real rows (symlog; 0 at the left)")
    ax.set_title(f"Value of synthetic data (Fig. 5); bands: +-1 s.e. over {_runs_per_cell(rows)}")
    return fig


def _runs_per_cell(rows: pd.DataFrame) -> str:
    pools = rows["value_pool"].nunique() if "value_pool" in rows else 1
    seeds = rows["seed"].nunique() if "seed" in rows else 1
    return f"{pools} pool{'s' * (pools != 1)} x {seeds} seed{'s' * (seeds != 1)}"


def plot_fig5_proportion(rows: pd.DataFrame) -> Figure:
    """Validation loss against the proportion of real rows in the training set, a
    curve per number of real rows (adding synthetic rows moves a curve left)."""
    frame = rows.assign(total=rows.n_real + rows.value_synthetic)
    frame = frame[frame.total > 0].assign(proportion=lambda f: f.n_real / f.total)
    summary = _mean_se(frame, ["n_real", "value_synthetic", "proportion"])
    fig, ax = _fig5_curves(summary, "proportion", "n_real", "plasma", 0.9, lambda n: f"{int(n)} real")
    ax.set_xlabel("proportion of real rows in the training set")
    ax.set_title(f"Fig. 5: loss vs real proportion; bands: +-1 s.e. over {_runs_per_cell(rows)}", fontsize=10)
    return fig


def plot_fig5_heatmap(rows: pd.DataFrame) -> Figure:
    summary = _mean_se(rows, ["n_real", "value_synthetic"])
    grid = summary.pivot(index="value_synthetic", columns="n_real", values="mean").sort_index()
    fig = drawing.figure((1.0 + 0.7 * grid.shape[1], 1.0 + 0.45 * grid.shape[0]), layout="tight")
    ax = fig.subplots()
    image = ax.imshow(grid.values, origin="lower", aspect="auto", cmap="magma_r")
    ax.set_xticks(range(grid.shape[1]), [str(int(c)) for c in grid.columns], rotation=45)
    ax.set_yticks(range(grid.shape[0]), [str(int(r)) for r in grid.index])
    for (i, j), value in np.ndenumerate(grid.values):
        if np.isfinite(value):
            colour = "white" if value > np.nanmean(grid.values) else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("real rows")
    ax.set_ylabel("synthetic rows")
    ax.set_title(f"Validation loss (Fig. 5), mean over {_runs_per_cell(rows)}", fontsize=9)
    fig.colorbar(image, ax=ax, label="nats/token")
    return fig


def write_figures(table: pd.DataFrame, out: Path, pdf: bool = False) -> list[Path]:
    written = []
    for task in LM_TASKS:
        rows = table[table["task"] == task]
        if rows.empty:
            continue
        grid = value_grid_rows(rows)
        chains = rows.drop(grid.index)
        if not chains.empty:
            if task == "pretraining":
                figure = plot_workflows(chains, "Pretraining: test loss over iterations")
                written.append(drawing.save(figure, out / "pretraining_workflows.png", pdf))
            else:
                written.append(drawing.save(plot_fig3(chains), out / "fig3_sft.png", pdf))
        if not grid.empty:
            written.append(drawing.save(plot_fig5(grid), out / "fig5_value_grid.png", pdf))
            written.append(drawing.save(plot_fig5_proportion(grid), out / "fig5_value_proportion.png", pdf))
            written.append(drawing.save(plot_fig5_heatmap(grid), out / "fig5_value_heatmap.png", pdf))
    return written

