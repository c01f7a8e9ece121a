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
  crossover s*(n) (theory.linear_regression_crossover) drawn over it;
* `{task}_value_contour.png` (any value-grid task, from an adaptive search's estimate,
  collapse_ray.sweep.contour_search.ContourEstimate; drawn at the sweep's end): P(s synthetic
  rows hurt) over the grid, the estimated contour (P = 0.5) with the band where the side
  is not decided at the search's confidence, the cells that ran marked, and linear
  regression's closed-form contour where it applies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from collapse_ray import theory

from analysis import drawing, lm_figures, style, tables

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
    """L(n, s) - L(n, 0) per cell: mean and s.e. of the per-seed-and-pool differences (the
    one mean/SE rule, tables.mean_se)."""
    keys = ["n_real", "value_pool", "seed"]
    base = frame[frame.value_synthetic == 0].set_index(keys)["test_loss"]
    paired = frame[frame.value_synthetic > 0].join(base.rename("base"), on=keys)
    paired = paired.assign(difference=paired.test_loss - paired.base).dropna(subset=["difference"])
    paired = paired[np.isfinite(paired.difference)]
    summary = tables.mean_se(paired, ["n_real", "value_synthetic"], "difference")
    return summary[["n_real", "value_synthetic", "mean", "se"]]


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


def closed_form_crossover(task) -> Callable[[np.ndarray], np.ndarray] | None:
    """n -> s*(n), the exact contour, for a linear-regression value-grid task (None for others)."""
    if getattr(task, "name", None) != "linear_regression" or task.value_pool_real <= task.dim + 1:
        return None
    m, d, sigma2 = task.value_pool_real, task.dim, task.sigma2
    return lambda n: theory.linear_regression_crossover(n, m, d, sigma2)


def plot_contour(contour, task: str, crossover: Callable[[np.ndarray], np.ndarray] | None = None) -> Figure:
    """An adaptive search's estimate (see the module docstring): colour = P(V > 0) on a fine
    mesh of the GP's posterior, black = its 0.5 level, grey band = undecided at the
    search's confidence; circles are the cells with a side (filled and ringed where they
    ran, coloured by their estimated side, hollow where undecided), triangles below the
    axis the baselines (s = 0) that ran."""
    from matplotlib.colors import TwoSlopeNorm

    cells = contour.cells
    side = cells.candidates
    fig = drawing.figure((8, 6), layout=None)
    ax = fig.subplots()
    n_axis = np.geomspace(cells.n_real[side].min(), cells.n_real[side].max(), 160)
    s_axis = np.geomspace(cells.synthetic[side].min(), cells.synthetic[side].max(), 160)
    n_mesh, s_mesh = np.meshgrid(n_axis, s_axis)
    mean, sd = contour.predict(n_mesh, s_mesh)
    from collapse_ray.level_set import prob_above

    p = prob_above(mean, sd)
    shade = ax.contourf(n_mesh, s_mesh, p, levels=np.linspace(0, 1, 21), cmap="RdBu_r",
                        norm=TwoSlopeNorm(0.5, 0.0, 1.0), alpha=0.6)
    fig.colorbar(shade, ax=ax, label="P(synthetic rows hurt) = P(L(n, s) > L(n, 0))", pad=0.02, ticks=np.linspace(0, 1, 6))
    conf = contour.confidence
    ax.contourf(n_mesh, s_mesh, p, levels=[1 - conf, conf], colors="none", hatches=["////"])
    ax.contour(n_mesh, s_mesh, p, levels=[1 - conf, conf], colors=["0.3"], linewidths=0.8, linestyles=":")
    ax.contour(n_mesh, s_mesh, mean, levels=[0.0], colors=["k"], linewidths=1.6)
    hurts, decided, ran = contour.hurts, contour.decided, contour.ran
    for mask, colour in ((side & hurts, "tab:red"), (side & ~hurts, "tab:blue")):
        sure, unsure = mask & decided, mask & ~decided
        ax.scatter(cells.n_real[sure], cells.synthetic[sure], s=14, c=colour, zorder=3)
        ax.scatter(cells.n_real[unsure], cells.synthetic[unsure], s=14, facecolors="none", edgecolors=colour,
                   zorder=3)
    ran_side = side & ran
    ax.scatter(cells.n_real[ran_side], cells.synthetic[ran_side], s=70, facecolors="none", edgecolors="k",
               linewidths=1.3, zorder=4)
    floor = cells.synthetic[side].min() / 1.8
    baselines = ran & (cells.synthetic == 0) & (cells.n_real > 0)
    ax.scatter(cells.n_real[baselines], np.full(int(baselines.sum()), floor), marker="^", s=45, c="k", zorder=4,
               clip_on=False)
    if crossover is not None:
        n = np.geomspace(cells.n_real[side].min(), cells.n_real[side].max(), 300)
        ax.plot(n, crossover(n), color="tab:green", ls="--", lw=1.6, zorder=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(cells.n_real[side].min() / 1.15, cells.n_real[side].max() * 1.15)
    ax.set_ylim(floor / 1.3, cells.synthetic[side].max() * 1.3)
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    for axis, values in ((ax.xaxis, cells.n_real[side]), (ax.yaxis, cells.synthetic[side])):  # the grid's own values
        ticks = np.unique(values)
        ticks = ticks[:: max(1, int(np.ceil(len(ticks) / 10)))]  # at most ~10 labels an axis
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FuncFormatter(drawing.plain_log_label))
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("number of real rows n")
    ax.set_ylabel("number of synthetic rows s")
    n_ran = int(ran.sum())
    ax.set_title(f"{task}: where synthetic rows stop helping, estimated from {n_ran} of {len(cells)} cells "
                 f"({n_ran / len(cells):.0%})", fontsize=10)
    ax.grid(alpha=0.25, which="both")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color="k", lw=1.6, label="estimated contour (P = 0.5)"),
               Patch(facecolor="none", edgecolor="0.3", hatch="////", label=f"undecided: P in [{1 - conf:.2g}, {conf:.2g}]"),
               Line2D([], [], ls="", marker="o", ms=4, color="tab:red", label="hurts (decided)"),
               Line2D([], [], ls="", marker="o", ms=4, color="tab:blue", label="helps (decided)"),
               Line2D([], [], ls="", marker="o", ms=4, mfc="none", mec="0.3", label="side not decided"),
               Line2D([], [], ls="", marker="o", ms=8, mfc="none", mec="k", label="cell ran"),
               Line2D([], [], ls="", marker="^", ms=6, color="k", label="baseline s = 0 ran")]
    if crossover is not None:
        handles.append(Line2D([], [], color="tab:green", ls="--", lw=1.6, label="closed form: L(n, s) = L(n, 0)"))
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room below for the legend
    return fig
