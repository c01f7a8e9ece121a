"""The closed forms of `collapse_ray.theory` as figure overlays: E[metric] at iterations
t of one line (a setting), or accumulate's t -> infinity limit, where one is known.

They hold for n_synthetic == n_real and no fresh real data, under replace and accumulate;
a value-grid cell (task.value_pool_size > 0) has its own (value_grid).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from collapse_ray import theory

from analysis.style import missing


def applies(cfg: Mapping) -> bool:
    fresh = cfg.get("n_fresh_real")
    return cfg.get("n_synthetic") == cfg.get("n_real") and (missing(fresh) or fresh == 0)


def gaussian(metric: str, workflow: str, n: int, dim: int, sigma2: float, t: np.ndarray) -> np.ndarray | None:
    if workflow == "replace":
        if metric == "cov_trace_ratio":
            return theory.gaussian_replace_trace_ratio(n, t)
        if metric == "cov_det_ratio":
            return theory.gaussian_replace_det_ratio(n, dim, t)
        if metric == "mean_sq_error":
            return theory.gaussian_replace_mean_sq_error(n, dim, sigma2, t)
    if workflow == "accumulate":
        if metric == "cov_trace_ratio":
            return theory.gaussian_accumulate_trace_ratio(n, t)
        if metric == "mean_sq_error":
            return theory.gaussian_accumulate_mean_sq_error(n, dim, sigma2, t)
    return None


def expected(task: str, metric: str, workflow: str, cfg: Mapping, t: np.ndarray) -> np.ndarray | None:
    """E[metric] at iterations t, or None where none is known."""
    if is_value_grid_cell(cfg):  # Fig. 5's protocol: no chain, its own forms
        return value_grid(task, metric, cfg, t)
    if workflow not in ("replace", "accumulate") or not applies(cfg):
        return None
    n = int(cfg["n_real"])
    if task == "gaussian":
        return gaussian(metric, workflow, n, int(cfg["dim"]), float(cfg["sigma2"]), t)
    if task == "linear_regression" and metric == "test_loss":
        d = int(cfg["dim"])
        if n <= d + 1:
            return None
        formula = theory.linear_regression_replace if workflow == "replace" else theory.linear_regression_accumulate
        return formula(n, d, float(cfg["sigma2"]), t)
    if task == "discrete" and metric == "gini_simpson":
        formula = (theory.discrete_replace_gini_simpson if workflow == "replace"
                   else theory.discrete_accumulate_gini_simpson)
        return formula(int(cfg["n_outcomes"]), n, t)
    return None


def is_value_grid_cell(cfg: Mapping) -> bool:
    return (cfg.get("value_pool_size") or 0) > 0  # (a table's NaN compares False as well)


def value_grid(task: str, metric: str, cfg: Mapping, t: np.ndarray) -> np.ndarray | None:
    """E[metric] of a value-grid cell (n_real real rows plus the first value_synthetic rows
    of a pool sampled from a fit on value_pool_real separate rows; one iteration)."""
    n, s, m = int(cfg["n_real"]), int(cfg["value_synthetic"]), int(cfg["value_pool_real"])
    d, sigma2 = int(cfg["dim"]), float(cfg["sigma2"])
    if task == "linear_regression" and metric == "test_loss" and m > d + 1:
        value = float(theory.linear_regression_value_grid(n, s, m, d, sigma2))
    elif task == "gaussian" and metric == "mean_sq_error" and n + s > 0:
        value = float(theory.gaussian_value_grid_mean_sq_error(n, s, m, d, sigma2))
    else:
        return None
    return np.where(np.asarray(t) == 1, value, np.nan) if np.isfinite(value) else None


def limit(task: str, metric: str, workflow: str, cfg: Mapping) -> float | None:
    """Accumulate's bound or t -> infinity limit, where known."""
    if workflow != "accumulate" or not applies(cfg) or is_value_grid_cell(cfg):
        return None
    n = int(cfg["n_real"])
    if task == "gaussian" and metric == "cov_trace_ratio":
        return theory.gaussian_accumulate_trace_limit(n)
    if task == "linear_regression" and metric == "test_loss" and n > int(cfg["dim"]) + 1:
        return np.pi**2 / 6 * theory.linear_regression_base(n, int(cfg["dim"]), float(cfg["sigma2"]))
    if task == "discrete" and metric == "gini_simpson":
        return (1 - 1 / int(cfg["n_outcomes"])) * theory.gaussian_accumulate_trace_limit(n)
    return None
