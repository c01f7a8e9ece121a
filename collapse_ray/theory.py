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


# -- time to collapse: replace on a discrete distribution is neutral Wright-Fisher -------
# Replace draws n outcomes from the last fit's proportions, i.e. one generation of the
# neutral haploid Wright-Fisher model with population n and K alleles; an outcome (an
# allele) lost never returns, and the chain collapses when one is left (fixation).
# Diffusion approximation (time in units of n generations, generator
# (1/2) sum_ij x_i (delta_ij - x_j) d^2/dx_i dx_j): the expected time until one allele
# is left, from frequencies x_1..x_K, is
#     E[T] = -2n sum_i (1 - x_i) ln(1 - x_i)   generations,
# Littler, R. A. (1975) "Loss of variability at one locus in a finite population",
# Math. Biosci. 25:151-163; rederived with every other extinction time by Baxter, Blythe
# and McKane (2007) "Exact solution of the multi-allelic diffusion model", Math. Biosci.
# 209:124-170 (arXiv q-bio/0508045). Diploid texts write 4N where a haploid population
# of n has 2n. For K = 2 it is Kimura and Ohta's (1969) mean time to fixation or loss,
# -2n[x ln x + (1-x) ln(1-x)]; the tests check it against the exact K = 2 chain and
# against Monte Carlo for K = 10 and 100. From the uniform start
# x_i = 1/K (iteration 1 fits n draws from it, so T counts fits up to the first with one
# outcome): E[T] = 2n (K - 1) ln(K / (K - 1)), between 2n ln 2 (K = 2) and 2n (K -> inf).
# The diffusion is exact as n -> inf with T/n fixed; for finite n the exact chain is a
# little faster: relative error -0.92/n, -1.46/n, -2.0/n at n = 10, 100, 1000 for K = 2
# (wright_fisher_two_outcomes_exact), i.e. O(log(n)/n).
# Under accumulate the chain never collapses: every outcome of the real draw stays in the
# pool, so the expected time to collapse is infinite; the Gini-Simpson diversity instead
# levels at H_0 prod_k (1 - 1/(n k^2)) -> H_0 sin(pi/sqrt n)/(pi/sqrt n)
# (discrete_accumulate_gini_simpson).
def discrete_replace_collapse_time(n_outcomes, n):
    """E[generations until one outcome is left] from the uniform start, diffusion
    approximation: 2n (K - 1) ln(K / (K - 1)) (Littler 1975; see above)."""
    k = np.asarray(n_outcomes, dtype=np.float64)
    return 2.0 * np.asarray(n, dtype=np.float64) * (k - 1.0) * np.log(k / (k - 1.0))


def discrete_replace_collapse_time_from(proportions, n: int) -> float:
    """The same expectation from any start x: -2n sum_i (1 - x_i) ln(1 - x_i)."""
    x = np.asarray(proportions, dtype=np.float64)
    x = x[(x > 0) & (x < 1)]
    return float(-2.0 * n * np.sum((1.0 - x) * np.log1p(-x)))


def discrete_collapse_time_relative_error_bound(n) -> np.ndarray:
    """Allowance for the diffusion approximation's error at finite n, relative to it:
    0.5 (1 + ln n) / n, about twice the exact K = 2 error at n = 10..1000."""
    n = np.asarray(n, dtype=np.float64)
    return 0.5 * (1.0 + np.log(n)) / n


def wright_fisher_two_outcomes_exact(n: int) -> float:
    """Exact E[iterations to collapse] for K = 2 from the uniform start: the absorbing
    Markov chain on counts 0..n with Binomial(n, i/n) steps, solved as (I - Q) m = 1;
    the first fit's counts are Binomial(n, 1/2). O(n^3): for n up to a few thousand."""
    from scipy.stats import binom

    i = np.arange(1, n)
    q = binom.pmf(i[None, :], n, (i / n)[:, None])  # transient-to-transient steps
    further = np.linalg.solve(np.eye(n - 1) - q, np.ones(n - 1))
    return float(1.0 + binom.pmf(i, n, 0.5) @ further)
