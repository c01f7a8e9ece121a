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


# -- linear regression's value grid (Fig. 5's protocol, one fit per cell) ----------------
# A cell fits least squares on N = n + s rows: n real rows (x ~ N(0, I_d), y = x.w* + e)
# and the first s rows of a synthetic pool (fresh x ~ N(0, I_d), y = x.w_m + e, with fresh
# noise e ~ N(0, sigma2), as the task's sampler draws them), where w_m is least squares on
# m separate real rows, so delta = w_m - w* has E[delta delta'] = g I, g = sigma2/(m-d-1).
# With W = X'X (all N rows) and S = X_s'X_s (the synthetic rows),
#     w_hat - w* = W^-1 X'e + W^-1 S delta,
# and the test loss (noise-free test points, E[test Gram / n_test] = I) has expectation
#     L(n, s) = sigma2 E tr W^-1 + g E||W^-1 S||_F^2
#             = sigma2 d / (N - d - 1) + g E tr(A A'),  A = W^-1 S.
# The variance falls with N = n + s; the bias is the generator's error carried in the
# proportion A ~ (s/N) I of the fit that the synthetic rows make. E tr(A A') exactly:
# polar decomposition X = H W^1/2 with H (N x d, orthonormal columns) uniform and
# independent of W, so A = W^-1/2 P W^1/2 with P = H_s'H_s independent of W, and
# tr(A A') = tr(P W P W^-1). With W = O D O' (O Haar) and the orthogonal group's
# Weingarten function (d >= 2),
#     E tr(A A') = [d u (alpha + d - 2) + v (d^2 - alpha)] / (d (d - 1)(d + 2)),
# u = E tr P^2, v = E (tr P)^2, alpha = E[tr W tr W^-1] = d (N d - 2)/(N - d - 1)
# (tr W ~ chi2_{Nd} is independent of W / tr W). P's moments are 4th moments of the
# first d columns of a Haar N x N orthogonal matrix restricted to s rows. For d = 1,
# tr(A A') = P^2 = u. Holds for N > d + 1 and m > d + 1; s = 0 gives
# linear_regression_base(n). The crossover: value(n, s) = L(n, s) - L(n, 0) < 0 where s
# synthetic rows help; roughly (A ~ s/N, N >> d) for s < m n / (n - m) when n > m, and
# for every s when n <= m.
def _haar_block_moments(big_n: float, s: float, d: int) -> tuple[float, float]:
    """(E tr P^2, E (tr P)^2) for P = H_s'H_s, H the first d columns of a Haar N x N
    orthogonal matrix and H_s its first s rows (Weingarten, 4th moments)."""
    n = big_n
    four = 3.0 / (n * (n + 2))  # E O_ia^4
    two_two = 1.0 / (n * (n + 2))  # E O_ia^2 O_ib^2 (same row or same column)
    apart = (n + 1) / (n * (n - 1) * (n + 2))  # E O_ia^2 O_jb^2, i != j, a != b
    cross = -1.0 / (n * (n - 1) * (n + 2))  # E O_ia O_ib O_ja O_jb, i != j, a != b
    same = s * d * four + s * d * (d - 1) * two_two + s * (s - 1) * d * two_two
    tr_p_sq = same + s * (s - 1) * d * (d - 1) * cross
    tr_p_then_sq = same + s * (s - 1) * d * (d - 1) * apart
    return tr_p_sq, tr_p_then_sq


def linear_regression_synthetic_share(n, s, d: int) -> np.ndarray:
    """E tr(A A') for A = W^-1 S (see above): d (s/N)^2 plus O(1/N) corrections."""
    n, s = np.broadcast_arrays(np.asarray(n, dtype=np.float64), np.asarray(s, dtype=np.float64))
    big_n = n + s
    u, v = _haar_block_moments(big_n, s, d)
    if d == 1:
        return np.asarray(u)
    alpha = d * (big_n * d - 2) / (big_n - d - 1)
    return (d * u * (alpha + d - 2) + v * (d * d - alpha)) / (d * (d - 1) * (d + 2))


def linear_regression_value_grid(n, s, m: int, d: int, sigma2: float) -> np.ndarray:
    """E[test_loss] of a value-grid cell: least squares on n real rows plus s pool rows
    labelled (with fresh noise) by least squares on m separate real rows;
    sigma2 d/(n+s-d-1) + sigma2/(m-d-1) E tr(A A'). NaN where n + s <= d + 1."""
    if m <= d + 1:
        raise ValueError(f"the generator's expected error is finite for m > d + 1 = {d + 1}; got m = {m}")
    n, s = np.broadcast_arrays(np.asarray(n, dtype=np.float64), np.asarray(s, dtype=np.float64))
    big_n = n + s
    ok = big_n > d + 1
    safe_n = np.where(ok, big_n, d + 2.0)
    share = linear_regression_synthetic_share(safe_n - s * ok, np.where(ok, s, 0.0), d)
    loss = sigma2 * d / (safe_n - d - 1) + sigma2 / (m - d - 1) * share
    return np.where(ok, loss, np.nan)


def linear_regression_value(n, s, m: int, d: int, sigma2: float) -> np.ndarray:
    """L(n, s) - L(n, 0): negative where s synthetic rows help (NaN where n <= d + 1,
    whose real-only fit has no finite expected error, or n + s <= d + 1)."""
    return linear_regression_value_grid(n, s, m, d, sigma2) - linear_regression_value_grid(n, 0, m, d, sigma2)


def linear_regression_crossover(n, m: int, d: int, sigma2: float, s_max: float = 1e7) -> np.ndarray:
    """For each n (> d + 1), the s > 0 where value(n, s) changes sign from help to harm
    (continuous in s; the bisection finds the first sign change on a log grid), or inf
    where s rows help for every s up to s_max."""
    out = []
    for n_real in np.atleast_1d(np.asarray(n, dtype=np.float64)):
        grid = np.geomspace(1e-3, s_max, 2000)
        value = linear_regression_value(n_real, grid, m, d, sigma2)
        harm = np.flatnonzero(value > 0)
        if n_real <= d + 1 or len(harm) == 0:
            out.append(np.inf)
            continue
        lo, hi = (grid[harm[0] - 1] if harm[0] > 0 else 0.0), grid[harm[0]]
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if linear_regression_value(n_real, mid, m, d, sigma2) > 0 else (mid, hi)
        out.append(0.5 * (lo + hi))
    return np.asarray(out)


def gaussian_value_grid_mean_sq_error(n, s, m: int, d: int, sigma2: float) -> np.ndarray:
    """E||mu_hat - mu_0||^2 of a Gaussian value-grid cell: the mean of n real rows and s
    rows sampled from the MLE fit to m separate real rows, mu_hat = (n xbar + s xbar_pool)/N
    with E||xbar_pool||^2 = E||mu_m||^2 + E tr Sigma_m / s = sigma2 d (1/m + (m-1)/(m s)):
    sigma2 d [n + s^2/m + s (m - 1)/m] / (n + s)^2."""
    n, s = np.asarray(n, dtype=np.float64), np.asarray(s, dtype=np.float64)
    return sigma2 * d * (n + s**2 / m + s * (m - 1) / m) / (n + s) ** 2
