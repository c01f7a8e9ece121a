"""The one rule for a mean over seeds and its standard error, used wherever one is shown:
the chain runs' MLflow metrics, the sweep's cell runs and table, and every figure.

Over the finite values only (a test loss is +inf once a fit is degenerate): `count` is
how many were finite, `total` how many there were, `se` the sample standard deviation
(ddof 1) / sqrt(count), NaN for fewer than two finite values, and the mean NaN when
none is finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MeanSE:
    """Per group (or one value each, when not grouped): mean, se, count, total."""

    mean: np.ndarray
    se: np.ndarray
    count: np.ndarray
    total: np.ndarray


def mean_se(values, groups=None, n_groups: int | None = None) -> MeanSE:
    """Mean and standard error of `values` over seeds, finite values only; per group when
    `groups` (integer labels 0..n_groups-1, one per value) is given, else of them all."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if groups is None:
        groups = np.zeros(len(values), dtype=np.int64)
        n_groups = 1
    groups = np.asarray(groups, dtype=np.int64).ravel()
    n_groups = int(groups.max()) + 1 if n_groups is None and len(groups) else int(n_groups or 0)
    finite = np.isfinite(values)
    kept = np.where(finite, values, 0.0)
    total = np.bincount(groups, minlength=n_groups).astype(np.int64)
    count = np.bincount(groups, weights=finite, minlength=n_groups).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(groups, weights=kept, minlength=n_groups) / count
        deviation = np.where(finite, values - mean[groups], 0.0)
        squares = np.bincount(groups, weights=deviation * deviation, minlength=n_groups)
        se = np.where(count > 1, np.sqrt(squares / (count - 1)) / np.sqrt(count), np.nan)
    mean = np.where(count > 0, mean, np.nan)
    return MeanSE(mean, se, count, total)


def mean_and_se(values) -> tuple[float, float]:
    """The rule for one set of values: (mean, se) as floats."""
    result = mean_se(values)
    return float(result.mean[0]), float(result.se[0])
