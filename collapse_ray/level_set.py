"""Gaussian-process level-set estimation over a finite set of points, in numpy: where is a
function above or below 0, from few noisy evaluations (collapse_ray.contour_search uses it
for the value grid's contour L(n, s) - L(n, 0) = 0).

* `fit`: a zero-mean GP with a Matern-5/2 ARD kernel on inputs scaled to [0, 1], each
  observation with its own known noise variance (its standard error squared) plus a
  fitted nugget for what the standard errors miss; the signal scale, the two length
  scales and the nugget maximise the marginal likelihood over a fixed grid (784 points,
  one batched Cholesky: deterministic, no optimiser restarts). Zero mean on purpose: far
  from data the posterior falls back to "undecided", never to a side.
* `straddle` (Bryan et al. 2005: kappa sd - |mean|) and `lse_ambiguity` (Gotovos et al.
  2013: confidence intervals intersected over rounds, a point classified once its interval
  leaves 0) score candidates; `greedy_batch` picks several at once by conditioning the
  posterior covariance on the points already picked (their outcomes unknown, so only the
  variance shrinks: the mean given its own prediction is unchanged).

Costs: fitting O(784 n^3) with n the points observed (a few ms for n = 60); prediction
O(n m) for m candidates; a batch O(m^2) per pick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

LENGTH_SCALES = np.geomspace(0.08, 2.0, 7)  # in units of each input's range on the grid
SIGNAL_SCALES = (0.5, 1.0, 2.0, 4.0)  # x the root mean square of the targets (the prior is centred on 0)
NUGGETS = (1e-4, 1e-2, 0.05, 0.2)  # x the signal variance: model misfit and noise the standard errors miss
JITTER = 1e-10


def matern52(r: np.ndarray) -> np.ndarray:
    """Matern-5/2 correlation at scaled distance r."""
    root5r = np.sqrt(5.0) * r
    return (1.0 + root5r + root5r**2 / 3.0) * np.exp(-root5r)


def _scaled_distance(a: np.ndarray, b: np.ndarray, length_scales: np.ndarray) -> np.ndarray:
    """Distances between rows of a (n, 2) and b (m, 2) for each row of length_scales (L, 2): (L, n, m)."""
    diff2 = (a[:, None, :] - b[None, :, :]) ** 2
    return np.sqrt(np.einsum("nmd,ld->lnm", diff2, 1.0 / np.atleast_2d(length_scales) ** 2))


@dataclass(frozen=True)
class GaussianProcess:
    """A fitted GP: its training inputs, hyperparameters and what prediction needs."""

    x: np.ndarray  # (n, 2) scaled inputs
    y: np.ndarray  # (n,) targets
    noise: np.ndarray  # (n,) known noise variances
    length_scales: np.ndarray  # (2,)
    signal_variance: float
    nugget: float  # variance added to every observation
    log_likelihood: float
    chol: np.ndarray  # lower Cholesky factor of K + diag(noise + nugget)
    alpha: np.ndarray  # (K + diag)^-1 y

    def kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.signal_variance * matern52(_scaled_distance(a, b, self.length_scales)[0])

    def predict(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent function (not of a new observation)."""
        points = np.atleast_2d(points)
        if len(self.x) == 0:
            return np.zeros(len(points)), np.full(len(points), np.sqrt(self.signal_variance))
        cross = self.kernel(self.x, points)
        mean = cross.T @ self.alpha
        v = np.linalg.solve(self.chol, cross)  # (triangular; O(n^2 m))
        var = np.maximum(self.signal_variance - (v * v).sum(axis=0), 0.0)
        return mean, np.sqrt(var)

    def covariance(self, points: np.ndarray) -> np.ndarray:
        """Posterior covariance of the latent function among `points` (m, m)."""
        prior = self.kernel(points, points)
        if len(self.x) == 0:
            return prior
        v = np.linalg.solve(self.chol, self.kernel(self.x, points))
        return prior - v.T @ v


def fit(x: np.ndarray, y: np.ndarray, noise: np.ndarray) -> GaussianProcess:
    """The GP whose hyperparameters (on the fixed grid above) maximise the marginal likelihood;
    ties go to the first grid point, so a fit is a function of its inputs alone."""
    x, y, noise = np.asarray(x, float).reshape(-1, 2), np.asarray(y, float), np.asarray(noise, float)
    scale = float(np.sqrt(np.mean(y**2))) if len(y) else 1.0
    scale = scale if scale > 0 else 1.0
    ls = np.array([(a, b) for a in LENGTH_SCALES for b in LENGTH_SCALES])  # (L, 2)
    signal = (np.asarray(SIGNAL_SCALES) * scale) ** 2  # (S,)
    nugget = np.asarray(NUGGETS)  # (N,) fractions of the signal variance
    if len(y) == 0:
        return GaussianProcess(x, y, noise, ls[len(ls) // 2], float(signal[1]), 0.0, 0.0,
                               np.zeros((0, 0)), np.zeros(0))
    corr = matern52(_scaled_distance(x, x, ls))  # (L, n, n)
    n = len(y)
    eye = np.eye(n)
    # (L, S, N, n, n): every hyperparameter combination's covariance, factorised at once
    cov = (signal[None, :, None, None, None] * (corr[:, None, None] + nugget[None, None, :, None, None] * eye)
           + (noise + JITTER * scale**2)[None, None, None, None, :] * eye)
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, np.broadcast_to(y[:, None], (*chol.shape[:-1], 1)))[..., 0]
    loglik = (-0.5 * (z * z).sum(-1) - np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
              - 0.5 * n * np.log(2 * np.pi))
    best = np.unravel_index(int(np.argmax(loglik)), loglik.shape)
    factor = chol[best]
    alpha = np.linalg.solve(factor.T, np.linalg.solve(factor, y))
    return GaussianProcess(x, y, noise, ls[best[0]], float(signal[best[1]]), float(nugget[best[2]] * signal[best[1]]),
                           float(loglik[best]), factor, alpha)


def prob_above(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """P(f > 0) under the posterior (1 or 0 where the posterior has no spread)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(sd > 0, mean / np.where(sd > 0, sd, 1.0), np.sign(mean) * np.inf)
    return ndtr(ratio)


def straddle(mean: np.ndarray, sd: np.ndarray, kappa: float) -> np.ndarray:
    """Bryan et al. (2005): kappa sd - |mean|, large where 0 is inside a wide interval."""
    return kappa * sd - np.abs(mean)


def lse_intervals(mean: np.ndarray, sd: np.ndarray, beta_root: float, lower: np.ndarray,
                  upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gotovos et al. (2013): C_t = C_{t-1} intersected with [mean -+ beta^1/2 sd]. Where a
    refit's interval misses the kept one entirely, the new one replaces it (hyperparameters
    change between rounds, so an empty intersection is the model moving, not evidence)."""
    lo, hi = np.maximum(lower, mean - beta_root * sd), np.minimum(upper, mean + beta_root * sd)
    empty = lo > hi
    return np.where(empty, mean - beta_root * sd, lo), np.where(empty, mean + beta_root * sd, hi)


def lse_ambiguity(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """min(upper - 0, 0 - lower): positive only while the interval holds 0 (unclassified)."""
    return np.minimum(upper, -lower)


def greedy_batch(score, mean: np.ndarray, cov: np.ndarray, noise: float, candidates: np.ndarray, size: int,
                 costs=None, budget: float = np.inf) -> list[int]:
    """Up to `size` indices of `candidates` (a boolean mask over the points), each the best
    `score(mean, sd)` given the ones picked before it, whose outcomes are not yet known:
    the covariance is conditioned on them (observation noise `noise`), the mean kept.
    `costs(picked)`: what each point would cost now, given the picks so far (a value-grid
    cell costs its baseline too, unless an earlier pick brings it); a point that does not
    fit in what is left of `budget` is passed over."""
    cov = np.array(cov, dtype=float)
    open_ = np.array(candidates, dtype=bool)
    picked: list[int] = []
    spent = 0.0
    while len(picked) < size:
        cost = np.ones(len(mean)) if costs is None else np.asarray(costs(picked), float)
        affordable = open_ & (spent + cost <= budget)
        if not affordable.any():
            break
        sd = np.sqrt(np.maximum(np.diagonal(cov), 0.0))
        values = np.where(affordable, score(mean, sd), -np.inf)
        best = int(np.argmax(values))
        picked.append(best)
        spent += cost[best]
        open_[best] = False
        column = cov[:, best].copy()
        cov -= np.outer(column, column) / (column[best] + noise)
    return picked
