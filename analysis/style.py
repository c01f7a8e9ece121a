"""One look for every figure: the workflows' order, colours, line styles and labels, and
the colour ramps for n. Workflow names come from `collapse_ray.core.workflows`; a workflow
added there without a colour here is drawn grey and fails tests/test_analysis.py."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import matplotlib
import matplotlib.colors as mcolors
import numpy as np

from collapse_ray.core.workflows import KNOBS, WORKFLOW_NAMES

# The papers' column order: replace, then accumulate-subsample (fixed training-set size),
# then accumulate; the mixing policies after them in the order workflows.py lists them.
CLASSIC = ("replace", "accumulate_subsample", "accumulate")
ORDER = CLASSIC + tuple(w for w in WORKFLOW_NAMES if w not in CLASSIC)
TITLES = {w: w.replace("_", " ") for w in ORDER} | {"accumulate_subsample": "accumulate-subsample"}
COLOURS = {"replace": "tab:red", "accumulate_subsample": "tab:orange", "accumulate": "tab:blue",
           "fresh_data": "tab:purple", "iterative_retraining": "tab:green", "real_fraction": "tab:brown"}
UNKNOWN_COLOUR = "0.3"
LINE_STYLES = {"replace": "-", "accumulate": "--", "accumulate_subsample": ":"}  # where colour is n
XLABEL = "model-fitting iteration t"
BAND_LABEL = "mean over seeds ± 1 SE"


def ordered(workflows: Iterable[str]) -> list[str]:
    """The workflows present, in ORDER, then any others alphabetically."""
    present = set(workflows)
    return [w for w in ORDER if w in present] + sorted(present - set(ORDER))


def title(workflow: str) -> str:
    return TITLES.get(workflow, workflow)


def colour(workflow: str):
    return COLOURS.get(workflow, UNKNOWN_COLOUR)


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def workflow_label(workflow: str, cfg: Mapping) -> str:
    """A workflow with the knobs that set it: 'iterative retraining (λ = 1)'."""
    def value(name):
        v = cfg.get(name)
        return None if missing(v) else v

    knobs = []
    if workflow in ("accumulate_subsample", "real_fraction") and value("n_train") is not None:
        knobs.append(f"n_train = {int(value('n_train'))}")
    if workflow == "iterative_retraining" and value("synthetic_ratio") is not None:
        knobs.append(f"λ = {value('synthetic_ratio'):g}")
    if workflow == "real_fraction" and value("real_fraction") is not None:
        knobs.append(f"{100 * value('real_fraction'):g} % real")
    if value("n_fresh_real"):
        knobs.append(f"{int(value('n_fresh_real'))} fresh real / iteration")
    return title(workflow) + (f" ({', '.join(knobs)})" if knobs else "")


def ramp(keys: list, cmap: str = "viridis", start: float = 0.85, stop: float = 0.05, single: float = 0.4) -> dict:
    """A sequential colour per key, from `start` to `stop` along the colour map."""
    positions = np.linspace(start, stop, len(keys)) if len(keys) > 1 else [single]
    return {key: matplotlib.colormaps[cmap](p) for key, p in zip(keys, positions)}


def n_colours(keys: list[tuple]) -> dict[tuple, tuple]:
    """A viridis colour per (n_real, n_synthetic, ...) key, light (small n) to dark."""
    return ramp(keys)


def log_n_palette(ns: list[int]) -> dict:
    """(A)'s 'cool' palette on a log scale of n."""
    cmap = matplotlib.colormaps["cool"]
    lo, hi = math.log(min(ns)), math.log(max(ns))
    return {n: cmap(0.5 if hi == lo else (math.log(n) - lo) / (hi - lo)) for n in ns}


def darker(colour, amount: float = 0.45) -> tuple:
    """The colour mixed toward black: theory lines, visible on top of the data band."""
    r, g, b = mcolors.to_rgb(colour)
    return (r * (1 - amount), g * (1 - amount), b * (1 - amount))


def series_label(n_real: int, n_synthetic: int, sigma2: float = 0.0, many_sigma2: bool = False) -> str:
    label = f"n = {n_real}" if n_real == n_synthetic else f"n_real = {n_real}, n_syn = {n_synthetic}"
    return label + (f", $\\sigma^2$ = {sigma2:g}" if many_sigma2 else "")


__all__ = ["BAND_LABEL", "CLASSIC", "COLOURS", "KNOBS", "LINE_STYLES", "ORDER", "TITLES", "XLABEL", "colour",
           "darker", "log_n_palette", "missing", "n_colours", "ordered", "ramp", "series_label", "title",
           "workflow_label"]
