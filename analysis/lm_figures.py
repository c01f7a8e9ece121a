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

Means with +-1 standard-error bands over every run of a cell: seeds, and in Fig. 5
also the synthetic pools. Called by analysis/figures.py.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LM_TASKS = ("pretraining", "sft")
ORDER = ("replace", "accumulate_subsample", "accumulate")
COLORS = {"replace": "tab:red", "accumulate_subsample": "tab:orange", "accumulate": "tab:blue"}


def _mean_se(frame: pd.DataFrame, keys: list[str], metric: str = "test_loss") -> pd.DataFrame:
    grouped = frame.groupby(keys, dropna=False)[metric]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    out["se"] = out["std"] / np.sqrt(out["count"])
    return out


ABLATIONS = ("temperature", "epochs", "generation")  # (B)'s ablation fields: a panel each


def _panel_keys(rows: pd.DataFrame, first: str) -> list[str]:
    """`first` and the ablation fields that take more than one value in `rows`."""
    keys = [first] if first in rows else []
    return keys + [k for k in ABLATIONS if k in rows and rows[k].astype(str).nunique() > 1]


def plot_workflows(rows: pd.DataFrame, title: str, panel_key: str = "model") -> plt.Figure:
    """Test loss over iterations, a line per workflow, a panel per value of `panel_key`
    (and of each ablation field that varies)."""
    keys = _panel_keys(rows, panel_key)
    labels = rows[keys].astype(str).agg(", ".join, axis=1) if keys else pd.Series("all", index=rows.index)
    panels = sorted(labels.unique())
    columns = min(len(panels), 4)
    n_rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(5 * columns, 4 * n_rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        sub = rows[labels == panel]
        summary = _mean_se(sub, ["workflow", "iteration"])
        for workflow in [w for w in ORDER if w in set(summary.workflow)] + sorted(set(summary.workflow) - set(ORDER)):
            line = summary[summary.workflow == workflow].sort_values("iteration")
            color = COLORS.get(workflow)
            ax.plot(line.iteration, line["mean"], marker="o", color=color, label=workflow)
            if line["count"].max() > 1:
                ax.fill_between(line.iteration, line["mean"] - line.se, line["mean"] + line.se, color=color, alpha=0.2)
        ax.set_xlabel("model-fitting iteration")
        ax.set_ylabel("test loss (nats/token, held-out real)")
        ax.set_title(", ".join(f"{k} = {v}" for k, v in zip(keys, panel.split(", "))) if keys else title, fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_fig3(rows: pd.DataFrame) -> plt.Figure:
    """(A)'s Fig. 3: iterations on x, log y, a line per model, the workflows side by side."""
    workflows = [w for w in ORDER if w in set(rows.workflow)] + sorted(set(rows.workflow) - set(ORDER))
    models = sorted(rows["model"].astype(str).unique()) if "model" in rows else ["model"]
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(workflows), figsize=(5 * len(workflows), 4), squeeze=False, sharey=True)
    for ax, workflow in zip(axes[0], workflows):
        sub = rows[rows.workflow == workflow]
        for i, model in enumerate(models):
            line = _mean_se(sub[sub["model"].astype(str) == model] if "model" in sub else sub, ["iteration"])
            color = cmap(i / max(1, len(models) - 1) * 0.85)
            ax.plot(line.iteration, line["mean"], marker="o", color=color, label=model)
            if line["count"].max() > 1:
                ax.fill_between(line.iteration, line["mean"] - line.se, line["mean"] + line.se, color=color, alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("model-fitting iteration")
        ax.set_title(workflow)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="model", fontsize=8)
    axes[0][0].set_ylabel("validation loss (nats/token, log)")
    fig.suptitle("SFT: validation loss over iterations (Fig. 3; Fig. 4: accumulate_subsample)")
    fig.tight_layout()
    return fig


def value_grid_rows(rows: pd.DataFrame) -> pd.DataFrame:
    if "value_pool_size" not in rows:
        return rows.iloc[:0]
    return rows[pd.to_numeric(rows["value_pool_size"], errors="coerce").fillna(0) > 0]


def plot_fig5(rows: pd.DataFrame) -> plt.Figure:
    """Validation loss against n_real, a curve per number of synthetic rows."""
    summary = _mean_se(rows, ["n_real", "value_synthetic"])
    fig, ax = plt.subplots(figsize=(7, 5))
    synthetic = sorted(summary.value_synthetic.unique())
    cmap = plt.get_cmap("viridis")
    for i, n_syn in enumerate(synthetic):
        line = summary[summary.value_synthetic == n_syn].sort_values("n_real")
        color = cmap(i / max(1, len(synthetic) - 1))
        ax.plot(line.n_real, line["mean"], marker="o", color=color, label=f"{int(n_syn)} synthetic")
        if line["count"].max() > 1:
            ax.fill_between(line.n_real, line["mean"] - line.se, line["mean"] + line.se, color=color, alpha=0.15)
    positive = summary.n_real[summary.n_real > 0]
    ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1.0)
    ax.set_yscale("log")
    ax.set_xlabel("number of real rows (symlog; 0 at the left)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"Value of synthetic data (Fig. 5); bands: +-1 s.e. over {_runs_per_cell(rows)}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _runs_per_cell(rows: pd.DataFrame) -> str:
    pools = rows["value_pool"].nunique() if "value_pool" in rows else 1
    seeds = rows["seed"].nunique() if "seed" in rows else 1
    return f"{pools} pool{'s' * (pools != 1)} x {seeds} seed{'s' * (seeds != 1)}"


def plot_fig5_proportion(rows: pd.DataFrame) -> plt.Figure:
    """Validation loss against the proportion of real rows in the training set, a
    curve per number of real rows (adding synthetic rows moves a curve left)."""
    frame = rows.assign(total=rows.n_real + rows.value_synthetic)
    frame = frame[frame.total > 0].assign(proportion=lambda f: f.n_real / f.total)
    summary = _mean_se(frame, ["n_real", "value_synthetic", "proportion"])
    fig, ax = plt.subplots(figsize=(7, 5))
    reals = sorted(summary.n_real.unique())
    cmap = plt.get_cmap("plasma")
    for i, n_real in enumerate(reals):
        line = summary[summary.n_real == n_real].sort_values("proportion")
        color = cmap(i / max(1, len(reals) - 1) * 0.9)
        ax.plot(line.proportion, line["mean"], marker="o", color=color, label=f"{int(n_real)} real")
        if line["count"].max() > 1:
            ax.fill_between(line.proportion, line["mean"] - line.se, line["mean"] + line.se, color=color, alpha=0.15)
    ax.set_yscale("log")
    ax.set_xlabel("proportion of real rows in the training set")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"Fig. 5: loss vs real proportion; bands: +-1 s.e. over {_runs_per_cell(rows)}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_fig5_heatmap(rows: pd.DataFrame) -> plt.Figure:
    summary = _mean_se(rows, ["n_real", "value_synthetic"])
    grid = summary.pivot(index="value_synthetic", columns="n_real", values="mean").sort_index()
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * grid.shape[1], 1.0 + 0.45 * grid.shape[0]))
    image = ax.imshow(grid.values, origin="lower", aspect="auto", cmap="magma_r")
    ax.set_xticks(range(grid.shape[1]), [str(int(c)) for c in grid.columns], rotation=45)
    ax.set_yticks(range(grid.shape[0]), [str(int(r)) for r in grid.index])
    for (i, j), value in np.ndenumerate(grid.values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value > np.nanmean(grid.values) else "black")
    ax.set_xlabel("real rows")
    ax.set_ylabel("synthetic rows")
    ax.set_title(f"Validation loss (Fig. 5), mean over {_runs_per_cell(rows)}", fontsize=9)
    fig.colorbar(image, ax=ax, label="nats/token")
    fig.tight_layout()
    return fig


def write_figures(table: pd.DataFrame, out: Path) -> list[Path]:
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
                written.append(_save(figure, out / "pretraining_workflows.png"))
            else:
                written.append(_save(plot_fig3(chains), out / "fig3_sft.png"))
        if not grid.empty:
            written.append(_save(plot_fig5(grid), out / "fig5_value_grid.png"))
            written.append(_save(plot_fig5_proportion(grid), out / "fig5_value_proportion.png"))
            written.append(_save(plot_fig5_heatmap(grid), out / "fig5_value_heatmap.png"))
    return written


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
