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
  iteration, one colour per d at the n closest to 100, replace solid, accumulate dashed,
  accumulate-subsample dotted.

Means are taken over finite values: the test NLL is +inf once a chain's covariance is
singular, so that row shows the mean over the chains still finite ("finite chains"),
and a panel says how many chains were non-finite at the last iteration. A row of panels
shares one y scale, so workflows compare across columns: log where replace's mean error,
trace or det collapse toward 0 or any panel's means span a decade; a mean of exactly 0 (det ratio with n <= d, or
underflowed) cannot be drawn on a log axis, and the panel says so. Figures are drawn
on matplotlib's Agg canvas without pyplot, so importing this module changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import the analysis package, not the folder's files
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from analysis import closed_forms, drawing, style, tables  # noqa: E402

WORKFLOWS = style.CLASSIC
METRICS = ("mean_sq_error", "cov_trace_ratio", "cov_det_ratio", "test_loss")
SUMMARY_METRICS = METRICS + ("cov_log_det_ratio",)
# A line is one (dim, sigma2, n_real, n_synthetic, workflow); a point adds iteration.
LINE_KEYS = ["dim", "sigma2", "n_real", "n_synthetic", "workflow"]
N_STYLES = ("-", (0, (5, 2)), ":", "-.", (0, (1, 1)))  # sample sizes by line style; colour is the workflow
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


# -- data -------------------------------------------------------------------------
def load_table(path: str | Path) -> pd.DataFrame:
    """The Gaussian rows of a results table (.csv or .parquet); InputError (a
    ValueError) for a table that is not one, or holds the same chains twice."""
    table = tables.load_tables([path])
    table = table[table["task"] == "gaussian"].reset_index(drop=True)
    if table.empty:
        raise tables.InputError(f"{path} has no rows with task == 'gaussian'")
    return table


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error over seeds of each metric, long format: one row per
    (dim, sigma2, n_real, n_synthetic, workflow, iteration, metric), finite values only
    (`analysis.tables`)."""
    return tables.summarise_long(table, GROUP_KEYS, [m for m in SUMMARY_METRICS if m in table.columns])


# -- plotting ---------------------------------------------------------------------
def plot_panel(ax, panel: pd.DataFrame, metric: str, line_styles: dict, log: bool) -> tuple[bool, np.ndarray]:
    """One metric under one workflow: data mean +- SE and closed forms, in the workflow's
    colour, one line style per n; returns whether a closed form was drawn, and the values
    drawn (for the row's limits)."""
    drawn, any_theory = drawing.draw_lines(
        ax, panel, ["sigma2", "n_real", "n_synthetic", "workflow"],
        lambda g: (style.colour(g["workflow"]), line_styles[(g["n_real"], g["n_synthetic"], g["sigma2"])]),
        log, theory=("gaussian", metric), limit=True)
    notes = []
    for (_, n_real, _), line in panel.groupby(["sigma2", "n_real", "n_synthetic"], sort=True):
        line = line.sort_values("iteration")
        mean = line["mean"].to_numpy(dtype=float)
        notes += _panel_notes(line, np.where(mean > 0, mean, np.nan) if log else mean, n_real)
    if notes:
        drawing.note(ax, "\n".join(notes))
    return any_theory, np.concatenate(drawn) if drawn else np.array([])


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


def use_log_scale(means: np.ndarray, metric: str, workflow: str) -> bool:
    """Log y for replace's collapsing metrics; elsewhere when no mean is negative and the
    positive ones span a decade (means at exactly 0, an underflowed det, get a note)."""
    return (workflow == "replace" and metric in LOG_UNDER_REPLACE) or drawing.wants_log(means)


def plot_dimension(summary: pd.DataFrame, dim: int) -> Figure:
    """The Fig. 1 grid for one dimension: rows = metrics, columns = workflows present."""
    data = summary[(summary["dim"] == dim) & summary["metric"].isin(METRICS)]
    workflows = [w for w in WORKFLOWS if w in set(data["workflow"])]
    metrics = [m for m in METRICS if m in set(data["metric"])]
    keys = sorted(set(zip(data["n_real"], data["n_synthetic"], data["sigma2"])))
    line_styles = {k: N_STYLES[i % len(N_STYLES)] for i, k in enumerate(keys)}
    many_sigma2 = data["sigma2"].nunique() > 1
    labels = {k: style.series_label(k[0], k[1], k[2], many_sigma2) for k in keys}
    fig = drawing.figure((3.6 * len(workflows) + 0.6, 2.6 * len(metrics)))
    # one y scale per row, so the workflows compare across columns: log for the whole row
    # when any of its panels wants it
    axes = drawing.panel_grid(fig, len(metrics), len(workflows), sharex=True, sharey="row",
                              titles=[f"Gaussian, d = {dim}: {style.title(w)}" for w in workflows],
                              ylabels=[YLABELS[m] for m in metrics])
    has_theory = False
    for i, metric in enumerate(metrics):
        row = data[data["metric"] == metric]
        log = any(use_log_scale(row[row["workflow"] == w]["mean"].to_numpy(dtype=float), metric, w)
                  for w in workflows) and not (row["mean"] < 0).any()
        drawn = []
        for j, workflow in enumerate(workflows):
            ax = axes[i, j]
            if log:
                ax.set_yscale("log")
            theory, values = plot_panel(ax, row[row["workflow"] == workflow], metric, line_styles, log)
            has_theory |= theory
            drawn.append(values)
            ax.grid(True, which="major", alpha=0.3)
        if log:
            drawing.log_limits(axes[i, 0], np.concatenate(drawn))  # shared by the row
    has_limit = "accumulate" in workflows and "cov_trace_ratio" in metrics
    handles = [Line2D([], [], color=style.colour(w), lw=2, label=style.title(w)) for w in workflows]
    handles += [Line2D([], [], color="0.3", ls=ls, lw=1.6, label=labels[k]) for k, ls in line_styles.items()]
    handles.append(drawing.band_handle("Monte-Carlo mean ± 1 SE"))
    handles += drawing.theory_handles(has_theory, r"accumulate limit $t\to\infty$" if has_limit else None)
    drawing.legend_below(fig, handles)
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


def density_chain(n: int, sigma2: float, n_iterations: int, workflow: str, seed: int = 0,
                  dim: int = 1) -> pd.DataFrame:
    """One chain at dimension `dim`: its fitted mean and variance of the first coordinate
    per iteration, through the real loop and task."""
    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig
    from collapse_ray.tasks import GaussianTask

    task = _DensityProbe(GaussianTask(dim=dim, sigma2=sigma2, n_test=10))
    chain = ChainConfig(workflow=workflow, n_real=n, n_iterations=n_iterations).resolved()
    return run_chain(task, chain, [seed]).table[["iteration", "fit_mean", "fit_var"]]


def plot_densities(axes, summary: pd.DataFrame, dim: int) -> None:
    """(A)'s Fig. 1 top row: one chain's fitted densities across iterations, replace and
    accumulate, over the truth: the sweep's own d and n (the n nearest 32 it ran; for
    d > 1 the first coordinate's marginal)."""
    rows = summary[summary["dim"] == dim]
    n = overview_n(rows, dim, target=DENSITY_N_TARGET) or DENSITY_N_TARGET
    sigma2 = float(rows["sigma2"].iloc[0])
    last = int(summary["iteration"].max())
    shown = [t for t in DENSITY_ITERATIONS if t <= last] + ([last] if last not in DENSITY_ITERATIONS else [])
    colours = style.ramp(shown, "viridis", 0.0, 0.9, single=0.0)
    x = np.linspace(-4 * np.sqrt(sigma2), 4 * np.sqrt(sigma2), 600)
    peak = 1 / np.sqrt(2 * np.pi * sigma2)
    where = f"d = {dim}, n = {n}" + (", coordinate 1" if dim > 1 else "")
    for ax, workflow in zip(axes, ("replace", "accumulate")):
        fits = density_chain(n, sigma2, last, workflow, dim=dim).set_index("iteration")
        for t in shown:
            mean, var = fits.loc[t, "fit_mean"], fits.loc[t, "fit_var"]
            ax.plot(x, np.exp(-0.5 * (x - mean) ** 2 / var) / np.sqrt(2 * np.pi * var), color=colours[t], lw=1.4)
        ax.plot(x, peak * np.exp(-0.5 * x**2 / sigma2), color="k", ls=(0, (4, 2)), lw=1.2)
        ax.set_ylim(0, 3 * peak)  # a collapsed fit's spike is cut off here
        ax.set_title(f"{style.title(workflow)}: one chain's fitted densities\n({where}, seed 0)", fontsize=10)
        ax.set_xlabel("x")
        ax.set_ylabel("density")
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=colours[t], lw=2, label=f"t = {t}") for t in shown]
    handles.append(Line2D([], [], color="k", ls=(0, (4, 2)), lw=1.2, label=r"truth $N(0, \sigma^2)$"))
    axes[1].legend(handles=handles, fontsize=7, loc="upper right", ncol=2, frameon=False)


def plot_overview(summary: pd.DataFrame, densities: bool = True) -> Figure:
    """(A)'s Fig. 1 for one d (the sweep's largest): the fitted 1-D densities across
    iterations (top, one chain each of replace and accumulate), then the trace ratio and
    the normalised mean error against t: one colour per workflow, one line style per n,
    mean over seeds +- 1 SE and the closed forms where known (fig1_gaussian_d*.png has
    every d)."""
    dim = int(summary["dim"].max())
    data = summary[(summary["dim"] == dim) & (summary["n_real"] == summary["n_synthetic"])]
    workflows = [w for w in WORKFLOWS if w in set(data["workflow"])]
    ns = sorted(int(n) for n in data["n_real"].unique())
    line_styles = {n: N_STYLES[i % len(N_STYLES)] for i, n in enumerate(ns)}
    panels = [("cov_trace_ratio", YLABELS["cov_trace_ratio"]),
              ("mean_sq_error", r"$\|\hat\mu_t - \mu_0\|^2$ / ($d\,\sigma^2$)")]
    fig = drawing.figure((10.0, 8.0 if densities else 4.6))
    if densities:
        grid = fig.subplots(2, 2)
        plot_densities(grid[0], summary, dim)
        axes = grid[1]
    else:
        axes = fig.subplots(1, 2)
    any_theory = False
    for ax, (metric, ylabel) in zip(axes, panels):
        for workflow in workflows:
            for n in ns:
                line = data[(data["workflow"] == workflow) & (data["n_real"] == n) & (data["metric"] == metric)]
                for sigma2, one in line.groupby("sigma2"):
                    scale = dim * sigma2 if metric == "mean_sq_error" else 1.0
                    one = one.assign(mean=one["mean"] / scale, se=one["se"] / scale)
                    drawing.draw_line(ax, one, style.colour(workflow), line_styles[n], log=True)
                    cfg = one.iloc[0].to_dict()
                    curve = closed_forms.expected("gaussian", metric, workflow, cfg,
                                                  np.sort(one["iteration"].to_numpy()))
                    if curve is not None:
                        ax.plot(np.sort(one["iteration"].to_numpy()), curve / scale, color=style.darker(style.colour(workflow)),
                                ls=drawing.THEORY_DASH, lw=1.0, zorder=4)
                        any_theory = True
        ax.set_yscale("log")
        ax.set_xlabel(style.XLABEL)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_title(f"covariance trace ratio (d = {dim})", fontsize=10)
    axes[1].set_title(f"squared error of the mean (d = {dim})", fontsize=10)
    handles = [Line2D([], [], color=style.colour(w), lw=2, label=style.title(w)) for w in workflows]
    handles += [Line2D([], [], color="0.3", ls=line_styles[n], lw=1.6, label=f"n = {n}") for n in ns]
    handles.append(drawing.band_handle())
    handles += drawing.theory_handles(any_theory, None)
    drawing.legend_below(fig, handles)
    return fig


def write_figures(summary: pd.DataFrame, out: Path, pdf: bool = False) -> list[Path]:
    written = [drawing.save(plot_dimension(summary, int(dim)), out / f"fig1_gaussian_d{int(dim)}.png", pdf)
               for dim in sorted(summary["dim"].unique())]
    written.append(drawing.save(plot_overview(summary), out / "fig1_gaussian_overview.png", pdf))
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="results table from `collapse-ray results` (.csv or .parquet)")
    parser.add_argument("--out", required=True, help="folder for the PNG files (created if needed)")
    parser.add_argument("--pdf", action="store_true", help="also write each figure as PDF beside its PNG")
    args = parser.parse_args(argv)
    try:
        table = load_table(args.table)
    except tables.InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in write_figures(summarise(table), Path(args.out), args.pdf):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
