"""Figures of "Collapse or Thrive?" (Kazdan et al.) beyond Fig. 1: KDE (Fig. 2), linear
regression against its closed forms, discrete diversity, the three workflows side by
side (Fig. 4) and the mixing policies. `analysis/figures.py` draws them all from
results tables; this module only holds the functions.

Every function takes the rows of a results table (`collapse-ray results`: one row per
run, seed and iteration) or their summary (`analysis.tables.summarise`: mean and
standard error over seeds of finite values, grouped by every config column that varies,
so different settings are never averaged together), and returns a matplotlib Figure
(`analysis.drawing`). A figure that has no axis for some varying setting (a second noise
level, say) draws one value of it and says which in its title.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from collapse_ray import theory

from analysis import closed_forms, drawing, style, tables
from analysis.drawing import band_handle, colour_handles, finish_axis, legend_below, nonfinite_note, notes_suffix
from analysis.style import CLASSIC, KNOBS
from analysis.tables import fix_settings, label_order

TASKS = ("gaussian", "kde", "linear_regression", "discrete")
DATASETS = ("blobs", "circles", "moons", "swiss_roll")
TASK_TITLES = {"gaussian": "Gaussian", "kde": "KDE", "linear_regression": "linear regression",
               "discrete": "discrete"}
# the settings each figure has axes for (panels, colours, line styles); others are fixed
CHAIN_FREE = ["task", "n_real", "n_synthetic", "workflow", *KNOBS]
KDE_FREE = ["task", "dataset", "bandwidth", "n_real", "n_synthetic", "workflow", *KNOBS]
LR_FREE = ["task", "dim", "n_real", "n_synthetic", "sigma2", "workflow", *KNOBS]
DISCRETE_FREE = ["task", "n_outcomes", "n_real", "n_synthetic", "workflow", *KNOBS]
N_LINE = ["n_real", "n_synthetic"]  # a line per n


def bandwidth_text(label: str) -> str:
    """'h = 0.5', or 'h by the scott rule'."""
    return f"h = {label}" if label_order(label)[0] == 0 else f"h by the {label} rule"


def n_colours(frame: pd.DataFrame) -> tuple[dict, dict]:
    """A viridis colour per (n_real, n_synthetic), light (small n) to dark, and labels."""
    keys = sorted(set(zip(frame["n_real"].astype(int), frame["n_synthetic"].astype(int))))
    return style.n_colours(keys), {k: style.series_label(k[0], k[1]) for k in keys}


N_STYLES = ("-", (0, (5, 2)), ":", "-.", (0, (1, 1)), (0, (3, 1, 1, 1, 1, 1)))


def n_styles(frame: pd.DataFrame) -> tuple[dict, dict]:
    """A line style per (n_real, n_synthetic), smallest n solid, and labels (colour is the workflow)."""
    keys = sorted(set(zip(frame["n_real"].astype(int), frame["n_synthetic"].astype(int))))
    return {k: N_STYLES[i % len(N_STYLES)] for i, k in enumerate(keys)}, {k: style.series_label(k[0], k[1]) for k in keys}


def by_workflow_and_n(line_styles: dict):
    """A draw_lines style (group by N_LINE + workflow): the workflow's colour, n's line style."""
    return lambda g: (style.colour(g["workflow"]), line_styles[(int(g["n_real"]), int(g["n_synthetic"]))])


def n_handles(line_styles: dict, labels: dict) -> list:
    return [Line2D([], [], color="0.3", ls=ls, lw=1.6, label=labels[k]) for k, ls in line_styles.items()]


def by_n(colours: dict, ls: str = "-"):
    """A draw_lines style: colour by n, one line style."""
    return lambda g: (colours[(int(g["n_real"]), int(g["n_synthetic"]))], ls)


def metric_rows(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    return summary[summary["metric"] == metric]


def present(data: pd.DataFrame, order: Sequence[str] = CLASSIC) -> list[str]:
    """The workflows of `order` that the data has."""
    return [w for w in order if w in set(data["workflow"])]


# -- Fig. 2: KDE ------------------------------------------------------------------
KDE_LAYOUTS = ("panels", "grid")


def plot_kde(summary: pd.DataFrame, bandwidth: str, layout: str = "panels") -> Figure:
    """(A)'s Fig. 2 at one bandwidth: test NLL vs iteration, colour = workflow, line style
    = n. layout "panels": one panel per dataset. layout "grid", (A)'s own: datasets in
    rows, workflows in columns, log y."""
    data = summary[(summary["bandwidth"] == bandwidth) & summary["workflow"].isin(CLASSIC)]
    data, notes = fix_settings(data, KDE_FREE, {"dataset": DATASETS})
    data = metric_rows(data, "test_loss")
    found = set(data["dataset"])
    datasets = [d for d in DATASETS if d in found] + sorted(found - set(DATASETS))
    n_line_styles, labels = n_styles(data)
    workflows = present(data)
    # one colour per workflow (as every figure), the sample size by line style
    handles = [Line2D([], [], color=style.colour(w), lw=2, label=style.title(w)) for w in workflows]
    handles += [Line2D([], [], color="0.3", ls=ls, lw=1.6, label=labels[k]) for k, ls in n_line_styles.items()]
    handles.append(band_handle())
    if layout == "grid":
        fig = drawing.figure((3.2 * len(workflows) + 0.6, 2.5 * len(datasets) + 1.0))
        axes = drawing.panel_grid(fig, len(datasets), len(workflows), sharex=True, sharey="row",
                                  titles=[style.title(w) for w in workflows],
                                  ylabels=[f"{d.replace('_', ' ')}\ntest NLL" for d in datasets])
        cells = [[(data[(data["dataset"] == d) & (data["workflow"] == w)], True) for w in workflows]
                 for d in datasets]
        title = f"KDE refitted on its own samples, bandwidth {bandwidth_text(bandwidth)} ((A)'s layout)"
    else:
        fig = drawing.figure((max(3.3 * len(datasets) + 0.4, 6.2), 3.9))
        axes = drawing.panel_grid(fig, 1, len(datasets), titles=[d.replace("_", " ") for d in datasets],
                                  ylabels=["test NLL (held-out real data)"])
        panels = [data[data["dataset"] == d] for d in datasets]
        cells = [[(panel, drawing.wants_log(panel["mean"].to_numpy(dtype=float))) for panel in panels]]
        title = f"KDE refitted on its own samples, bandwidth {bandwidth_text(bandwidth)}"
        if len(datasets) == 1:
            title = title.replace(", bandwidth", ",\nbandwidth")

    def line_style(group):
        return style.colour(group["workflow"]), n_line_styles[(int(group["n_real"]), int(group["n_synthetic"]))]

    for row_axes, row_cells in zip(axes, cells):
        row_values = []
        for ax, (panel, log) in zip(row_axes, row_cells):
            drawn, _ = drawing.draw_lines(ax, panel, N_LINE + ["workflow"], line_style, log)
            row_values.append(drawn)
            nonfinite_note(ax, panel)
        if layout == "grid":  # a shared y per dataset: every panel of the row gets the row's limits
            shared = [v for values in row_values for v in values]
            for ax in row_axes:
                finish_axis(ax, shared, True)
        else:
            for ax, (_, log), drawn in zip(row_axes, row_cells, row_values):
                finish_axis(ax, drawn, log)
    legend_below(fig, handles)
    fig.suptitle(title + notes_suffix(notes), fontsize=11)
    return fig


def kde_bandwidths(summary: pd.DataFrame) -> list[str]:
    return sorted(set(summary.loc[summary["workflow"].isin(CLASSIC), "bandwidth"]), key=label_order)


# -- KDE: test NLL against the bandwidth ((A)'s notebooks 11 and 12) -------------------
BANDWIDTH_STUDY_MIN = 3  # bandwidths a dataset needs before NLL-vs-bandwidth is drawn
BANDWIDTH_ITERATIONS = (1, 10, 100, 1000)  # (A)'s notebooks plot 1 and every 100th


def bandwidth_study_datasets(summary: pd.DataFrame) -> list[str]:
    """Datasets swept over at least BANDWIDTH_STUDY_MIN bandwidths."""
    data = summary[summary["workflow"].isin(CLASSIC)]
    counts = data.groupby("dataset")["bandwidth"].nunique()
    return [d for d in DATASETS if counts.get(d, 0) >= BANDWIDTH_STUDY_MIN] + sorted(
        d for d in counts.index if d not in DATASETS and counts[d] >= BANDWIDTH_STUDY_MIN)


def plot_kde_bandwidth(summary: pd.DataFrame, dataset: str) -> Figure:
    """(A)'s notebooks 11 and 12 for one dataset: test NLL against the bandwidth (fixed
    values on a log axis, joined; then the rules, apart), a row per n, a column per
    workflow, one colour per iteration (1, 10, 100, 1000 where recorded, and the last),
    log y."""
    data = summary[(summary["dataset"] == dataset) & summary["workflow"].isin(CLASSIC)]
    data, notes = fix_settings(data, KDE_FREE)
    data = metric_rows(data, "test_loss")
    labels = sorted(set(data["bandwidth"]), key=label_order)
    numbers = [b for b in labels if label_order(b)[0] == 0]
    rules = [b for b in labels if label_order(b)[0] != 0]
    # fixed bandwidths at their log position, the rules one and two steps to the right
    positions = {b: math.log10(float(b)) for b in numbers}
    right = max(positions.values(), default=0.0)
    positions.update({b: right + 0.75 * (i + 1) for i, b in enumerate(rules)})
    ns = sorted(set(zip(data["n_real"].astype(int), data["n_synthetic"].astype(int))))
    workflows = present(data)
    last = int(data["iteration"].max())
    shown = [t for t in BANDWIDTH_ITERATIONS if t < last] + [last]
    shown = [t for t in shown if (data["iteration"] == t).any()]
    colours = style.ramp(shown, "plasma", 0.0, 0.85, single=0.0)
    fig = drawing.figure((3.3 * len(workflows) + 0.6, 2.3 * len(ns) + 1.1))
    axes = drawing.panel_grid(fig, len(ns), len(workflows), sharex=True, sharey="row", xlabel="bandwidth h",
                              titles=[style.title(w) for w in workflows],
                              ylabels=[f"n = {n_real}\ntest NLL" for n_real, _ in ns])
    for i, (n_real, n_syn) in enumerate(ns):
        row = data[(data["n_real"] == n_real) & (data["n_synthetic"] == n_syn)]
        drawn = []
        for ax, workflow in zip(axes[i], workflows):
            panel = row[row["workflow"] == workflow]
            for t in shown:
                # chains capped below t (accumulate under a rule) have no point at t;
                # the fixed bandwidths are joined by a line, the rules stand alone
                at = panel[panel["iteration"] == t]
                for group, ls in ((numbers, "-"), (rules, "none")):
                    points = at[at["bandwidth"].isin(group)]
                    points = points.assign(x=points["bandwidth"].map(positions)).sort_values("x")
                    mean = points["mean"].to_numpy(dtype=float)
                    se = np.nan_to_num(points["se"].to_numpy(dtype=float))
                    shown_mean = np.where(mean > 0, mean, np.nan)
                    ax.errorbar(points["x"], shown_mean, yerr=se, color=colours[t], marker="o", ms=3.5, lw=1.2,
                                ls=ls, elinewidth=1.0, capsize=2)
                    drawn.append(shown_mean)
        for ax in axes[i]:
            finish_axis(ax, drawn, True)
    for ax in axes[-1]:
        ax.set_xticks([positions[b] for b in labels])
        ax.set_xticklabels([b if b in rules else drawing.plain_log_label(float(b)) for b in labels],
                           rotation=60, fontsize=7)
    handles = [Line2D([], [], color=colours[t], marker="o", lw=1.2, label=f"iteration {t}") for t in shown]
    handles.append(Line2D([], [], color="0.4", marker="|", lw=0, ms=9, label=style.BAND_LABEL))
    legend_below(fig, handles)
    fig.suptitle(f"KDE on {dataset.replace('_', ' ')}: test NLL against the bandwidth ((A)'s notebooks 11, 12)"
                 + notes_suffix(notes), fontsize=11)
    return fig


# -- linear regression against its closed forms -----------------------------------
def regression_cells(summary: pd.DataFrame, most: int = 4) -> list[tuple[int, int, float]]:
    """Up to `most` (d, n, sigma2) cells, theory-bearing ones (n_syn == n, n > d + 1)
    first: d = 10, n = 100, sigma2 = 1 if present, then one cell per other d (closest
    to d = 10 first), each at sigma2 closest to 1 and n closest to max(100, 10 d); then,
    while there is room, other cells in the same order of preference."""
    rows = summary[summary["workflow"].isin(CLASSIC)]
    cells = set(zip(rows["dim"].astype(int), rows["n_real"].astype(int), rows["sigma2"].astype(float),
                    rows["n_real"] == rows["n_synthetic"]))

    def score(cell):
        d, n, s2, same = cell
        return (not (same and n > d + 1), (d, n, s2) != (10, 100, 1.0), abs(math.log(s2)),
                abs(math.log(n) - math.log(max(100, 10 * d))), abs(math.log(d) - math.log(10)), d, n, s2)

    ranked = sorted(cells, key=score)
    best_per_dim = {}
    for cell in ranked:
        best_per_dim.setdefault(cell[0], cell)
    chosen = sorted(best_per_dim.values(), key=lambda c: (score(c)[:2], abs(math.log(c[0]) - math.log(10)), c[0]))
    chosen = chosen[:most]
    chosen += [c for c in ranked if c not in chosen][: most - len(chosen)]
    return [c[:3] for c in chosen]


def plot_regression_theory(summary: pd.DataFrame) -> Figure:
    """Test MSE vs iteration for a few (d, n, sigma2): Monte-Carlo mean +- SE per
    workflow, closed forms dashed, accumulate's (pi^2/6) x iteration-1 bound dotted;
    below, the Monte-Carlo mean divided by the closed form (1 = on theory)."""
    data = summary[summary["workflow"].isin(CLASSIC)]
    data, notes = fix_settings(data, LR_FREE)
    data = metric_rows(data, "test_loss")
    cells = regression_cells(data)
    fig = drawing.figure((3.5 * len(cells) + 0.4, 5.6))
    axes = drawing.panel_grid(fig, 2, len(cells), sharex="col", height_ratios=[2.2, 1],
                              titles=[f"linear regression: d = {d}, n = {n}, $\\sigma^2$ = {s2:g}"
                                      for d, n, s2 in cells],
                              ylabels=["test MSE", "Monte-Carlo mean\n/ closed form"])
    workflows = present(data)
    any_theory = False
    for j, (d, n, s2) in enumerate(cells):
        ax, ratio_ax = axes[0, j], axes[1, j]
        panel = data[(data["dim"] == d) & (data["n_real"] == n) & (data["sigma2"] == s2)]
        panel = panel[panel["n_synthetic"] == n] if (panel["n_synthetic"] == n).any() else panel
        log = drawing.wants_log(panel["mean"].to_numpy(dtype=float))
        panel = panel[panel["workflow"].isin(workflows)]
        drawn, _ = drawing.draw_lines(ax, panel, ["workflow", "n_synthetic", *KNOBS],
                                      lambda g: (style.colour(g["workflow"]), "-"), log,
                                      theory=("linear_regression", "test_loss"), limit=True)
        for _, line in panel.groupby(["workflow", "n_synthetic", *KNOBS], dropna=False):
            line = line.sort_values("iteration")
            t = line["iteration"].to_numpy()
            workflow = line["workflow"].iloc[0]
            truth = closed_forms.expected("linear_regression", "test_loss", workflow, line.iloc[0].to_dict(), t)
            if truth is not None:
                any_theory = True
                colour = style.colour(workflow)
                mean, se = line["mean"].to_numpy(dtype=float), np.nan_to_num(line["se"].to_numpy(dtype=float))
                ratio_ax.plot(t, mean / truth, color=colour, lw=1.4)
                ratio_ax.fill_between(t, (mean - se) / truth, (mean + se) / truth, color=colour, alpha=0.2, lw=0)
        finish_axis(ax, drawn, log)
        nonfinite_note(ax, panel)
        ratio_ax.axhline(1.0, color="0.2", lw=0.9)
        ratio_ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=style.colour(w), lw=2, label=style.title(w)) for w in workflows]
    handles.append(band_handle())
    handles += drawing.theory_handles(any_theory, r"accumulate bound $\frac{\pi^2}{6}\,\sigma^2 d/(n-d-1)$"
                                      if "accumulate" in workflows and any_theory else None)
    legend_below(fig, handles)
    fig.suptitle("Linear regression refitted on its own predictions: Monte Carlo vs closed forms\n"
                 r"($\sigma^2 d\,t/(n-d-1)$ replace, $\sigma^2 d/(n-d-1)\sum_{i\leq t} i^{-2}$ accumulate)"
                 + notes_suffix(notes), fontsize=10)
    return fig


# -- discrete: diversity ----------------------------------------------------------
def plot_discrete(summary: pd.DataFrame) -> Figure:
    """Gini-Simpson index and outcomes with zero mass vs iteration: two rows per K,
    columns = workflows, colour = n; closed forms dashed, accumulate's limit dotted."""
    data = summary[summary["workflow"].isin(CLASSIC)]
    data, notes = fix_settings(data, DISCRETE_FREE)
    workflows = present(data)
    ks = sorted(data["n_outcomes"].astype(int).unique())
    line_styles, labels = n_styles(data)
    rows = [(k, m) for k in ks for m in ("gini_simpson", "n_zero_mass")]
    fig = drawing.figure((3.5 * len(workflows) + 0.4, 2.5 * len(rows) + 0.9))
    axes = drawing.panel_grid(fig, len(rows), len(workflows), sharex=True, sharey="row",
                              titles=[style.title(w) for w in workflows],
                              ylabels=[f"K = {k}\n" + ("Gini-Simpson $1-\\sum_k p_k^2$" if m == "gini_simpson"
                                                       else "outcomes with zero mass") for k, m in rows])
    any_theory = any_limit = False
    for i, (k, metric) in enumerate(rows):
        for ax, workflow in zip(axes[i], workflows):
            panel = data[(data["n_outcomes"] == k) & (data["workflow"] == workflow) & (data["metric"] == metric)]
            _, drawn_theory = drawing.draw_lines(ax, panel, N_LINE + ["workflow"], by_workflow_and_n(line_styles),
                                                 theory=("discrete", metric), limit=True)
            any_theory |= drawn_theory
            any_limit |= any(closed_forms.limit("discrete", metric, workflow, line.iloc[0].to_dict()) is not None
                             for _, line in panel.groupby(N_LINE))
            ax.grid(True, alpha=0.3)
    handles = n_handles(line_styles, labels) + [band_handle()]
    handles += drawing.theory_handles(any_theory, r"accumulate limit $t\to\infty$" if any_limit else None)
    legend_below(fig, handles)
    fig.suptitle("Discrete distributions refitted by counting: diversity\n"
                 r"(closed forms: replace $H_0(1-1/n)^t$, accumulate $H_0\prod_{k\leq t}(1-1/(nk^2))$, $H_0 = 1-1/K$)"
                 + notes_suffix(notes), fontsize=10)
    return fig


# -- discrete: (A)'s collapse protocol (notebook 13) -----------------------------------
COLLAPSED_ENTROPY = 1e-8  # collapse_ray.tasks.discrete's threshold


def collapse_mask(rows: pd.DataFrame) -> pd.Series:
    """Rows of chains that ran until collapse (task.stop_when_collapsed), replace only."""
    if "stop_when_collapsed" not in rows.columns:
        return pd.Series(False, index=rows.index)
    return rows["stop_when_collapsed"].fillna(False).astype(bool) & (rows["workflow"] == "replace")


def collapse_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[collapse_mask(rows)].reset_index(drop=True)


def collapse_times(rows: pd.DataFrame) -> pd.DataFrame:
    """Per chain: K, n, its last iteration and whether it collapsed there (else it met the cap)."""
    keys = ["n_outcomes", "n_real", "seed"] + (["run_key"] if "run_key" in rows.columns else [])
    last = rows.sort_values("iteration").groupby(keys, sort=True).tail(1)
    return pd.DataFrame({"n_outcomes": last["n_outcomes"].astype(int).to_numpy(),
                         "n_real": last["n_real"].astype(int).to_numpy(),
                         "iteration": last["iteration"].astype(int).to_numpy(),
                         "collapsed": (last["entropy"] < COLLAPSED_ENTROPY).to_numpy()})


def carried_to_group_end(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and SE over seeds of `metric` per (K, n, iteration), each chain's last value
    carried on to its group's last iteration (a collapsed chain stays collapsed), as
    (A)'s notebook 13 replicates final rows before averaging."""
    carried = []
    for (k, n), group in rows.groupby(["n_outcomes", "n_real"], sort=True):
        wide = group.pivot_table(index="iteration", columns="seed", values=metric, aggfunc="first").sort_index()
        long = wide.ffill().stack().rename(metric).reset_index()
        carried.append(long.assign(n_outcomes=int(k), n_real=int(n)))
    if not carried:
        return pd.DataFrame()
    out = tables.mean_se(pd.concat(carried, ignore_index=True), ["n_outcomes", "n_real", "iteration"], metric)
    return out[["n_outcomes", "n_real", "iteration", "mean", "se"]]


def plot_discrete_entropy(rows: pd.DataFrame) -> Figure:
    """(A)'s notebook 13: fraction of the initial entropy vs iteration, a panel per K,
    one curve per n, collapsed chains carried at 0."""
    data = carried_to_group_end(rows, "fraction_of_initial_entropy")
    ks = sorted(data["n_outcomes"].unique())
    ns = sorted(data["n_real"].unique())
    colours = style.log_n_palette(ns)
    fig = drawing.figure((3.0 * len(ks) + 0.6, 3.6))
    axes = drawing.panel_grid(fig, 1, len(ks), sharey=True, titles=[f"K = {k} outcomes" for k in ks],
                              ylabels=["fraction of initial entropy"])[0]
    for ax, k in zip(axes, ks):
        for n in ns:
            line = data[(data["n_outcomes"] == k) & (data["n_real"] == n)]
            if line.empty:
                continue
            t, mean, se = line["iteration"].to_numpy(), line["mean"].to_numpy(), np.nan_to_num(line["se"].to_numpy())
            ax.plot(t, mean, color=colours[n], lw=1.6)
            ax.fill_between(t, np.clip(mean - se, 0, 1), np.clip(mean + se, 0, 1), color=colours[n], alpha=0.25, lw=0)
        ax.set_xscale("log")
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=colours[n], lw=2, label=f"n = {n:g}") for n in ns] + [band_handle()]
    legend_below(fig, handles)
    fig.suptitle("Discrete distributions under replace until collapse ((A), notebook 13): "
                 "entropy / ln K\n(a collapsed chain counts as 0 from its collapse on)", fontsize=10)
    return fig


def plot_discrete_collapse_time(rows: pd.DataFrame) -> Figure:
    """(A)'s notebook 13: mean iteration of total collapse vs n, one curve per K, with
    the neutral Wright-Fisher closed form 2n(K-1)ln(K/(K-1)); right: their ratio."""
    times = collapse_times(rows)
    done = times[times["collapsed"]]
    capped = int((~times["collapsed"]).sum())
    ks = sorted(times["n_outcomes"].unique())
    markers = dict(zip(ks, "osD^vP*X"))
    colours = style.ramp(ks, "viridis", 0.0, 0.85, single=0.0)
    fig = drawing.figure((10.0, 4.4))
    left, right = drawing.panel_grid(fig, 1, 2, xlabel="n, samples per iteration",
                                     ylabels=["iterations until one outcome is left"])[0]
    for k in ks:
        stats = tables.mean_se(done[done["n_outcomes"] == k], ["n_real"], "iteration")
        if stats.empty:
            continue
        n = stats["n_real"].to_numpy(dtype=float)
        se = stats["se"].fillna(0).to_numpy()
        closed = theory.discrete_replace_collapse_time(k, n)
        left.errorbar(n, stats["mean"], yerr=2 * se, color=colours[k], marker=markers[k], ms=6, lw=0,
                      elinewidth=1.2, capsize=3, zorder=3)
        grid = np.geomspace(n.min(), n.max(), 50)
        left.plot(grid, theory.discrete_replace_collapse_time(k, grid), color=style.darker(colours[k]),
                  ls=drawing.THEORY_DASH, lw=1.1, zorder=2)
        right.errorbar(n * (1 + 0.04 * (ks.index(k) - len(ks) / 2)), stats["mean"] / closed, yerr=2 * se / closed,
                       color=colours[k], marker=markers[k], ms=5, lw=1, elinewidth=1.2, capsize=3)
    left.set(xscale="log", yscale="log")
    right.axhline(1.0, color="0.2", ls=drawing.THEORY_DASH, lw=1.1)
    # the diffusion's finite-n error, exactly, for K = 2 (an O(n^3) solve: n <= 1000)
    small = [int(n) for n in sorted(times["n_real"].unique()) if 2 <= n <= 1000]
    if small:
        exact = [theory.wright_fisher_two_outcomes_exact(n) / theory.discrete_replace_collapse_time(2, n) for n in small]
        right.plot(small, exact, color="0.45", ls=":", lw=1.4, marker=".", zorder=1)
    right.set(xscale="log", ylabel="mean / closed form")
    for ax in (left, right):
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=colours[k], marker=markers[k], lw=0, label=f"K = {k:g}") for k in ks]
    handles += [Line2D([], [], color="0.3", marker="|", lw=0, ms=10, label="mean over seeds ± 2 SE"),
                Line2D([], [], color="0.2", ls=drawing.THEORY_DASH, lw=1.1,
                       label="Wright-Fisher, diffusion approx. 2n(K-1)ln(K/(K-1))"),
                Line2D([], [], color="0.45", ls=":", lw=1.4, marker=".", label="exact K = 2 chain / diffusion")]
    legend_below(fig, handles)
    note = f"; {capped} chains met the iteration cap before collapsing (left out)" if capped else ""
    fig.suptitle("Time to total collapse under replace (neutral Wright-Fisher, population n)\n"
                 "accumulate never collapses: every real outcome stays in the pool, E[T] = inf" + note, fontsize=10)
    return fig


# -- Fig. 4: the three workflows side by side -------------------------------------
FIG4_TASKS = ("gaussian", "kde", "linear_regression")
FIG4_METRICS = {"gaussian": "cov_trace_ratio", "kde": "test_loss", "linear_regression": "test_loss"}
FIG4_YLABELS = {"gaussian": r"tr $\hat\Sigma_t$ / tr $\Sigma_0$", "kde": "test NLL", "linear_regression": "test MSE"}


def fig4_slice(task: str, summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One setting per task besides n and workflow, and a row title naming it."""
    data = summary[summary["workflow"].isin(CLASSIC) & (summary["metric"] == FIG4_METRICS[task])]
    if task == "kde":
        data, notes = fix_settings(data, CHAIN_FREE, {"dataset": ["moons", *DATASETS], "bandwidth": tables.near_half})
        title = f"KDE, {data['dataset'].iloc[0]}, {bandwidth_text(data['bandwidth'].iloc[0])}"
    else:
        data, notes = fix_settings(data, CHAIN_FREE, {"dim": tables.closest(10), "sigma2": tables.closest(1.0)})
        title = (f"{TASK_TITLES[task]}, d = {int(data['dim'].iloc[0])}, "
                 f"$\\sigma^2$ = {float(data['sigma2'].iloc[0]):g}")
    shown = [n for n in notes if not n.split(" = ")[0] in ("dataset", "bandwidth", "dim", "sigma2")]
    return data, title + ("\n" + ", ".join(shown) if shown else "")


def plot_fig4(summaries: Mapping[str, pd.DataFrame]) -> Figure:
    """(A)'s Fig. 4: columns replace, accumulate-subsample, accumulate; a row per task
    (Gaussian: covariance trace ratio; KDE: test NLL; linear regression: test MSE);
    colour = workflow, line style = n, y shared along a row; closed forms dashed where known."""
    tasks = [t for t in FIG4_TASKS if t in summaries]
    slices = [fig4_slice(task, summaries[task]) for task in tasks]
    fig = drawing.figure((3.4 * len(CLASSIC) + 1.6, 2.9 * len(tasks) + 0.5))
    axes = drawing.panel_grid(fig, len(tasks), len(CLASSIC), sharex="row", sharey="row", title_size=11,
                              titles=[style.title(w) for w in CLASSIC], ylabel_size=9,
                              ylabels=[f"{title}\n{FIG4_YLABELS[task]}" for task, (_, title) in zip(tasks, slices)])
    any_theory = False
    for i, (task, (data, _)) in enumerate(zip(tasks, slices)):
        line_styles, labels = n_styles(data)
        log = task == "gaussian" or drawing.wants_log(data["mean"].to_numpy(dtype=float))
        row_values = []
        for ax, workflow in zip(axes[i], CLASSIC):
            panel = data[data["workflow"] == workflow]
            drawn, drawn_theory = drawing.draw_lines(ax, panel, N_LINE + ["workflow"], by_workflow_and_n(line_styles),
                                                     log, theory=(task, FIG4_METRICS[task]))
            any_theory |= drawn_theory
            row_values += drawn
            if panel.empty:
                ax.text(0.5, 0.5, "not in the tables", transform=ax.transAxes, ha="center", va="center", color="0.5")
            else:
                nonfinite_note(ax, panel)
        for ax in axes[i]:
            finish_axis(ax, row_values, log)
        axes[i, -1].legend(handles=n_handles(line_styles, labels), loc="upper left", bbox_to_anchor=(1.02, 1.0),
                           fontsize=8, frameon=False)
    legend_below(fig, [band_handle()] + drawing.theory_handles(any_theory, None))
    fig.suptitle("Replace, accumulate-subsample (fixed training-set size) and accumulate", fontsize=11)
    return fig


# -- mixing policies ---------------------------------------------------------------
MIXING_METRICS = {"gaussian": ("cov_trace_ratio", "test_loss"), "kde": ("test_loss",),
                  "linear_regression": ("test_loss",), "discrete": ("gini_simpson",)}
MIXING_YLABELS = {
    ("gaussian", "cov_trace_ratio"): r"tr $\hat\Sigma_t$ / tr $\Sigma_0$",
    ("gaussian", "test_loss"): "test NLL\n(mean of finite chains)",
    ("kde", "test_loss"): "test NLL",
    ("linear_regression", "test_loss"): "test MSE",
    ("discrete", "gini_simpson"): "Gini-Simpson",
}


def has_mixing(summary: pd.DataFrame) -> bool:
    return bool(set(summary["workflow"]) - set(CLASSIC))


def plot_mixing(task: str, summary: pd.DataFrame, most_n: int = 3) -> Figure:
    """One line per workflow (and knob setting): metric vs iteration, a row per metric.
    Columns: per n (at most `most_n`), all workflows, then (when replace is there) the
    others without it, on their own y scale. Closed forms of replace and accumulate dashed."""
    data, notes = fix_settings(summary, CHAIN_FREE, {"dim": tables.closest(10), "sigma2": tables.closest(1.0),
                                                     "dataset": ["moons", *DATASETS], "bandwidth": tables.near_half})
    cells = sorted(set(zip(data["n_real"].astype(int), data["n_synthetic"].astype(int))))
    if len(cells) > most_n:
        cells = [cells[i] for i in np.linspace(0, len(cells) - 1, most_n).round().astype(int)]
    zoom = (data["workflow"] == "replace").any() and (data["workflow"] != "replace").any()
    panels = [(cell, False) for cell in cells] if not zoom else [(cell, z) for cell in cells for z in (False, True)]
    metrics = [m for m in MIXING_METRICS[task] if m in set(data["metric"])]
    # a line per workflow and knob setting: the workflow's colour, a line style per setting
    knobs = [k for k in KNOBS if k in data]
    order = {w: i for i, w in enumerate(style.ORDER)}
    keys = sorted({(row[0], tuple(None if style.missing(v) else v for v in row[1:]))
                   for row in data[["workflow", *knobs]].itertuples(index=False, name=None)},
                  key=lambda key: (order.get(key[0], 99), str(key[1])))
    styles, seen, labels = {}, {}, {}
    for key in keys:
        count = seen.get(key[0], 0)
        seen[key[0]] = count + 1
        styles[key] = (style.colour(key[0]), ["-", "--", ":", "-."][count % 4])
        labels[key] = style.workflow_label(key[0], dict(zip(knobs, key[1])))

    def line_style(group):
        return styles[(group["workflow"], tuple(None if style.missing(group[k]) else group[k] for k in knobs))]

    titles = [f"{style.series_label(n_real, n_syn)}: " + ("without replace (zoom)" if zoomed else "all workflows")
              for (n_real, n_syn), zoomed in panels]
    fig = drawing.figure((3.9 * len(panels) + 3.4, 2.9 * len(metrics) + 0.7))
    axes = drawing.panel_grid(fig, len(metrics), len(panels), sharex=True, titles=titles,
                              ylabels=[MIXING_YLABELS.get((task, m), m) for m in metrics])
    any_theory = False
    for i, metric in enumerate(metrics):
        for ax, ((n_real, n_syn), zoomed) in zip(axes[i], panels):
            panel = data[(data["metric"] == metric) & (data["n_real"] == n_real) & (data["n_synthetic"] == n_syn)]
            if zoomed:
                panel = panel[panel["workflow"] != "replace"]
            log = ((task == "gaussian" and metric == "cov_trace_ratio" and not zoomed)
                   or drawing.wants_log(panel["mean"].to_numpy(dtype=float)))
            drawn, drawn_theory = drawing.draw_lines(ax, panel, ["workflow", *knobs], line_style, log,
                                                     theory=(task, metric))
            any_theory |= drawn_theory
            finish_axis(ax, drawn, log)
            nonfinite_note(ax, panel)
    handles = [Line2D([], [], color=styles[k][0], ls=styles[k][1], lw=2, label=labels[k]) for k in keys]
    handles.append(band_handle())
    handles += drawing.theory_handles(any_theory, None)
    fig.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    fig.suptitle(f"Mixing policies, {TASK_TITLES[task]}{describe_setting(data)}" + notes_suffix(notes), fontsize=11)
    return fig


def describe_setting(data: pd.DataFrame) -> str:
    """', d = 2, σ² = 1' for the settings that are the same on every line."""
    parts = []
    for column, name in (("dim", "d"), ("sigma2", r"$\sigma^2$"), ("dataset", "dataset"), ("bandwidth", "h"),
                         ("n_outcomes", "K")):
        if column in data and data[column].nunique() == 1:
            value = data[column].iloc[0]
            parts.append(f"{name} = {value if isinstance(value, str) else format(float(value), 'g')}")
    return (", " + ", ".join(parts)) if parts else ""


# -- files ------------------------------------------------------------------------
def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)
