"""Fig. 1 of "Collapse or Thrive?" (Kazdan et al.): multivariate Gaussian fitting.

    python analysis/fig1_gaussian.py results/fig1_gaussian.parquet --out results/figures

reads a results table written by `collapse-ray results` (CSV or Parquet, by suffix;
one row per run, seed and iteration; rows whose task is not "gaussian" are dropped)
and writes, into --out, printing each path:

* `fig1_gaussian_d{d}.png` for each dimension d: rows = metrics (squared error of the
  fitted mean, covariance trace ratio, covariance determinant ratio, test NLL),
  columns = workflows (replace, accumulate_subsample, accumulate; those present).
  One colour per n; solid line = Monte-Carlo mean over seeds with a +-1 standard-error
  band, dashed darker line = closed form from `collapse_ray.theory` where one exists
  (n_synthetic == n_real only), dotted = accumulate's trace-ratio limit.
* `fig1_gaussian_overview.png`: (A)'s Fig. 1 layout. Top row: the fitted 1-D densities
  N(mean_t, var_t) of one chain (seed 0, d = 1, the n closest to 32, the table's sigma^2)
  at t = 1, 2, 5, 10, 20, 50, 100, ... for replace and accumulate, over the truth; that
  chain is rerun through the loop (the table keeps |mean|^2, not the mean's sign), with
  the sweep's own draws. Below: trace ratio and mean error / (d sigma^2) against
  iteration, one colour per d at the n closest to 100, replace solid, accumulate dashed.

Means are taken over finite values: the test NLL is +inf once a chain's covariance is
singular, so that row shows the mean over the chains still finite ("finite chains"),
and a panel says how many chains were non-finite at the last iteration. Replace's
mean-error, trace and det panels are log-scaled (they collapse toward 0), other panels
only where their means span a decade; a mean of exactly 0 (det ratio with n <= d, or
underflowed) cannot be drawn on a log axis, and the panel says so. Figures are drawn
on matplotlib's Agg canvas without pyplot, so importing this module changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from collapse_ray import theory

WORKFLOWS = ("replace", "accumulate_subsample", "accumulate")
METRICS = ("mean_sq_error", "cov_trace_ratio", "cov_det_ratio", "test_loss")
SUMMARY_METRICS = METRICS + ("cov_log_det_ratio",)
# A line is one (dim, sigma2, n_real, n_synthetic, workflow); a point adds iteration.
LINE_KEYS = ["dim", "sigma2", "n_real", "n_synthetic", "workflow"]
GROUP_KEYS = LINE_KEYS + ["iteration"]
YLABELS = {
    "mean_sq_error": r"$\|\hat\mu_t - \mu_0\|^2$",
    "cov_trace_ratio": r"tr $\hat\Sigma_t$ / tr $\Sigma_0$",
    "cov_det_ratio": r"det $\hat\Sigma_t$ / det $\Sigma_0$",
    "test_loss": "test NLL\n(mean of finite chains)",
}
# Replace drives these toward 0 (mean error: from d sigma^2 / n up to d sigma^2), so
# its panels are log-scaled; other panels go log only when their curves span a decade.
LOG_UNDER_REPLACE = {"mean_sq_error", "cov_trace_ratio", "cov_det_ratio"}
LOG_SPAN = 10.0
WORKFLOW_TITLES = {
    "replace": "replace", "accumulate": "accumulate", "accumulate_subsample": "accumulate-subsample",
}


# -- data -------------------------------------------------------------------------
def load_table(path: str | Path) -> pd.DataFrame:
    """The Gaussian rows of a results table (.csv or .parquet)."""
    path = Path(path)
    if path.suffix == ".csv":
        table = pd.read_csv(path)
    elif path.suffix == ".parquet":
        table = pd.read_parquet(path)
    else:
        raise ValueError(f"table must end in .csv or .parquet; got {str(path)!r}")
    missing = sorted(set(GROUP_KEYS + ["task", "seed"] + list(METRICS)) - set(table.columns))
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}")
    table = table[table["task"] == "gaussian"].reset_index(drop=True)
    if table.empty:
        raise ValueError(f"{path} has no rows with task == 'gaussian'")
    if table.duplicated(["run_key", "seed", "iteration"]).any():
        raise ValueError(f"{path} holds the same chains from several sweeps (collapse-ray results --all-sweeps?); "
                         "keep one sweep_run_id")
    return table


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds of each metric, long format.

    One row per (dim, sigma2, n_real, n_synthetic, workflow, iteration, metric) with
    `mean`, `se` (sample sd / sqrt(count), NaN for a single value), `count` (finite
    values the mean is over) and `total` (all values). Non-finite values (+inf test
    NLL of a singular fit) are left out of mean and se.
    """
    metrics = [m for m in SUMMARY_METRICS if m in table.columns]
    long = table.melt(id_vars=GROUP_KEYS, value_vars=metrics, var_name="metric", value_name="value")
    long["value"] = long["value"].astype(np.float64)
    long["finite"] = np.where(np.isfinite(long["value"]), long["value"], np.nan)
    grouped = long.groupby(GROUP_KEYS + ["metric"], sort=True)
    out = grouped["finite"].agg(mean="mean", sd="std", count="count")
    out["total"] = grouped["value"].size()
    out["se"] = out["sd"] / np.sqrt(out["count"])
    return out.drop(columns="sd").reset_index()


def closed_form(metric: str, workflow: str, n_real: int, n_synthetic: int, dim: int, sigma2: float,
                t: np.ndarray) -> np.ndarray | None:
    """E[metric] at iterations t from `collapse_ray.theory`, or None where none is known."""
    if n_synthetic != n_real:
        return None
    n = int(n_real)
    if workflow == "replace":
        if metric == "cov_trace_ratio":
            return theory.gaussian_replace_trace_ratio(n, t)
        if metric == "cov_det_ratio":
            return theory.gaussian_replace_det_ratio(n, int(dim), t)
        if metric == "mean_sq_error":
            return theory.gaussian_replace_mean_sq_error(n, int(dim), sigma2, t)
    if workflow == "accumulate":
        if metric == "cov_trace_ratio":
            return theory.gaussian_accumulate_trace_ratio(n, t)
        if metric == "mean_sq_error":
            return theory.gaussian_accumulate_mean_sq_error(n, int(dim), sigma2, t)
    return None


def closed_form_limit(metric: str, workflow: str, n_real: int, n_synthetic: int) -> float | None:
    if metric == "cov_trace_ratio" and workflow == "accumulate" and n_synthetic == n_real:
        return theory.gaussian_accumulate_trace_limit(int(n_real))
    return None


# -- styling ----------------------------------------------------------------------
def line_colours(keys: list[tuple]) -> dict[tuple, tuple]:
    """A sequential colour per (n_real, n_synthetic, sigma2) key, light (small n) to dark."""
    cmap = matplotlib.colormaps["viridis"]
    positions = np.linspace(0.85, 0.05, len(keys)) if len(keys) > 1 else [0.4]
    return {key: cmap(p) for key, p in zip(keys, positions)}


def darker(colour, amount: float = 0.45) -> tuple:
    """The colour mixed toward black: theory lines, visible on top of the data band."""
    r, g, b = mcolors.to_rgb(colour)
    return (r * (1 - amount), g * (1 - amount), b * (1 - amount))


def series_label(n_real: int, n_synthetic: int, sigma2: float, many_sigma2: bool) -> str:
    label = f"n = {n_real}" if n_real == n_synthetic else f"n_real = {n_real}, n_syn = {n_synthetic}"
    return label + (f", $\\sigma^2$ = {sigma2:g}" if many_sigma2 else "")


def _positive_band(mean: np.ndarray, se: np.ndarray, log: bool) -> tuple[np.ndarray, np.ndarray]:
    """mean -+ se; on a log axis a non-positive lower edge is masked (no band there)."""
    lower, upper = mean - se, mean + se
    if log:
        lower = np.where(lower > 0, lower, np.nan)
    return lower, upper


# -- plotting ---------------------------------------------------------------------
def plot_panel(ax, panel: pd.DataFrame, metric: str, workflow: str, colours: dict, log: bool) -> None:
    """One metric under one workflow: data mean +- SE and closed forms, one colour per n."""
    notes, shown_values = [], []
    for (sigma2, n_real, n_syn), line in panel.groupby(["sigma2", "n_real", "n_synthetic"], sort=True):
        line = line.sort_values("iteration")
        t = line["iteration"].to_numpy()
        mean, se = line["mean"].to_numpy(), line["se"].to_numpy()
        colour = colours[(n_real, n_syn, sigma2)]
        shown = mean if not log else np.where(mean > 0, mean, np.nan)
        ax.plot(t, shown, color=colour, lw=1.6, zorder=3)
        lower, upper = _positive_band(mean, np.nan_to_num(se), log)
        ax.fill_between(t, lower, upper, color=colour, alpha=0.25, lw=0, zorder=2)
        shown_values += [shown, lower, upper]
        dim = int(line["dim"].iloc[0])
        expected = closed_form(metric, workflow, n_real, n_syn, dim, sigma2, t)
        if expected is not None:
            expected = np.where(expected > 0, expected, np.nan) if log else expected
            ax.plot(t, expected, color=darker(colour), lw=1.3, ls="--", zorder=4)
            shown_values.append(expected)
        limit = closed_form_limit(metric, workflow, n_real, n_syn)
        if limit is not None:
            ax.axhline(limit, color=darker(colour), lw=1.0, ls=":", zorder=4)
        notes += _panel_notes(line, shown, n_real)
    if log:
        _log_limits(ax, np.concatenate(shown_values) if shown_values else np.array([]))
    if notes:
        # an empty-handle legend, so that loc="best" keeps the note off the curves
        note = ax.legend([Line2D([], [], ls="none")], ["\n".join(notes)], loc="best", handlelength=0,
                         handletextpad=0, fontsize=7, labelcolor="0.25", framealpha=0.85)
        note.set_zorder(5)


def _log_limits(ax, values: np.ndarray, max_pad: float = 3.0) -> None:
    """y limits around the positive values with at most a factor max_pad of margin
    (matplotlib's 5 % of a 300-decade range would add 15 decades)."""
    values = values[np.isfinite(values) & (values > 0)]
    if len(values):
        lo, hi = float(values.min()), float(values.max())
        pad = min(10 ** (0.05 * (np.log10(hi) - np.log10(lo))), max_pad) if hi > lo else 2.0
        ax.set_ylim(lo / pad, hi * pad)


def _panel_notes(line: pd.DataFrame, shown: np.ndarray, n_real: int) -> list[str]:
    """Why part of a line is missing: non-finite chains, or means at 0 on a log axis."""
    notes = []
    last = line.iloc[-1]
    if last["count"] < last["total"]:
        notes.append(f"n = {n_real}: {int(last['total'] - last['count'])}/{int(last['total'])} chains "
                     f"non-finite at t = {int(last['iteration'])}")
    zero = np.isnan(shown) & (line["count"].to_numpy() > 0)
    t = line["iteration"].to_numpy()
    if zero.all():
        notes.append(f"n = {n_real}: mean 0 throughout (off log axis)")
    elif zero.any():
        first = int(np.argmax(zero))
        if zero[first:].all():
            when = f"from t = {t[first]}"
        else:
            when = f"at {int(zero.sum())} of {len(t)} t, first t = {t[first]}"
        notes.append(f"n = {n_real}: mean 0 {when} (off log axis)")
    return notes


def _legend_handles(colours: dict, labels: dict, has_theory: bool, has_limit: bool) -> list:
    handles = [Line2D([], [], color=c, lw=2, label=labels[k]) for k, c in colours.items()]
    handles.append(Patch(color="0.6", alpha=0.5, label="Monte-Carlo mean ± 1 SE"))
    if has_theory:
        handles.append(Line2D([], [], color="0.2", ls="--", lw=1.3, label="closed form"))
    if has_limit:
        handles.append(Line2D([], [], color="0.2", ls=":", lw=1.0, label=r"accumulate limit $t\to\infty$"))
    return handles


def use_log_scale(means: np.ndarray, metric: str, workflow: str) -> bool:
    """Log y for replace's collapsing metrics; elsewhere when no mean is negative and the
    positive ones span LOG_SPAN (means at exactly 0, an underflowed det, get a note)."""
    if workflow == "replace" and metric in LOG_UNDER_REPLACE:
        return True
    positive = means[np.isfinite(means) & (means > 0)]
    if not len(positive) or (means[np.isfinite(means)] < 0).any():
        return False
    return positive.max() / positive.min() >= LOG_SPAN


def plot_dimension(summary: pd.DataFrame, dim: int) -> Figure:
    """The Fig. 1 grid for one dimension: rows = metrics, columns = workflows present."""
    data = summary[(summary["dim"] == dim) & summary["metric"].isin(METRICS)]
    workflows = [w for w in WORKFLOWS if w in set(data["workflow"])]
    metrics = [m for m in METRICS if m in set(data["metric"])]
    keys = sorted(set(zip(data["n_real"], data["n_synthetic"], data["sigma2"])))
    colours = line_colours(keys)
    many_sigma2 = data["sigma2"].nunique() > 1
    labels = {k: series_label(k[0], k[1], k[2], many_sigma2) for k in keys}
    fig = _figure((3.6 * len(workflows) + 0.6, 2.6 * len(metrics)))
    axes = fig.subplots(len(metrics), len(workflows), sharex=True, squeeze=False)
    for i, metric in enumerate(metrics):
        for j, workflow in enumerate(workflows):
            ax = axes[i, j]
            panel = data[(data["metric"] == metric) & (data["workflow"] == workflow)]
            log = use_log_scale(panel["mean"].to_numpy(), metric, workflow)
            if log:
                ax.set_yscale("log")
            plot_panel(ax, panel, metric, workflow, colours, log)
            ax.grid(True, which="major", alpha=0.3)
            if i == 0:
                ax.set_title(f"Gaussian, d = {dim}: {WORKFLOW_TITLES[workflow]}", fontsize=10)
            if j == 0:
                ax.set_ylabel(YLABELS[metric])
            if i == len(metrics) - 1:
                ax.set_xlabel("model-fitting iteration t")
    has_theory = any(closed_form(m, w, k[0], k[1], dim, k[2], np.array([1])) is not None
                     for m in metrics for w in workflows for k in keys)
    has_limit = "accumulate" in workflows and "cov_trace_ratio" in metrics
    fig.legend(handles=_legend_handles(colours, labels, has_theory, has_limit), loc="outside lower center",
               ncol=min(len(keys) + 3, 6), fontsize=9, frameon=False)
    return fig


def overview_n(summary: pd.DataFrame, dim: int, target: int = 100) -> int | None:
    """The n (n_real == n_synthetic) closest to `target` that dim has runs for."""
    rows = summary[(summary["dim"] == dim) & (summary["n_real"] == summary["n_synthetic"])]
    ns = np.unique(rows["n_real"])
    if not len(ns):
        return None
    return int(ns[np.argmin(np.abs(np.log(ns) - np.log(target)))])


class _DensityProbe:
    """A real GaussianTask whose evaluation also reports the 1-D fit's mean and variance
    (the density row draws N(mean, var)); everything else is the task's own."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def evaluate(self, model, test):
        metrics = self.inner.evaluate(model, test)
        return {**metrics, "fit_mean": model.mean[:, 0], "fit_var": model.cov[:, 0, 0]}


DENSITY_ITERATIONS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
DENSITY_N_TARGET = 32  # small enough that replace visibly narrows and drifts in 100 iterations


def density_chain(n: int, sigma2: float, n_iterations: int, workflow: str, seed: int = 0) -> pd.DataFrame:
    """One 1-D chain (the same draws as the sweep's seed `seed` at d = 1): its fitted
    mean and variance per iteration, through the real loop and task."""
    from collapse_ray.loop import run_chain
    from collapse_ray.spec import ChainConfig
    from collapse_ray.tasks import GaussianTask

    task = _DensityProbe(GaussianTask(dim=1, sigma2=sigma2, n_test=10))
    chain = ChainConfig(workflow=workflow, n_real=n, n_iterations=n_iterations).resolved()
    return run_chain(task, chain, [seed]).table[["iteration", "fit_mean", "fit_var"]]


def plot_densities(axes, summary: pd.DataFrame) -> None:
    """(A)'s Fig. 1 top row: the fitted 1-D densities of one chain across iterations,
    replace and accumulate, over the true N(0, sigma^2)."""
    ones = summary[summary["dim"] == 1] if (summary["dim"] == 1).any() else summary
    n = overview_n(ones, int(ones["dim"].min()), target=DENSITY_N_TARGET) or DENSITY_N_TARGET
    sigma2 = float(ones["sigma2"].iloc[0])
    last = int(summary["iteration"].max())
    shown = [t for t in DENSITY_ITERATIONS if t <= last] + ([last] if last not in DENSITY_ITERATIONS else [])
    cmap = matplotlib.colormaps["viridis"]
    colours = {t: cmap(0.9 * i / max(1, len(shown) - 1)) for i, t in enumerate(shown)}
    x = np.linspace(-4 * np.sqrt(sigma2), 4 * np.sqrt(sigma2), 600)
    peak = 1 / np.sqrt(2 * np.pi * sigma2)
    for ax, workflow in zip(axes, ("replace", "accumulate")):
        fits = density_chain(n, sigma2, last, workflow).set_index("iteration")
        for t in shown:
            mean, var = fits.loc[t, "fit_mean"], fits.loc[t, "fit_var"]
            ax.plot(x, np.exp(-0.5 * (x - mean) ** 2 / var) / np.sqrt(2 * np.pi * var), color=colours[t], lw=1.4)
        ax.plot(x, peak * np.exp(-0.5 * x**2 / sigma2), color="k", ls=(0, (4, 2)), lw=1.2)
        ax.set_ylim(0, 3 * peak)  # a collapsed fit's spike is cut off here
        ax.set_title(f"{WORKFLOW_TITLES.get(workflow, workflow)}: one chain's fitted densities\n(d = 1, n = {n}, seed 0)",
                     fontsize=10)
        ax.set_xlabel("x")
        ax.set_ylabel("density")
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=colours[t], lw=2, label=f"t = {t}") for t in shown]
    handles.append(Line2D([], [], color="k", ls=(0, (4, 2)), lw=1.2, label=r"truth $N(0, \sigma^2)$"))
    axes[1].legend(handles=handles, fontsize=7, loc="upper right", ncol=2, frameon=False)


def plot_overview(summary: pd.DataFrame, densities: bool = True) -> Figure:
    """(A)'s Fig. 1: the fitted 1-D densities across iterations (top, one chain each of
    replace and accumulate), then trace ratio and normalised mean error vs t:
    colour = d, replace solid, accumulate dashed."""
    dims = sorted(summary["dim"].unique())
    cmap = matplotlib.colormaps["plasma"]
    positions = np.linspace(0.0, 0.8, len(dims)) if len(dims) > 1 else [0.3]
    colours = {d: cmap(p) for d, p in zip(dims, positions)}
    styles = {"replace": "-", "accumulate": "--"}
    panels = [("cov_trace_ratio", YLABELS["cov_trace_ratio"]),
              ("mean_sq_error", r"$\|\hat\mu_t - \mu_0\|^2$ / ($d\,\sigma^2$)")]
    fig = _figure((9.5, 7.2 if densities else 3.8))
    if densities:
        grid = fig.subplots(2, 2)
        plot_densities(grid[0], summary)
        axes = grid[1]
    else:
        axes = fig.subplots(1, 2)
    handles = []
    for d in dims:
        n = overview_n(summary, d)
        if n is None:
            continue
        handles.append(Line2D([], [], color=colours[d], lw=2, label=f"d = {d} (n = {n})"))
        for ax, (metric, _) in zip(axes, panels):
            for workflow, ls in styles.items():
                line = summary[(summary["dim"] == d) & (summary["n_real"] == n) & (summary["n_synthetic"] == n)
                               & (summary["workflow"] == workflow) & (summary["metric"] == metric)]
                for sigma2, one in line.groupby("sigma2"):
                    one = one.sort_values("iteration")
                    scale = d * sigma2 if metric == "mean_sq_error" else 1.0
                    ax.plot(one["iteration"], one["mean"] / scale, color=colours[d], ls=ls, lw=1.6)
    for ax, (_, ylabel) in zip(axes, panels):
        ax.set_yscale("log")
        ax.set_xlabel("model-fitting iteration t")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_title("Gaussian: covariance trace ratio", fontsize=10)
    axes[1].set_title("Gaussian: squared error of the mean", fontsize=10)
    handles += [Line2D([], [], color="0.3", ls=ls, label=w) for w, ls in styles.items()]
    fig.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    return fig


def write_figures(summary: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for dim in sorted(summary["dim"].unique()):
        path = out / f"fig1_gaussian_d{int(dim)}.png"
        _save(plot_dimension(summary, int(dim)), path)
        written.append(path)
    path = out / "fig1_gaussian_overview.png"
    _save(plot_overview(summary), path)
    written.append(path)
    return written


def _figure(size: tuple[float, float]) -> Figure:
    """A pyplot-free figure on the Agg canvas: no global backend or figure state."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=150)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="results table from `collapse-ray results` (.csv or .parquet)")
    parser.add_argument("--out", required=True, help="folder for the PNG files (created if needed)")
    args = parser.parse_args(argv)
    try:
        table = load_table(args.table)
    except (OSError, ValueError) as error:
        parser.error(str(error))  # one line on stderr, exit status 2
    summary = summarise(table)
    for path in write_figures(summary, Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
