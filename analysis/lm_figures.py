"""Language-model figures from a `collapse-ray results` table:

* `pretraining_workflows.png`: (B)'s pretraining figure, held-out real test loss over
  model-fitting iterations, a line per workflow (replace, accumulate_subsample,
  accumulate), a panel per model;
* `fig3_sft.png`: (A)'s Fig. 3, SFT validation loss over iterations, replace vs
  accumulate (and accumulate_subsample when present);
* `fig5_value_grid.png` and `fig5_value_heatmap.png`: (A)'s Fig. 5, validation loss
  against the number of real rows, a curve per number of synthetic rows (log axes;
  n_real = 0 sits at the left edge of a symlog axis), and the same grid as a heatmap.

Means over seeds with +-1 standard-error bands. Called by analysis/figures.py.
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


def plot_workflows(rows: pd.DataFrame, title: str, panel_key: str = "model") -> plt.Figure:
    """Test loss over iterations, a line per workflow, a panel per `panel_key` value."""
    panels = sorted(rows[panel_key].astype(str).unique()) if panel_key in rows else ["all"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        sub = rows[rows[panel_key].astype(str) == panel] if panel_key in rows else rows
        summary = _mean_se(sub, ["workflow", "iteration"])
        for workflow in [w for w in ORDER if w in set(summary.workflow)] + sorted(set(summary.workflow) - set(ORDER)):
            line = summary[summary.workflow == workflow].sort_values("iteration")
            color = COLORS.get(workflow)
            ax.plot(line.iteration, line["mean"], marker="o", color=color, label=workflow)
            if line["count"].max() > 1:
                ax.fill_between(line.iteration, line["mean"] - line.se, line["mean"] + line.se, color=color, alpha=0.2)
        ax.set_xlabel("model-fitting iteration")
        ax.set_ylabel("test loss (nats/token, held-out real)")
        ax.set_title(f"{panel_key} = {panel}" if panel_key in rows else title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
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
    ax.set_title("Value of synthetic data (Fig. 5)")
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
    ax.set_title("Validation loss (Fig. 5)")
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
            name, title = (("pretraining_workflows.png", "Pretraining: test loss over iterations") if task == "pretraining"
                           else ("fig3_sft.png", "SFT: validation loss over iterations (Fig. 3)"))
            written.append(_save(plot_workflows(chains, title), out / name))
        if not grid.empty:
            written.append(_save(plot_fig5(grid), out / "fig5_value_grid.png"))
            written.append(_save(plot_fig5_heatmap(grid), out / "fig5_value_heatmap.png"))
    return written


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
