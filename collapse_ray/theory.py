"""Closed-form expectations that tests check Monte-Carlo results against and figures
draw beside them.

Indexing: t is the model-fitting iteration; iteration 1 fits the n real rows, so the
fit at iteration t has been through t MLE fits. Sigma_0, mu_0 are the true parameters
(sigma2 I_d and 0); n rows enter per iteration (n_real = n_synthetic = n).
"""

from __future__ import annotations

import numpy as np


def _iterations(t) -> np.ndarray:
    return np.asarray(t, dtype=np.int64)


def gaussian_replace_trace_ratio(n: int, t) -> np.ndarray:
    """E[tr Sigma_t] / tr Sigma_0 = (1 - 1/n)^t."""
    return (1.0 - 1.0 / n) ** _iterations(t)


def gaussian_replace_det_ratio(n: int, d: int, t) -> np.ndarray:
    """E[det Sigma_t] / det Sigma_0 = [prod_{i=1..d} (n - i)/n]^t (0 when n <= d)."""
    per_fit = np.prod([(n - i) / n for i in range(1, d + 1)])
    return max(per_fit, 0.0) ** _iterations(t)


def gaussian_replace_mean_sq_error(n: int, d: int, sigma2: float, t) -> np.ndarray:
    """E||mu_t - mu_0||^2 = tr Sigma_0 (1 - (1 - 1/n)^t)."""
    return d * sigma2 * (1.0 - (1.0 - 1.0 / n) ** _iterations(t))


def gaussian_accumulate_trace_ratio(n: int, t) -> np.ndarray:
    """E[Sigma_t] = Sigma_0 prod_{k=1..t} (1 - 1/(n k^2))."""
    t = _iterations(t)
    k = np.arange(1, int(t.max(initial=1)) + 1)
    cumulative = np.cumprod(1.0 - 1.0 / (n * k**2))
    return cumulative[t - 1]


def gaussian_accumulate_trace_limit(n: int) -> float:
    """lim_t E[tr Sigma_t]/tr Sigma_0 = sin(pi/sqrt n) / (pi/sqrt n)."""
    x = np.pi / np.sqrt(n)
    return float(np.sin(x) / x)


def gaussian_accumulate_mean_sq_error(n: int, d: int, sigma2: float, t) -> np.ndarray:
    """E||mu_t - mu_0||^2 = (1/n) sum_{k=1..t} E[tr Sigma_{k-1}] / k^2, with Sigma_{k-1}
    the fit of iteration k-1 (the truth for k = 1); bounded by (pi^2/6) tr Sigma_0 / n."""
    t = _iterations(t)
    k = np.arange(1, int(t.max(initial=1)) + 1)
    trace_prev = d * sigma2 * np.concatenate([[1.0], gaussian_accumulate_trace_ratio(n, k[:-1])])
    return np.cumsum(trace_prev / k**2)[t - 1] / n


def gaussian_accumulate_mean_sq_error_bound(n: int, d: int, sigma2: float) -> float:
    return float(np.pi**2 / 6 * d * sigma2 / n)


# -- linear regression (fixed n x d Gaussian design, noise variance sigma2) ---------
def linear_regression_base(n: int, d: int, sigma2: float) -> float:
    """E[test_loss_1] = sigma2 d / (n - d - 1): iteration 1, real labels only (n > d + 1)."""
    return sigma2 * d / (n - d - 1)


def linear_regression_replace(n: int, d: int, sigma2: float, t) -> np.ndarray:
    """E[test_loss_t] = sigma2 d t / (n - d - 1)."""
    return linear_regression_base(n, d, sigma2) * _iterations(t)


def linear_regression_accumulate(n: int, d: int, sigma2: float, t) -> np.ndarray:
    """E[test_loss_t] = sigma2 d / (n - d - 1) sum_{i=1..t} 1/i^2 <= (pi^2/6) x iteration 1's."""
    t = _iterations(t)
    i = np.arange(1, int(t.max(initial=1)) + 1)
    return linear_regression_base(n, d, sigma2) * np.cumsum(1.0 / i**2)[t - 1]


# -- discrete distribution (K outcomes, uniform start, n draws per iteration) -------
def discrete_replace_gini_simpson(n_outcomes: int, n: int, t) -> np.ndarray:
    """E[H_t] = H_0 (1 - 1/n)^t with H_0 = 1 - 1/K."""
    return (1.0 - 1.0 / n_outcomes) * (1.0 - 1.0 / n) ** _iterations(t)


def discrete_accumulate_gini_simpson(n_outcomes: int, n: int, t) -> np.ndarray:
    """E[H_t] = H_0 prod_{k=1..t} (1 - 1/(n k^2))."""
    return (1.0 - 1.0 / n_outcomes) * gaussian_accumulate_trace_ratio(n, t)
