"""Value-grid figures (Fig. 5's protocol) for the toy tasks, from a `collapse-ray results`
table: the rows of a toy task with `value_pool_size > 0` (issue 28, 1).

* `{task}_value_grid.png`, `{task}_value_proportion.png`, `{task}_value_heatmap.png`:
  Fig. 5's three panels as analysis/lm_figures.py draws them for the language models
  (test loss against n_real, a curve per number of synthetic rows; against the real
  proportion; the grid as a heatmap), means +-1 s.e. over seeds and pools. For linear
  regression the closed form (theory.linear_regression_value_grid) is drawn dashed on
  the first;
* `{task}_value_sign.png`: the value of s synthetic rows, L(n, s) - L(n, 0), per cell:
  blue where they help, red where they hurt, hollow where the difference is within 2
  s.e. of 0 (paired per seed and pool), with linear regression's closed-form
  crossover s*(n) (theory.linear_regression_crossover) drawn over it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from collapse_ray import theory

from analysis import drawing, lm_figures, style

TOY_VALUE_TASKS = ("linear_regression", "gaussian")
LOSS_LABEL = {"linear_regression": "test MSE (noise-free held-out points)", "gaussian": "test NLL (held-out real rows)"}


def rows(table: pd.DataFrame) -> pd.DataFrame:
    """The toy tasks' value-grid rows of `table`."""
    if "value_pool_size" not in table:
        return table.iloc[:0]
    size = pd.to_numeric(table["value_pool_size"], errors="coerce").fillna(0)
    return table[table["task"].isin(TOY_VALUE_TASKS) & (size > 0)]


def _setting(frame: pd.DataFrame, key: str):
    values = frame[key].dropna().unique() if key in frame else []
    return values[0] if len(values) == 1 else None


def _regression_settings(frame: pd.DataFrame) -> tuple[int, int, float] | None:
    """(m, d, sigma2) when the rows hold one linear-regression setting with a finite closed form."""
    m, d, sigma2 = (_setting(frame, k) for k in ("value_pool_real", "dim", "sigma2"))
    if m is None or d is None or sigma2 is None or int(m) <= int(d) + 1:
        return None
    return int(m), int(d), float(sigma2)


def plot_grid(frame: pd.DataFrame, task: str) -> Figure:
    fig = lm_figures.plot_fig5(frame)
    ax = fig.axes[0]
    ax.set_ylabel(LOSS_LABEL.get(task, "test loss"))
    ax.set_title(f"{task}: value of synthetic data (Fig. 5's protocol)", fontsize=10)
    settings = _regression_settings(frame) if task == "linear_regression" else None
    if settings is not None:
        m, d, sigma2 = settings
        synthetic = sorted(frame["value_synthetic"].unique())
        colours = style.ramp(synthetic, "viridis", 0.0, 1.0, single=0.0)
        n = np.unique(np.concatenate([np.geomspace(d + 2, max(frame["n_real"].max(), d + 3), 200),
                                      frame["n_real"].to_numpy(dtype=float)]))
        for s in synthetic:
            ax.plot(n, theory.linear_regression_value_grid(n, s, m, d, sigma2), "--", color=colours[s], lw=1,
                    alpha=0.9)
        ax.plot([], [], "k--", lw=1, label="closed form")
        ax.legend(fontsize=7, ncol=2)
    return fig


def value_per_cell(frame: pd.DataFrame) -> pd.DataFrame:
    """L(n, s) - L(n, 0) per cell: mean and s.e. of the per-seed-and-pool differences."""
    keys = ["n_real", "value_pool", "seed"]
    base = frame[frame.value_synthetic == 0].set_index(keys)["test_loss"]
    paired = frame[frame.value_synthetic > 0].join(base.rename("base"), on=keys)
    paired = paired.assign(value=paired.test_loss - paired.base).dropna(subset=["value"])
    paired = paired[np.isfinite(paired.value)]
    grouped = paired.groupby(["n_real", "value_synthetic"])["value"]
    return grouped.agg(mean="mean", se=lambda v: v.std(ddof=1) / np.sqrt(len(v))).reset_index()


def plot_sign(frame: pd.DataFrame, task: str) -> Figure:
    value = value_per_cell(frame)
    fig = drawing.figure((9, 5), layout="tight")
    ax = fig.subplots()
    decided = value["mean"].abs() > 2 * value["se"]
    for mask, colour, label in ((decided & (value["mean"] < 0), "tab:blue", "synthetic rows help"),
                                (decided & (value["mean"] > 0), "tab:red", "synthetic rows hurt")):
        ax.scatter(value.n_real[mask], value.value_synthetic[mask], c=colour, s=40, label=label)
    ax.scatter(value.n_real[~decided], value.value_synthetic[~decided], facecolors="none", edgecolors="grey", s=40,
               label="within 2 s.e. of 0")
    settings = _regression_settings(frame) if task == "linear_regression" else None
    if settings is not None:
        m, d, sigma2 = settings
        n = np.geomspace(d + 2, max(frame["n_real"].max(), d + 3), 300)
        crossover = theory.linear_regression_crossover(n, m, d, sigma2)
        ax.plot(n, crossover, "k-", lw=1.2, label="closed form: L(n, s) = L(n, 0)")
    ax.set_xscale("log")  # n_real = 0 has no L(0, 0) to compare with: never drawn here
    ax.set_yscale("log")
    top = value.value_synthetic.max() if len(value) else 1
    ax.set_ylim(value.value_synthetic.min() / 1.5 if len(value) else 0.5, top * 1.5)
    ax.set_xlabel("number of real rows")
    ax.set_ylabel("number of synthetic rows")
    ax.set_title(f"{task}: sign of L(n, s) - L(n, 0), paired over {lm_figures._runs_per_cell(frame)}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no cell hidden
    return fig


def write_figures(table: pd.DataFrame, out: Path, pdf: bool = False) -> list[Path]:
    written = []
    grid = rows(table)
    for task in TOY_VALUE_TASKS:
        frame = grid[grid["task"] == task]
        if frame.empty:
            continue
        if "iteration" in frame:
            frame = frame[frame["iteration"] == 1]
        written.append(drawing.save(plot_grid(frame, task), out / f"{task}_value_grid.png", pdf))
        proportion = lm_figures.plot_fig5_proportion(frame)
        proportion.axes[0].set_ylabel(LOSS_LABEL.get(task, "test loss"))
        written.append(drawing.save(proportion, out / f"{task}_value_proportion.png", pdf))
        heatmap = lm_figures.plot_fig5_heatmap(frame)
        heatmap.axes[-1].set_ylabel(LOSS_LABEL.get(task, "test loss"))  # the colour bar
        written.append(drawing.save(heatmap, out / f"{task}_value_heatmap.png", pdf))
        written.append(drawing.save(plot_sign(frame, task), out / f"{task}_value_sign.png", pdf))
    return written
