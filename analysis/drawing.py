"""What every figure draws with: the canvas, the one save helper, the grid of panels,
mean +- SE lines with their closed forms, log axes and legends.

Figures are matplotlib `Figure`s on the Agg canvas, attached when a figure is made and
without pyplot, so importing analysis changes no global backend or figure state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis import closed_forms
from analysis.style import BAND_LABEL, XLABEL, darker

DPI = 150
LOG_SPAN = 10.0  # a panel goes log when its positive means span this factor
THEORY_DASH = (0, (4, 2))


# -- canvas and files -------------------------------------------------------------
def figure(size: tuple[float, float], layout: str = "constrained") -> Figure:
    """A pyplot-free figure on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=size, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path, pdf: bool = False) -> Path:
    """The figure as PNG at `path` (and as PDF beside it when `pdf`, as (A)'s notebooks
    offer); returns the PNG's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    if pdf:
        fig.savefig(path.with_suffix(".pdf"))
    return path


def layout_problems(fig: Figure, tolerance: float = 1.0) -> list[str]:
    """Texts that overlap another text or fall outside the canvas, as drawn (matplotlib's
    tight bounding boxes, in pixels): what a reader would see clipped or printed over."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    from matplotlib.axis import Tick
    from matplotlib.text import Text

    ticks = {id(t) for axes in fig.axes for axis in (axes.xaxis, axes.yaxis)
             for tick in axis.get_major_ticks() + axis.get_minor_ticks() for t in (tick.label1, tick.label2)}
    candidates = {id(t): t for t in fig.findobj(Text) if id(t) not in ticks}
    for axes in fig.axes:  # tick labels: only those of ticks drawn (inside the view limits)
        for axis in (axes.xaxis, axes.yaxis):
            for tick in axis._update_ticks():
                candidates.update({id(t): t for t in (tick.label1, tick.label2)})
    texts = [(t, t.get_window_extent(renderer)) for t in candidates.values()
             if t.get_visible() and str(t.get_text()).strip() and t.get_figure(root=True) is fig]
    problems = []
    for text, box in texts:
        if (box.x0 < canvas.x0 - tolerance or box.y0 < canvas.y0 - tolerance
                or box.x1 > canvas.x1 + tolerance or box.y1 > canvas.y1 + tolerance):
            problems.append(f"{text.get_text()!r} falls outside the canvas")
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1:]:
            width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if width > tolerance and height > tolerance:
                problems.append(f"{a.get_text()!r} overlaps {b.get_text()!r}")
    return problems


# -- panels -----------------------------------------------------------------------
def panel_grid(fig: Figure, n_rows: int, n_columns: int, *, titles: Sequence[str] = (),
               ylabels: Sequence[str] = (), xlabel: str | None = XLABEL, title_size: float = 10,
               ylabel_size: float | None = None, **share) -> np.ndarray:
    """An (n_rows, n_columns) array of axes: `titles` over the top row, `ylabels` on the
    left column, `xlabel` under the bottom row; `share` goes to Figure.subplots."""
    axes = fig.subplots(n_rows, n_columns, squeeze=False, **share)
    for ax, text in zip(axes[0], titles):
        ax.set_title(text, fontsize=title_size)
    for ax, text in zip(axes[:, 0], ylabels):
        ax.set_ylabel(text, fontsize=ylabel_size)
    if xlabel:
        for ax in axes[-1]:
            ax.set_xlabel(xlabel)
    return axes


def positive_band(mean: np.ndarray, se: np.ndarray, log: bool) -> tuple[np.ndarray, np.ndarray]:
    """mean -+ se; on a log axis a non-positive lower edge is masked (no band there)."""
    lower, upper = mean - se, mean + se
    if log:
        lower = np.where(lower > 0, lower, np.nan)
    return lower, upper


def draw_line(ax, line: pd.DataFrame, colour, ls: str = "-", log: bool = False, lw: float = 1.6,
              band: bool = True) -> list[np.ndarray]:
    """Mean over seeds with a +-1 SE band; returns the values drawn (for log limits)."""
    line = line.sort_values("iteration")
    t = line["iteration"].to_numpy()
    mean, se = line["mean"].to_numpy(dtype=float), np.nan_to_num(line["se"].to_numpy(dtype=float))
    shown = np.where(mean > 0, mean, np.nan) if log else mean
    ax.plot(t, shown, color=colour, ls=ls, lw=lw, zorder=3)
    lower, upper = positive_band(mean, se, log)
    if band:
        ax.fill_between(t, lower, upper, color=colour, alpha=0.25, lw=0, zorder=2)
    return [shown, lower, upper]


def draw_theory(ax, task: str, metric: str, line: pd.DataFrame, colour, log: bool,
                limit: bool = True) -> list[np.ndarray]:
    """The closed form (dashed, darker) and accumulate's bound (dotted) of one line."""
    cfg = line.iloc[0].to_dict()
    workflow = cfg["workflow"]
    t = np.sort(line["iteration"].to_numpy())
    drawn = []
    curve = closed_forms.expected(task, metric, workflow, cfg, t)
    if curve is not None:
        curve = np.where(curve > 0, curve, np.nan) if log else curve
        ax.plot(t, curve, color=darker(colour), ls=THEORY_DASH, lw=1.2, zorder=4)
        drawn.append(curve)
    bound = closed_forms.limit(task, metric, workflow, cfg) if limit else None
    if bound is not None:
        ax.axhline(bound, color=darker(colour), ls=":", lw=1.1, zorder=4)
        drawn.append(np.array([bound]))
    return drawn


def draw_lines(ax, panel: pd.DataFrame, by: Sequence[str], style: Callable[[dict], tuple], log: bool = False,
               theory: tuple[str, str] | None = None, limit: bool = False) -> tuple[list[np.ndarray], bool]:
    """One mean +- SE line per group of `by` (style(group) -> (colour, line style)), with
    its closed form when theory = (task, metric); returns the values drawn and whether
    any closed form was."""
    drawn, any_theory = [], False
    for key, line in panel.groupby(list(by), sort=True, dropna=False):
        colour, ls = style(dict(zip(by, key)))
        drawn += draw_line(ax, line, colour, ls, log)
        if theory is not None:
            curves = draw_theory(ax, *theory, line, colour, log, limit=limit)
            any_theory |= bool(curves)
            drawn += curves
    return drawn, any_theory


# -- axes -------------------------------------------------------------------------
def wants_log(means: np.ndarray) -> bool:
    """Log y when no mean is negative and the positive ones span LOG_SPAN."""
    finite = means[np.isfinite(means)]
    positive = finite[finite > 0]
    if not len(positive) or (finite < 0).any():
        return False
    return positive.max() / positive.min() >= LOG_SPAN


def log_limits(ax, values: np.ndarray, max_pad: float = 3.0) -> None:
    """y limits around the positive values with at most a factor max_pad of margin
    (matplotlib's 5 % of a 300-decade range would add 15 decades)."""
    values = values[np.isfinite(values) & (values > 0)]
    if len(values):
        lo, hi = float(values.min()), float(values.max())
        pad = min(10 ** (0.05 * (np.log10(hi) - np.log10(lo))), max_pad) if hi > lo else 2.0
        ax.set_ylim(lo / pad, hi * pad)


def finish_axis(ax, values: list[np.ndarray], log: bool, plain_ticks: bool = True) -> None:
    if log:
        ax.set_yscale("log")
        log_limits(ax, np.concatenate(values) if values else np.array([]))
        if plain_ticks:
            low, high = ax.get_ylim()
            if high / low < 1e3:  # few decades: ticks at 1, 2, 5 x 10^k, written plainly
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(FuncFormatter(plain_log_label))
    ax.grid(True, which="major", alpha=0.3)


def plain_log_label(value: float, _pos=None) -> str:
    """0.1, 2, 500 as they are; very small or large numbers as powers of ten."""
    if value <= 0:
        return ""
    if 1e-3 <= value < 1e4:
        return f"{value:g}"
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10**exponent
    return f"$10^{{{exponent}}}$" if abs(mantissa - 1) < 1e-6 else f"${mantissa:g}\times10^{{{exponent}}}$"


def note(ax, text: str) -> None:
    """A note in the panel, placed by loc="best" off the curves (an empty-handle legend)."""
    legend = ax.legend([Line2D([], [], ls="none")], [text], loc="best", handlelength=0, handletextpad=0,
                       fontsize=7, labelcolor="0.25", framealpha=0.85)
    legend.set_zorder(5)


def nonfinite_note(ax, frame: pd.DataFrame) -> None:
    """Say, in the panel, how many chains were non-finite at the last iteration."""
    last = frame[frame["iteration"] == frame["iteration"].max()]
    lost = int((last["total"] - last["count"]).sum())
    if lost:
        note(ax, f"{lost}/{int(last['total'].sum())} chains non-finite at t = {int(last['iteration'].iloc[0])}\n"
                 "(means over finite chains)")


# -- legends ----------------------------------------------------------------------
def band_handle(label: str = BAND_LABEL) -> Patch:
    return Patch(color="0.6", alpha=0.5, label=label)


def colour_handles(colours: dict, labels: dict) -> list:
    return [Line2D([], [], color=c, lw=2, label=labels[k]) for k, c in colours.items()]


def theory_handles(theory_drawn: bool, bound_label: str | None) -> list:
    handles = []
    if theory_drawn:
        handles.append(Line2D([], [], color="0.2", ls=THEORY_DASH, lw=1.2, label="closed form"))
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


def notes_suffix(notes: Sequence[str]) -> str:
    return f"\n(also fixed: {', '.join(notes)})" if notes else ""


def mean_curve(ax, line: pd.DataFrame, x: str, colour, label: str, alpha: float = 0.2, ms: float | None = None) -> None:
    """A mean (`mean_se` rows sorted along x) with markers and, where some point is over
    more than one run, its +-1 SE band."""
    ax.plot(line[x], line["mean"], marker="o", ms=ms, color=colour, label=label)
    if line["count"].max() > 1:
        ax.fill_between(line[x], line["mean"] - line["se"], line["mean"] + line["se"], color=colour, alpha=alpha)
