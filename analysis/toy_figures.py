"""Figures of "Collapse or Thrive?" (Kazdan et al.) beyond Fig. 1: KDE (Fig. 2), linear
regression against its closed forms, discrete diversity, the three workflows side by
side (Fig. 4) and the mixing policies. `analysis/figures.py` draws them all from
results tables; this module only holds the functions.

Every function takes the rows of a results table (`collapse-ray results`: one row per
run, seed and iteration) or their summary, and returns a matplotlib Figure drawn on the
Agg canvas without pyplot, so importing this module changes no global state.

Aggregation (`summarise`): mean and standard error (sample sd / sqrt(count)) over seeds
of the finite values of each metric (a test loss is +inf once a fit is degenerate),
grouped by every config column that varies, so different settings are never averaged
together. A figure that has no axis for some varying setting (a second noise level, say)
draws one value of it and says which in its title.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from collapse_ray import theory


def _load_fig1():
    """analysis/fig1_gaussian.py, loaded by path (analysis/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_fig1_gaussian", Path(__file__).with_name("fig1_gaussian.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fig1 = _load_fig1()

TASKS = ("gaussian", "kde", "linear_regression", "discrete")
TASK_METRICS = {
    "gaussian": ("test_loss", "mean_sq_error", "cov_trace_ratio", "cov_det_ratio", "cov_log_det_ratio"),
    # kde also reports the bandwidth it used (`bandwidth_used`: a rule's value changes
    # with n and, under accumulate, with the iteration); the `bandwidth` column is the
    # config field
    "kde": ("test_loss", "train_var", "bandwidth_used"),
    "linear_regression": ("test_loss", "weight_sq_error"),
    "discrete": ("test_loss", "entropy", "fraction_of_initial_entropy", "n_zero_mass", "gini_simpson"),
}
ALL_METRICS = frozenset(m for metrics in TASK_METRICS.values() for m in metrics)
# Not settings: identifiers, the step, and n_iterations (a chain's value at iteration t
# does not depend on how long it runs on afterwards).
ID_COLUMNS = frozenset({"seed", "iteration", "run_key", "run_id", "sweep_run_id", "n_iterations"})
SUMMARY_FIELDS = frozenset({"metric", "mean", "se", "count", "total"})
CLASSIC = ("replace", "accumulate_subsample", "accumulate")
WORKFLOWS = CLASSIC + ("fresh_data", "iterative_retraining", "real_fraction")
KNOBS = ("n_train", "synthetic_ratio", "real_fraction", "n_fresh_real")
CHAIN_COLUMNS = ("task", "workflow", "n_real", "n_synthetic", *KNOBS)
DATASETS = ("blobs", "circles", "moons", "swiss_roll")
TASK_TITLES = {"gaussian": "Gaussian", "kde": "KDE", "linear_regression": "linear regression",
               "discrete": "discrete"}
WORKFLOW_TITLES = {"replace": "replace", "accumulate": "accumulate", "accumulate_subsample": "accumulate-subsample",
                   "fresh_data": "fresh data", "iterative_retraining": "iterative retraining",
                   "real_fraction": "real fraction"}
WORKFLOW_STYLES = {"replace": "-", "accumulate": "--", "accumulate_subsample": ":"}
WORKFLOW_COLOURS = {"replace": "tab:red", "accumulate": "tab:blue", "accumulate_subsample": "tab:green",
                    "fresh_data": "tab:purple", "iterative_retraining": "tab:orange", "real_fraction": "tab:brown"}
XLABEL = "model-fitting iteration t"
LOG_SPAN = 10.0


# -- data -------------------------------------------------------------------------
def bandwidth_label(value) -> str:
    """A KDE bandwidth as a label: numbers as %g ("0.5"), rules as they are ("scott")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "nan" if math.isnan(number) else f"{number:g}"


def bandwidth_text(label: str) -> str:
    """'h = 0.5', or 'h by the scott rule'."""
    return f"h = {label}" if label_order(label)[0] == 0 else f"h by the {label} rule"


def label_order(label: str) -> tuple:
    """Sort key: numeric labels numerically, then words alphabetically."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def task_rows(table: pd.DataFrame, task: str) -> pd.DataFrame:
    """The rows of one task, without the task columns only other tasks fill; a KDE bandwidth
    becomes a string label (CSV mixes numbers and rule names in one column)."""
    rows = table[table["task"] == task]
    keep = rows.notna().any() | rows.columns.isin(CHAIN_COLUMNS)
    rows = rows.loc[:, keep].reset_index(drop=True)
    if task == "kde" and "bandwidth" in rows.columns:
        rows["bandwidth"] = rows["bandwidth"].map(bandwidth_label)
    return rows


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The settings of a table or summary: every column that is not an id, the
    iteration, a metric or a summary statistic."""
    return [c for c in frame.columns if c not in ID_COLUMNS | ALL_METRICS | SUMMARY_FIELDS]


def summarise(rows: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and standard error over seeds, long format, for the rows of one task.

    One row per (setting, iteration, metric), the setting being every config column
    (those that vary split groups; missing values, e.g. n_train under replace, are a
    value of their own), with `mean`, `se` (sample sd / sqrt(count), NaN for a single
    value), `count` (finite values the mean is over) and `total` (all values).
    """
    if metrics is None:
        tasks = rows["task"].unique()
        metrics = [m for task in tasks for m in TASK_METRICS.get(task, ())]
    metrics = list(dict.fromkeys(m for m in metrics if m in rows.columns))
    config = config_columns(rows)
    varying = [c for c in config if rows[c].nunique(dropna=False) > 1]
    constant = {c: rows[c].iloc[0] for c in config if c not in varying}
    keys = varying + ["iteration"]
    long = rows.melt(id_vars=keys, value_vars=metrics, var_name="metric", value_name="value")
    long["value"] = long["value"].astype(np.float64)
    long["finite"] = long["value"].where(np.isfinite(long["value"]))
    grouped = long.groupby(keys + ["metric"], sort=True, dropna=False)
    out = grouped["finite"].agg(mean="mean", sd="std", count="count")
    out["total"] = grouped["value"].size()
    out["se"] = out["sd"] / np.sqrt(out["count"])
    out = out.drop(columns="sd").reset_index()
    for column, value in constant.items():
        out[column] = value
    return out[config + ["iteration", "metric", "mean", "se", "count", "total"]]


def _missing_as_none(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _equals(series: pd.Series, value) -> pd.Series:
    """series == value, where a missing value (None, NaN) equals a missing one."""
    if _missing_as_none(value) is None:
        return series.isna()
    return series == value


def _sorted_values(series: pd.Series) -> list:
    values = list(series.drop_duplicates())
    return sorted(values, key=lambda v: label_order(bandwidth_label(v)))


def fix_settings(frame: pd.DataFrame, free: Sequence[str],
                 prefer: Mapping[str, Sequence | Callable] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Keep one value of each config column that is not one of the figure's axes.

    `free` are the axes (panels, colours, line styles): left alone. A workflow knob
    (n_train, ...) set by the workflow and n is left alone too unless it varies with the
    free columns fixed; any other column with several values is fixed to one.
    `prefer[column]` is a list of values to take if present (first found wins) or a
    function scoring a value (lowest wins); else the smallest value is kept. Returns the
    rows kept and "column = value (of k)" notes for the columns that were fixed.
    """
    prefer = prefer or {}
    free = [c for c in free if c in frame.columns]
    notes = []
    for column in config_columns(frame):
        if column in free or frame.empty or frame[column].nunique(dropna=False) < 2:
            continue
        if column in KNOBS and free:
            spread = frame.groupby(free, dropna=False)[column].nunique(dropna=False)
            if not (spread > 1).any():
                continue
        values = _sorted_values(frame[column])
        choice = prefer.get(column)
        if callable(choice):
            value = min(values, key=choice)
        else:
            value = next((v for v in (choice or ()) if v in values), values[0])
        frame = frame[_equals(frame[column], value)]
        notes.append(f"{column} = {bandwidth_label(value)} (of {len(values)})")
    return frame, notes


def near_half(label: str) -> tuple:
    """Score for `fix_settings` on KDE bandwidth labels: 0.5, else the number closest to
    it on a log scale, else a rule (scott before silverman)."""
    kind, number, word = label_order(label)
    return (kind, abs(math.log(number / 0.5)) if kind == 0 and number > 0 else math.inf, word)


def _closest(target: float) -> Callable[[float], float]:
    """Score for `fix_settings`: distance to target on a log scale."""
    return lambda v: abs(math.log(float(v)) - math.log(target)) if float(v) > 0 else math.inf


# -- closed forms -----------------------------------------------------------------
def _setting(line: pd.DataFrame) -> dict:
    return line.iloc[0].to_dict()


def _theory_applies(cfg: Mapping) -> bool:
    """Closed forms hold for n_synthetic == n_real and no fresh real data."""
    fresh = cfg.get("n_fresh_real")
    no_fresh = fresh is None or (isinstance(fresh, float) and math.isnan(fresh)) or fresh == 0
    return cfg.get("n_synthetic") == cfg.get("n_real") and no_fresh


def expected(task: str, metric: str, workflow: str, cfg: Mapping, t: np.ndarray) -> np.ndarray | None:
    """E[metric] at iterations t from `collapse_ray.theory`, or None where none is known."""
    if workflow not in ("replace", "accumulate") or not _theory_applies(cfg):
        return None
    n = int(cfg["n_real"])
    if task == "gaussian":
        return fig1.closed_form(metric, workflow, n, n, int(cfg["dim"]), float(cfg["sigma2"]), t)
    if task == "linear_regression" and metric == "test_loss":
        d = int(cfg["dim"])
        if n <= d + 1:
            return None
        formula = theory.linear_regression_replace if workflow == "replace" else theory.linear_regression_accumulate
        return formula(n, d, float(cfg["sigma2"]), t)
    if task == "discrete" and metric == "gini_simpson":
        k = int(cfg["n_outcomes"])
        formula = (theory.discrete_replace_gini_simpson if workflow == "replace"
                   else theory.discrete_accumulate_gini_simpson)
        return formula(k, n, t)
    return None


def expected_limit(task: str, metric: str, workflow: str, cfg: Mapping) -> float | None:
    """Accumulate's bound or t -> infinity limit, where known."""
    if workflow != "accumulate" or not _theory_applies(cfg):
        return None
    n = int(cfg["n_real"])
    if task == "gaussian":
        return fig1.closed_form_limit(metric, workflow, n, n)
    if task == "linear_regression" and metric == "test_loss" and n > int(cfg["dim"]) + 1:
        return np.pi**2 / 6 * theory.linear_regression_base(n, int(cfg["dim"]), float(cfg["sigma2"]))
    if task == "discrete" and metric == "gini_simpson":
        return (1 - 1 / int(cfg["n_outcomes"])) * theory.gaussian_accumulate_trace_limit(n)
    return None


# -- drawing helpers --------------------------------------------------------------
def _figure(size: tuple[float, float]) -> Figure:
    return fig1._figure(size)


def wants_log(means: np.ndarray) -> bool:
    """Log y when no mean is negative and the positive ones span a decade."""
    finite = means[np.isfinite(means)]
    positive = finite[finite > 0]
    if not len(positive) or (finite < 0).any():
        return False
    return positive.max() / positive.min() >= LOG_SPAN


def draw_line(ax, line: pd.DataFrame, colour, ls: str = "-", log: bool = False, lw: float = 1.6,
              band: bool = True) -> list[np.ndarray]:
    """Mean over seeds with a +-1 SE band; returns the values drawn (for log limits)."""
    line = line.sort_values("iteration")
    t = line["iteration"].to_numpy()
    mean, se = line["mean"].to_numpy(dtype=float), np.nan_to_num(line["se"].to_numpy(dtype=float))
    shown = np.where(mean > 0, mean, np.nan) if log else mean
    ax.plot(t, shown, color=colour, ls=ls, lw=lw, zorder=3)
    lower, upper = fig1._positive_band(mean, se, log)
    if band:
        ax.fill_between(t, lower, upper, color=colour, alpha=0.25, lw=0, zorder=2)
    return [shown, lower, upper]


def draw_theory(ax, task: str, metric: str, workflow: str, line: pd.DataFrame, colour, log: bool,
                limit: bool = True) -> list[np.ndarray]:
    """The closed form (dashed, darker) and accumulate's bound (dotted) of one line."""
    cfg = _setting(line)
    t = np.sort(line["iteration"].to_numpy())
    drawn = []
    curve = expected(task, metric, workflow, cfg, t)
    if curve is not None:
        curve = np.where(curve > 0, curve, np.nan) if log else curve
        ax.plot(t, curve, color=fig1.darker(colour), ls=(0, (4, 2)), lw=1.2, zorder=4)
        drawn.append(curve)
    bound = expected_limit(task, metric, workflow, cfg) if limit else None
    if bound is not None:
        ax.axhline(bound, color=fig1.darker(colour), ls=":", lw=1.1, zorder=4)
        drawn.append(np.array([bound]))
    return drawn


def _finish_axis(ax, values: list[np.ndarray], log: bool) -> None:
    if log:
        ax.set_yscale("log")
        fig1._log_limits(ax, np.concatenate(values) if values else np.array([]))
        low, high = ax.get_ylim()
        if high / low < 1e3:  # few decades: ticks at 1, 2, 5 x 10^k, written plainly
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(_plain_log_label))
    ax.grid(True, which="major", alpha=0.3)


def _plain_log_label(value: float, _pos=None) -> str:
    """0.1, 2, 500 as they are; very small or large numbers as powers of ten."""
    if value <= 0:
        return ""
    if 1e-3 <= value < 1e4:
        return f"{value:g}"
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10**exponent
    return f"$10^{{{exponent}}}$" if abs(mantissa - 1) < 1e-6 else f"${mantissa:g}\times10^{{{exponent}}}$"


def _nonfinite_note(ax, frame: pd.DataFrame) -> None:
    """Say, in the panel, how many chains were non-finite at the last iteration."""
    last = frame[frame["iteration"] == frame["iteration"].max()]
    lost = int((last["total"] - last["count"]).sum())
    if lost:
        note = ax.legend([Line2D([], [], ls="none")], [f"{lost}/{int(last['total'].sum())} chains non-finite "
                         f"at t = {int(last['iteration'].iloc[0])}\n(means over finite chains)"],
                         loc="best", handlelength=0, handletextpad=0, fontsize=7, labelcolor="0.25",
                         framealpha=0.85)
        note.set_zorder(5)


def n_colours(frame: pd.DataFrame) -> tuple[dict, dict]:
    """A viridis colour per (n_real, n_synthetic), light (small n) to dark, and labels."""
    keys = sorted(set(zip(frame["n_real"].astype(int), frame["n_synthetic"].astype(int))))
    colours = fig1.line_colours(keys)
    labels = {k: fig1.series_label(k[0], k[1], 0.0, False) for k in keys}
    return colours, labels


def _n_handles(colours: dict, labels: dict) -> list:
    return [Line2D([], [], color=c, lw=2, label=labels[k]) for k, c in colours.items()]


def _band_handle() -> Patch:
    return Patch(color="0.6", alpha=0.5, label="mean over seeds ± 1 SE")


def _theory_handles(theory_drawn: bool, bound_label: str | None) -> list:
    handles = []
    if theory_drawn:
        handles.append(Line2D([], [], color="0.2", ls=(0, (4, 2)), lw=1.2, label="closed form"))
    if bound_label:
        handles.append(Line2D([], [], color="0.2", ls=":", lw=1.1, label=bound_label))
    return handles


def legend_below(fig: Figure, handles: list, fontsize: float = 9) -> None:
    """A legend under the panels, in as many columns as fit the figure's width."""
    widths = sorted((0.55 + 0.068 * fontsize / 9 * len(h.get_label()) for h in handles), reverse=True)
    width = fig.get_figwidth() - 0.3
    ncol = 1
    while ncol < len(handles) and sum(widths[: ncol + 1]) <= width:
        ncol += 1
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=fontsize, frameon=False)


def _notes_suffix(notes: Sequence[str]) -> str:
    return f"\n(also fixed: {', '.join(notes)})" if notes else ""


def metric_rows(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    return summary[summary["metric"] == metric]


def workflow_label(workflow: str, cfg: Mapping) -> str:
    """A workflow with the knobs that set it: 'iterative retraining (λ = 1)'."""
    def value(name):
        v = cfg.get(name)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    title = WORKFLOW_TITLES.get(workflow, workflow)
    knobs = []
    if workflow in ("accumulate_subsample", "real_fraction") and value("n_train") is not None:
        knobs.append(f"n_train = {int(value('n_train'))}")
    if workflow == "iterative_retraining" and value("synthetic_ratio") is not None:
        knobs.append(f"λ = {value('synthetic_ratio'):g}")
    if workflow == "real_fraction" and value("real_fraction") is not None:
        knobs.append(f"{100 * value('real_fraction'):g} % real")
    if value("n_fresh_real"):
        knobs.append(f"{int(value('n_fresh_real'))} fresh real / iteration")
    return title + (f" ({', '.join(knobs)})" if knobs else "")


# -- Fig. 2: KDE ------------------------------------------------------------------
KDE_FREE = ["task", "dataset", "bandwidth", "n_real", "n_synthetic", "workflow", *KNOBS]


KDE_LAYOUTS = ("panels", "grid")


def plot_kde(summary: pd.DataFrame, bandwidth: str, layout: str = "panels") -> Figure:
    """(A)'s Fig. 2 at one bandwidth: test NLL vs iteration. layout "panels": one panel
    per dataset; colour = n, solid = replace, dashed = accumulate, dotted =
    accumulate-subsample. layout "grid", (A)'s own: datasets in rows, workflows in
    columns, colour = n, log y."""
    data = summary[(summary["bandwidth"] == bandwidth) & summary["workflow"].isin(CLASSIC)]
    data, notes = fix_settings(data, KDE_FREE, {"dataset": DATASETS})
    data = metric_rows(data, "test_loss")
    present = set(data["dataset"])
    datasets = [d for d in DATASETS if d in present] + sorted(present - set(DATASETS))
    if layout == "grid":
        return _plot_kde_grid(data, datasets, bandwidth, notes)
    colours, labels = n_colours(data)
    fig = _figure((max(3.3 * len(datasets) + 0.4, 6.2), 3.9))
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets):
        panel = data[data["dataset"] == dataset]
        log = wants_log(panel["mean"].to_numpy(dtype=float))
        drawn = []
        for (n_real, n_syn, workflow), line in panel.groupby(["n_real", "n_synthetic", "workflow"]):
            drawn += draw_line(ax, line, colours[(int(n_real), int(n_syn))], WORKFLOW_STYLES[workflow], log)
        _finish_axis(ax, drawn, log)
        _nonfinite_note(ax, panel)
        ax.set_title(dataset.replace("_", " "), fontsize=10)
        ax.set_xlabel(XLABEL)
    axes[0].set_ylabel("test NLL (held-out real data)")
    workflows = [w for w in CLASSIC if w in set(data["workflow"])]
    handles = _n_handles(colours, labels)
    handles += [Line2D([], [], color="0.3", ls=WORKFLOW_STYLES[w], lw=1.6, label=WORKFLOW_TITLES[w]) for w in workflows]
    handles.append(_band_handle())
    legend_below(fig, handles)
    title = f"KDE refitted on its own samples, bandwidth {bandwidth_text(bandwidth)}"
    if len(datasets) == 1:
        title = title.replace(", bandwidth", ",\nbandwidth")
    fig.suptitle(title + _notes_suffix(notes), fontsize=11)
    return fig


def _plot_kde_grid(data: pd.DataFrame, datasets: list[str], bandwidth: str, notes: list[str]) -> Figure:
    workflows = [w for w in CLASSIC if w in set(data["workflow"])]
    colours, labels = n_colours(data)
    fig = _figure((3.2 * len(workflows) + 0.6, 2.5 * len(datasets) + 1.0))
    axes = fig.subplots(len(datasets), len(workflows), squeeze=False, sharex=True, sharey="row")
    for i, dataset in enumerate(datasets):
        row = data[data["dataset"] == dataset]
        drawn = []
        for j, workflow in enumerate(workflows):
            ax = axes[i, j]
            panel = row[row["workflow"] == workflow]
            for (n_real, n_syn), line in panel.groupby(["n_real", "n_synthetic"]):
                drawn += draw_line(ax, line, colours[(int(n_real), int(n_syn))], "-", True)
            _nonfinite_note(ax, panel)
            if i == 0:
                ax.set_title(WORKFLOW_TITLES[workflow], fontsize=10)
            if i == len(datasets) - 1:
                ax.set_xlabel(XLABEL)
        for ax in axes[i]:
            _finish_axis(ax, drawn, True)
        axes[i, 0].set_ylabel(f"{dataset.replace('_', ' ')}\ntest NLL")
    legend_below(fig, _n_handles(colours, labels) + [_band_handle()])
    fig.suptitle(f"KDE refitted on its own samples, bandwidth {bandwidth_text(bandwidth)} ((A)'s layout)"
                 + _notes_suffix(notes), fontsize=11)
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
    workflows = [w for w in CLASSIC if w in set(data["workflow"])]
    last = int(data["iteration"].max())
    shown = [t for t in BANDWIDTH_ITERATIONS if t < last] + [last]
    shown = [t for t in shown if (data["iteration"] == t).any()]
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    colours = {t: cmap(0.85 * i / max(1, len(shown) - 1)) for i, t in enumerate(shown)}
    fig = _figure((3.3 * len(workflows) + 0.6, 2.3 * len(ns) + 1.1))
    axes = fig.subplots(len(ns), len(workflows), squeeze=False, sharex=True, sharey="row")
    for i, (n_real, n_syn) in enumerate(ns):
        row = data[(data["n_real"] == n_real) & (data["n_synthetic"] == n_syn)]
        drawn = []
        for j, workflow in enumerate(workflows):
            ax = axes[i, j]
            panel = row[row["workflow"] == workflow]
            for t in shown:
                # chains capped below t (accumulate under a rule) have no point at t;
                # the fixed bandwidths are joined by a line, the rules stand alone
                at = panel[panel["iteration"] == t]
                for group, style in ((numbers, "-"), (rules, "none")):
                    points = at[at["bandwidth"].isin(group)]
                    points = points.assign(x=points["bandwidth"].map(positions)).sort_values("x")
                    mean = points["mean"].to_numpy(dtype=float)
                    se = np.nan_to_num(points["se"].to_numpy(dtype=float))
                    shown_mean = np.where(mean > 0, mean, np.nan)
                    ax.errorbar(points["x"], shown_mean, yerr=se, color=colours[t], marker="o", ms=3.5, lw=1.2,
                                ls=style, elinewidth=1.0, capsize=2)
                    drawn.append(shown_mean)
            if i == 0:
                ax.set_title(WORKFLOW_TITLES[workflow], fontsize=10)
            if i == len(ns) - 1:
                ax.set_xlabel("bandwidth h")
                ax.set_xticks([positions[b] for b in labels])
                ax.set_xticklabels([b if b in rules else _plain_log_label(float(b)) for b in labels],
                                   rotation=60, fontsize=7)
        for ax in axes[i]:
            _finish_axis(ax, drawn, True)
        axes[i, 0].set_ylabel(f"n = {n_real}\ntest NLL")
    handles = [Line2D([], [], color=colours[t], marker="o", lw=1.2, label=f"iteration {t}") for t in shown]
    handles.append(Line2D([], [], color="0.4", marker="|", lw=0, ms=9, label="mean over seeds ± 1 SE"))
    legend_below(fig, handles)
    fig.suptitle(f"KDE on {dataset.replace('_', ' ')}: test NLL against the bandwidth ((A)'s notebooks 11, 12)"
                 + _notes_suffix(notes), fontsize=11)
    return fig


# -- linear regression against its closed forms -----------------------------------
LR_FREE = ["task", "dim", "n_real", "n_synthetic", "sigma2", "workflow", *KNOBS]


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
    fig = _figure((3.5 * len(cells) + 0.4, 5.6))
    axes = fig.subplots(2, len(cells), squeeze=False, sharex="col", height_ratios=[2.2, 1])
    workflows = [w for w in CLASSIC if w in set(data["workflow"])]
    any_theory = False
    for j, (d, n, s2) in enumerate(cells):
        ax, ratio_ax = axes[0, j], axes[1, j]
        panel = data[(data["dim"] == d) & (data["n_real"] == n) & (data["sigma2"] == s2)]
        panel = panel[panel["n_synthetic"] == n] if (panel["n_synthetic"] == n).any() else panel
        log = wants_log(panel["mean"].to_numpy(dtype=float))
        drawn = []
        for workflow in workflows:
            for _, line in panel[panel["workflow"] == workflow].groupby(["n_synthetic", *KNOBS], dropna=False):
                colour = WORKFLOW_COLOURS[workflow]
                drawn += draw_line(ax, line, colour, "-", log)
                curve = draw_theory(ax, "linear_regression", "test_loss", workflow, line, colour, log)
                drawn += curve
                line = line.sort_values("iteration")
                t = line["iteration"].to_numpy()
                truth = expected("linear_regression", "test_loss", workflow, _setting(line), t)
                if truth is not None:
                    any_theory = True
                    mean, se = line["mean"].to_numpy(dtype=float), np.nan_to_num(line["se"].to_numpy(dtype=float))
                    ratio_ax.plot(t, mean / truth, color=colour, lw=1.4)
                    ratio_ax.fill_between(t, (mean - se) / truth, (mean + se) / truth, color=colour, alpha=0.2, lw=0)
        _finish_axis(ax, drawn, log)
        _nonfinite_note(ax, panel)
        ax.set_title(f"linear regression: d = {d}, n = {n}, $\\sigma^2$ = {s2:g}", fontsize=10)
        ratio_ax.axhline(1.0, color="0.2", lw=0.9)
        ratio_ax.grid(True, alpha=0.3)
        ratio_ax.set_xlabel(XLABEL)
    axes[0, 0].set_ylabel("test MSE")
    axes[1, 0].set_ylabel("Monte-Carlo mean\n/ closed form")
    handles = [Line2D([], [], color=WORKFLOW_COLOURS[w], lw=2, label=WORKFLOW_TITLES[w]) for w in workflows]
    handles.append(_band_handle())
    handles += _theory_handles(any_theory, r"accumulate bound $\frac{\pi^2}{6}\,\sigma^2 d/(n-d-1)$"
                               if "accumulate" in workflows and any_theory else None)
    legend_below(fig, handles)
    fig.suptitle("Linear regression refitted on its own predictions: Monte Carlo vs closed forms\n"
                 r"($\sigma^2 d\,t/(n-d-1)$ replace, $\sigma^2 d/(n-d-1)\sum_{i\leq t} i^{-2}$ accumulate)"
                 + _notes_suffix(notes), fontsize=10)
    return fig


# -- discrete: diversity ----------------------------------------------------------
DISCRETE_FREE = ["task", "n_outcomes", "n_real", "n_synthetic", "workflow", *KNOBS]


def plot_discrete(summary: pd.DataFrame) -> Figure:
    """Gini-Simpson index and outcomes with zero mass vs iteration: two rows per K,
    columns = workflows, colour = n; closed forms dashed, accumulate's limit dotted."""
    data = summary[summary["workflow"].isin(CLASSIC)]
    data, notes = fix_settings(data, DISCRETE_FREE)
    workflows = [w for w in CLASSIC if w in set(data["workflow"])]
    ks = sorted(data["n_outcomes"].astype(int).unique())
    colours, labels = n_colours(data)
    rows = [(k, m) for k in ks for m in ("gini_simpson", "n_zero_mass")]
    fig = _figure((3.5 * len(workflows) + 0.4, 2.5 * len(rows) + 0.9))
    axes = fig.subplots(len(rows), len(workflows), squeeze=False, sharex=True, sharey="row")
    any_theory = any_limit = False
    for i, (k, metric) in enumerate(rows):
        for j, workflow in enumerate(workflows):
            ax = axes[i, j]
            panel = data[(data["n_outcomes"] == k) & (data["workflow"] == workflow) & (data["metric"] == metric)]
            for (n_real, n_syn), line in panel.groupby(["n_real", "n_synthetic"]):
                colour = colours[(int(n_real), int(n_syn))]
                draw_line(ax, line, colour)
                draw_theory(ax, "discrete", metric, workflow, line, colour, False)
                cfg = _setting(line)
                any_theory |= expected("discrete", metric, workflow, cfg, np.array([1])) is not None
                any_limit |= expected_limit("discrete", metric, workflow, cfg) is not None
            ax.grid(True, alpha=0.3)
            if i == 0:
                ax.set_title(WORKFLOW_TITLES[workflow], fontsize=10)
            if j == 0:
                ax.set_ylabel(f"K = {k}\n" + ("Gini-Simpson $1-\\sum_k p_k^2$" if metric == "gini_simpson"
                                             else "outcomes with zero mass"))
            if i == len(rows) - 1:
                ax.set_xlabel(XLABEL)
    handles = _n_handles(colours, labels) + [_band_handle()]
    handles += _theory_handles(any_theory, r"accumulate limit $t\to\infty$" if any_limit else None)
    legend_below(fig, handles)
    fig.suptitle("Discrete distributions refitted by counting: diversity\n"
                 r"(closed forms: replace $H_0(1-1/n)^t$, accumulate $H_0\prod_{k\leq t}(1-1/(nk^2))$, $H_0 = 1-1/K$)"
                 + _notes_suffix(notes), fontsize=10)
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
    out = []
    for (k, n), group in rows.groupby(["n_outcomes", "n_real"], sort=True):
        wide = group.pivot_table(index="iteration", columns="seed", values=metric, aggfunc="first").sort_index()
        wide = wide.ffill()
        count = wide.notna().sum(axis=1)
        out.append(pd.DataFrame({"n_outcomes": int(k), "n_real": int(n), "iteration": wide.index.to_numpy(),
                                 "mean": wide.mean(axis=1).to_numpy(),
                                 "se": (wide.std(axis=1) / np.sqrt(count)).to_numpy()}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _n_palette(ns: Sequence[int]) -> dict:
    """(A)'s 'cool' palette on a log scale of n."""
    from matplotlib import colormaps

    cmap = colormaps["cool"]
    lo, hi = math.log(min(ns)), math.log(max(ns))
    return {n: cmap(0.5 if hi == lo else (math.log(n) - lo) / (hi - lo)) for n in ns}


def plot_discrete_entropy(rows: pd.DataFrame) -> Figure:
    """(A)'s notebook 13: fraction of the initial entropy vs iteration, a panel per K,
    one curve per n, collapsed chains carried at 0."""
    data = carried_to_group_end(rows, "fraction_of_initial_entropy")
    ks = sorted(data["n_outcomes"].unique())
    ns = sorted(data["n_real"].unique())
    colours = _n_palette(ns)
    fig = _figure((3.0 * len(ks) + 0.6, 3.6))
    axes = fig.subplots(1, len(ks), squeeze=False, sharey=True)[0]
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
        ax.set_title(f"K = {k} outcomes", fontsize=10)
        ax.set_xlabel(XLABEL)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("fraction of initial entropy")
    handles = [Line2D([], [], color=colours[n], lw=2, label=f"n = {n:g}") for n in ns] + [_band_handle()]
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
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    colours = {k: cmap(0.85 * i / max(1, len(ks) - 1)) for i, k in enumerate(ks)}
    fig = _figure((10.0, 4.4))
    left, right = fig.subplots(1, 2)
    for k in ks:
        stats = done[done["n_outcomes"] == k].groupby("n_real")["iteration"].agg(["mean", "std", "count"])
        if stats.empty:
            continue
        n = stats.index.to_numpy(dtype=float)
        se = (stats["std"] / np.sqrt(stats["count"])).fillna(0).to_numpy()
        closed = theory.discrete_replace_collapse_time(k, n)
        left.errorbar(n, stats["mean"], yerr=2 * se, color=colours[k], marker=markers[k], ms=6, lw=0,
                      elinewidth=1.2, capsize=3, zorder=3)
        grid = np.geomspace(n.min(), n.max(), 50)
        left.plot(grid, theory.discrete_replace_collapse_time(k, grid), color=fig1.darker(colours[k]),
                  ls=(0, (4, 2)), lw=1.1, zorder=2)
        right.errorbar(n * (1 + 0.04 * (ks.index(k) - len(ks) / 2)), stats["mean"] / closed, yerr=2 * se / closed,
                       color=colours[k], marker=markers[k], ms=5, lw=1, elinewidth=1.2, capsize=3)
    left.set(xscale="log", yscale="log", xlabel="n, samples per iteration",
             ylabel="iterations until one outcome is left")
    right.axhline(1.0, color="0.2", ls=(0, (4, 2)), lw=1.1)
    # the diffusion's finite-n error, exactly, for K = 2 (an O(n^3) solve: n <= 1000)
    small = [int(n) for n in sorted(times["n_real"].unique()) if 2 <= n <= 1000]
    if small:
        exact = [theory.wright_fisher_two_outcomes_exact(n) / theory.discrete_replace_collapse_time(2, n) for n in small]
        right.plot(small, exact, color="0.45", ls=":", lw=1.4, marker=".", zorder=1)
    right.set(xscale="log", xlabel="n, samples per iteration", ylabel="mean / closed form")
    for ax in (left, right):
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=colours[k], marker=markers[k], lw=0, label=f"K = {k:g}") for k in ks]
    handles += [Line2D([], [], color="0.3", marker="|", lw=0, ms=10, label="mean over seeds ± 2 SE"),
                Line2D([], [], color="0.2", ls=(0, (4, 2)), lw=1.1,
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
    free = ["task", "n_real", "n_synthetic", "workflow", *KNOBS]
    if task == "kde":
        data, notes = fix_settings(data, free, {"dataset": ["moons", *DATASETS], "bandwidth": near_half})
        title = f"KDE, {data['dataset'].iloc[0]}, {bandwidth_text(data['bandwidth'].iloc[0])}"
    else:
        data, notes = fix_settings(data, free, {"dim": _closest(10), "sigma2": _closest(1.0)})
        title = (f"{TASK_TITLES[task]}, d = {int(data['dim'].iloc[0])}, "
                 f"$\\sigma^2$ = {float(data['sigma2'].iloc[0]):g}")
    shown = [n for n in notes if not n.split(" = ")[0] in ("dataset", "bandwidth", "dim", "sigma2")]
    return data, title + ("\n" + ", ".join(shown) if shown else "")


def plot_fig4(summaries: Mapping[str, pd.DataFrame]) -> Figure:
    """(A)'s Fig. 4: columns replace, accumulate-subsample, accumulate; a row per task
    (Gaussian: covariance trace ratio; KDE: test NLL; linear regression: test MSE);
    colour = n, y shared along a row; closed forms dashed where known."""
    tasks = [t for t in FIG4_TASKS if t in summaries]
    fig = _figure((3.4 * len(CLASSIC) + 1.6, 2.9 * len(tasks) + 0.5))
    axes = fig.subplots(len(tasks), len(CLASSIC), squeeze=False, sharex="row", sharey="row")
    any_theory = False
    for i, task in enumerate(tasks):
        data, title = fig4_slice(task, summaries[task])
        colours, labels = n_colours(data)
        log = task == "gaussian" or wants_log(data["mean"].to_numpy(dtype=float))
        row_values = []
        for j, workflow in enumerate(CLASSIC):
            ax = axes[i, j]
            panel = data[data["workflow"] == workflow]
            for (n_real, n_syn), line in panel.groupby(["n_real", "n_synthetic"]):
                colour = colours[(int(n_real), int(n_syn))]
                row_values += draw_line(ax, line, colour, "-", log)
                drawn = draw_theory(ax, task, FIG4_METRICS[task], workflow, line, colour, log, limit=False)
                any_theory |= bool(drawn)
                row_values += drawn
            if panel.empty:
                ax.text(0.5, 0.5, "not in the tables", transform=ax.transAxes, ha="center", va="center", color="0.5")
            else:
                _nonfinite_note(ax, panel)
            if i == 0:
                ax.set_title(WORKFLOW_TITLES[workflow], fontsize=11)
            if i == len(tasks) - 1:
                ax.set_xlabel(XLABEL)
        for ax in axes[i]:
            _finish_axis(ax, row_values, log)
        axes[i, 0].set_ylabel(f"{title}\n{FIG4_YLABELS[task]}", fontsize=9)
        axes[i, -1].legend(handles=_n_handles(colours, labels), loc="upper left", bbox_to_anchor=(1.02, 1.0),
                           fontsize=8, frameon=False)
    handles = [_band_handle()] + _theory_handles(any_theory, None)
    legend_below(fig, handles)
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
    free = ["task", "n_real", "n_synthetic", "workflow", *KNOBS]
    data, notes = fix_settings(summary, free, {"dim": _closest(10), "sigma2": _closest(1.0),
                                               "dataset": ["moons", *DATASETS], "bandwidth": near_half})
    cells = sorted(set(zip(data["n_real"].astype(int), data["n_synthetic"].astype(int))))
    if len(cells) > most_n:
        cells = [cells[i] for i in np.linspace(0, len(cells) - 1, most_n).round().astype(int)]
    zoom = (data["workflow"] == "replace").any() and (data["workflow"] != "replace").any()
    panels = [(cell, False) for cell in cells] if not zoom else [(cell, z) for cell in cells for z in (False, True)]
    metrics = [m for m in MIXING_METRICS[task] if m in set(data["metric"])]
    fig = _figure((3.9 * len(panels) + 3.4, 2.9 * len(metrics) + 0.7))
    axes = fig.subplots(len(metrics), len(panels), squeeze=False, sharex=True)
    order = {w: i for i, w in enumerate(WORKFLOWS)}
    knobs = [k for k in KNOBS if k in data]
    keys = sorted({(row[0], tuple(_missing_as_none(v) for v in row[1:]))
                   for row in data[["workflow", *knobs]].itertuples(index=False, name=None)},
                  key=lambda key: (order.get(key[0], 99), str(key[1])))
    styles, seen, labels = {}, {}, {}
    for key in keys:
        workflow = key[0]
        count = seen.get(workflow, 0)
        seen[workflow] = count + 1
        styles[key] = (WORKFLOW_COLOURS.get(workflow, "0.3"), ["-", "--", ":", "-."][count % 4])
        labels[key] = workflow_label(workflow, dict(zip(knobs, key[1])))
    any_theory = False
    for i, metric in enumerate(metrics):
        for j, ((n_real, n_syn), zoomed) in enumerate(panels):
            ax = axes[i, j]
            panel = data[(data["metric"] == metric) & (data["n_real"] == n_real) & (data["n_synthetic"] == n_syn)]
            if zoomed:
                panel = panel[panel["workflow"] != "replace"]
            log = ((task == "gaussian" and metric == "cov_trace_ratio" and not zoomed)
                   or wants_log(panel["mean"].to_numpy(dtype=float)))
            drawn = []
            for key in keys:
                mask = _equals(panel["workflow"], key[0])
                for knob, value in zip(knobs, key[1]):
                    mask &= _equals(panel[knob], value)
                line = panel[mask]
                if line.empty:
                    continue
                colour, ls = styles[key]
                drawn += draw_line(ax, line, colour, ls, log)
                theory_drawn = draw_theory(ax, task, metric, key[0], line, colour, log, limit=False)
                any_theory |= bool(theory_drawn)
                drawn += theory_drawn
            _finish_axis(ax, drawn, log)
            _nonfinite_note(ax, panel)
            if i == 0:
                n_text = fig1.series_label(n_real, n_syn, 0.0, False)
                ax.set_title(f"{n_text}: without replace (zoom)" if zoomed else f"{n_text}: all workflows",
                             fontsize=10)
            if j == 0:
                ax.set_ylabel(MIXING_YLABELS.get((task, metric), metric))
            if i == len(metrics) - 1:
                ax.set_xlabel(XLABEL)
    handles = [Line2D([], [], color=styles[k][0], ls=styles[k][1], lw=2, label=labels[k]) for k in keys]
    handles.append(_band_handle())
    handles += _theory_handles(any_theory, None)
    fig.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    setting = describe_setting(task, data)
    fig.suptitle(f"Mixing policies, {TASK_TITLES[task]}{setting}" + _notes_suffix(notes), fontsize=11)
    return fig


def describe_setting(task: str, data: pd.DataFrame) -> str:
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


def save(fig: Figure, path: Path) -> Path:
    fig1._save(fig, path)
    return path
