"""Gaussian-process level-set estimation over a finite set of points, in numpy: where is a
function above or below 0, from few noisy evaluations (collapse_ray.sweep.contour_search uses it
for the value grid's contour L(n, s) - L(n, 0) = 0).

* `fit`: a zero-mean GP with a Matern-5/2 ARD kernel on inputs scaled to [0, 1], each
  observation with its own known noise variance (its standard error squared) plus a
  nugget: each point's own deviation from the smooth latent f (roughness, and noise the
  standard errors miss). The signal scale, the two length scales and the nugget are not
  picked but averaged over: every setting of a fixed grid (784, one batched Cholesky:
  deterministic, no optimiser) weighted by its marginal likelihood under a uniform prior
  over the grid, the most probable holding 99.9% of the weight kept. With a handful of
  points the likelihood barely tells a smooth surface from a rough one, so the rough
  settings keep their weight and the prediction stays wide until the data rule them out;
  a single maximum-likelihood setting was sure of a smooth surface from 4 points (a
  language-model grid's first batch) and called every cell it had not run.
  Zero mean on purpose: far from data the posterior falls back to "undecided", never to
  a side.
* What is classified is a point's own value g = f + its roughness, not f: `cell_value`
  predictions add the nugget to the variance of a point that has not been observed, and
  at an observed point the nugget is shared with its observation, so its own measurement
  (mean and standard error) decides it, shrunk towards f only as far as its standard error
  is large against the roughness. P(g > 0) is the exact mixture over the settings.
* `straddle` (Bryan et al. 2005: kappa sd - |mean|) and `lse_ambiguity` (Gotovos et al.
  2013: confidence intervals intersected over rounds, a point classified once its interval
  leaves 0) score candidates; `greedy_batch` picks several at once by conditioning the
  posterior covariance on the points already picked (their outcomes unknown, so only the
  variance shrinks: the mean given its own prediction is unchanged).

Costs: fitting O(784 n^3) with n the points observed (a few ms for n = 60); prediction
O(K n^2 m) for m candidates and K settings kept (tens to hundreds); a batch O(m^2) per pick.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

LENGTH_SCALES = np.geomspace(0.08, 2.0, 7)  # in units of each input's range on the grid
SIGNAL_SCALES = (0.5, 1.0, 2.0, 4.0)  # x the root mean square of the targets (the prior is centred on 0)
NUGGETS = (1e-4, 1e-2, 0.05, 0.2)  # x the signal variance: model misfit and noise the standard errors miss
JITTER = 1e-10
KEPT_MASS = 0.999  # the most probable settings holding this much posterior weight are kept (P moves < 0.001)
PREDICT_CHUNK = 512


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
    """A fitted GP: its training inputs, and every hyperparameter setting of the grid that
    the data leave plausible with its posterior weight (the model average, module docstring).
    The single-setting fields (length_scales, signal_variance, nugget, log_likelihood) are the
    most probable setting's, for the record."""

    x: np.ndarray  # (n, 2) scaled inputs
    y: np.ndarray  # (n,) targets
    noise: np.ndarray  # (n,) known noise variances
    length_scales: np.ndarray  # (2,) the most probable setting's
    signal_variance: float
    nugget: float  # variance added to every observation (the cell-level roughness)
    log_likelihood: float
    weights: np.ndarray  # (K,) posterior weights of the settings kept, summing to 1
    settings_length_scales: np.ndarray  # (K, 2)
    settings_signal: np.ndarray  # (K,)
    settings_nugget: np.ndarray  # (K,)
    chol: np.ndarray  # (K, n, n) lower Cholesky factors of K + diag(noise + nugget)
    alpha: np.ndarray  # (K, n) (K + diag)^-1 y

    @property
    def expected_nugget(self) -> float:
        """The roughness variance averaged over the posterior of the settings."""
        return float(self.weights @ self.settings_nugget) if len(self.weights) else self.nugget

    def _correlations(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(U, len(a), len(b)) correlations for the settings' U distinct length scales, and
        each setting's index into them (K,): settings share length scales, the exp is the cost."""
        unique, inverse = np.unique(self.settings_length_scales, axis=0, return_inverse=True)
        return matern52(_scaled_distance(a, b, unique)), inverse.ravel()

    def _kernels(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(K, len(a), len(b)): each kept setting's latent covariance."""
        corr, inverse = self._correlations(a, b)
        return self.settings_signal[:, None, None] * corr[inverse]

    def _components(self, points: np.ndarray, cell_value: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per setting: posterior mean (K, m) and the cross terms v = L^-1 k(x, points) (K, n, m).
        cell_value: of the cells' own values (the latent plus the nugget: a point that is a
        training input shares its observation's roughness, so its own measurement counts
        for it), else of the latent function."""
        cross = self._kernels(self.x, points)
        if cell_value:
            same = np.all(self.x[:, None, :] == points[None, :, :], axis=-1).astype(float)  # (n, m)
            cross = cross + self.settings_nugget[:, None, None] * same
        return np.einsum("knm,kn->km", cross, self.alpha), self._chol_inverse @ cross

    @functools.cached_property  # (in the instance's __dict__: fields and equality do not see it)
    def _chol_inverse(self) -> np.ndarray:
        """(K, n, n) L^-1 per setting: one matrix product per prediction instead of a solve."""
        return np.linalg.solve(self.chol, np.broadcast_to(np.eye(len(self.x)), self.chol.shape))

    def _moments(self, points: np.ndarray, cell_value: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per setting, mean and variance (K, m) at each point, in chunks of points (memory)."""
        points = np.atleast_2d(points)
        prior = self.settings_signal + (self.settings_nugget if cell_value else 0.0)
        if len(self.x) == 0:
            var = self.signal_variance + (self.nugget if cell_value else 0.0)
            return np.zeros((1, len(points))), np.full((1, len(points)), var), np.ones(1)
        means, variances = [], []
        for start in range(0, len(points), PREDICT_CHUNK):
            mean, v = self._components(points[start:start + PREDICT_CHUNK], cell_value)
            means.append(mean)
            variances.append(np.maximum(prior[:, None] - (v * v).sum(axis=1), 0.0))
        return np.concatenate(means, axis=1), np.concatenate(variances, axis=1), self.weights

    def predict(self, points: np.ndarray, cell_value: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation, averaged over the settings (moment-matched),
        of the latent function, or with cell_value of the cells' own values."""
        mean, var, w = self._moments(points, cell_value)
        mu = w @ mean
        return mu, np.sqrt(np.maximum(w @ (var + mean**2) - mu**2, 0.0))

    def prob_above(self, points: np.ndarray, cell_value: bool = True) -> np.ndarray:
        """P(> 0) under the posterior, the exact mixture over the settings."""
        mean, var, w = self._moments(points, cell_value)
        return w @ prob_above(mean, np.sqrt(var))

    def covariance(self, points: np.ndarray, cell_value: bool = False) -> np.ndarray:
        """Posterior covariance among `points` (m, m), of the mixture over the settings."""
        points = np.atleast_2d(points)
        if len(self.x) == 0:
            prior = self.signal_variance * matern52(_scaled_distance(points, points, self.length_scales)[0])
            return prior + (self.nugget * np.eye(len(points)) if cell_value else 0.0)
        # sum_k w_k (prior_k - v_k' v_k + mean_k mean_k') - mu mu', the prior summed per length scale
        mean, v = self._components(points, cell_value)
        w = self.weights
        corr, inverse = self._correlations(points, points)
        cov = np.tensordot(np.bincount(inverse, w * self.settings_signal, len(corr)), corr, axes=1)
        if cell_value:
            cov += (w @ self.settings_nugget) * np.all(points[:, None, :] == points[None, :, :], axis=-1)
        root = np.sqrt(w)
        stacked = (root[:, None, None] * v).reshape(-1, len(points))
        centred = root[:, None] * (mean - w @ mean)
        return cov - stacked.T @ stacked + centred.T @ centred


def fit(x: np.ndarray, y: np.ndarray, noise: np.ndarray) -> GaussianProcess:
    """The GP averaged over the fixed grid of hyperparameters, each weighted by its marginal
    likelihood (a uniform prior over the grid's settings); the most probable settings that hold
    KEPT_MASS of the weight are kept. A function of its inputs alone."""
    x, y, noise = np.asarray(x, float).reshape(-1, 2), np.asarray(y, float), np.asarray(noise, float)
    scale = float(np.sqrt(np.mean(y**2))) if len(y) else 1.0
    scale = scale if scale > 0 else 1.0
    ls = np.array([(a, b) for a in LENGTH_SCALES for b in LENGTH_SCALES])  # (L, 2)
    signal = (np.asarray(SIGNAL_SCALES) * scale) ** 2  # (S,)
    nugget = np.asarray(NUGGETS)  # (N,) fractions of the signal variance
    if len(y) == 0:
        empty = np.zeros(0)
        return GaussianProcess(x, y, noise, ls[len(ls) // 2], float(signal[1]), float(nugget[-1] * signal[1]), 0.0,
                               empty, np.zeros((0, 2)), empty, empty, np.zeros((0, 0, 0)), np.zeros((0, 0)))
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
    weights = np.exp(loglik - loglik[best]).ravel()
    order = np.argsort(-weights, kind="stable")  # ties in grid order: deterministic
    kept = order[:int(np.searchsorted(np.cumsum(weights[order]), KEPT_MASS * weights.sum())) + 1]
    l, s, k = np.unravel_index(np.sort(kept), loglik.shape)
    w = weights[np.sort(kept)]
    factors = chol[l, s, k]
    alpha = np.linalg.solve(np.swapaxes(factors, -1, -2), np.linalg.solve(factors, np.broadcast_to(
        y[:, None], (len(w), n, 1))))[..., 0]
    return GaussianProcess(x, y, noise, ls[best[0]], float(signal[best[1]]), float(nugget[best[2]] * signal[best[1]]),
                           float(loglik[best]), w / w.sum(), ls[l], signal[s], nugget[k] * signal[s], factors, alpha)


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
