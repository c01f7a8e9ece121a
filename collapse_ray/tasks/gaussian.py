"""Multivariate Gaussian fitting ("gaussian"), the setting of (A)'s Fig. 1.

Real data are N(0, sigma2 I_d). A fit is the sample mean and the MLE covariance
(`np.cov(bias=True)`, as (A)). Synthetic rows are drawn from the fitted Gaussian.

Metrics per chain: `mean_sq_error` = ||mu_t - mu_0||^2, `cov_trace_ratio` and
`cov_det_ratio` (fitted over true; `cov_log_det_ratio` too, since the determinant
underflows in high d), and `test_loss` = mean NLL of held-out real rows, +inf once the
covariance is singular.

Speed: all chains of a batch move together through batched BLAS; the fit depends on
the data only through (count, mean, centred scatter), so accumulate merges statistics
instead of refitting the pool, and the test NLL is computed from the test set's own
mean and covariance, which gives the exact average log-density at O(d^3) instead of
O(n_test d^2) per iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..validation import check_finite_positive, check_min
from .protocol import Metrics, RealData, Rows

LOG_2PI = float(np.log(2 * np.pi))


@dataclass(frozen=True)
class GaussianStats:
    """Sufficient statistics of a batch of training sets of equal size."""

    count: int
    mean: np.ndarray  # (chains, d)
    scatter: np.ndarray  # (chains, d, d): sum of centred outer products


@dataclass(frozen=True)
class GaussianFit:
    mean: np.ndarray  # (chains, d)
    cov: np.ndarray  # (chains, d, d), MLE
    count: int  # training rows behind the fit
    chol: np.ndarray  # (chains, d, d); garbage where `ok` is False
    ok: np.ndarray  # (chains,) bool: covariance numerically positive definite
    centred: np.ndarray | None  # (chains, count, d) rows minus mean, kept when count <= d


@dataclass(frozen=True)
class GaussianTestSet:
    """Held-out real rows, summarised: their mean NLL only needs mean and MLE covariance."""

    mean: np.ndarray  # (chains, d)
    cov: np.ndarray  # (chains, d, d)


@dataclass(frozen=True)
class GaussianTask:
    """Fit N(mu, Sigma) by maximum likelihood to data from N(0, sigma2 I_dim)."""

    name: ClassVar[str] = "gaussian"
    batched: ClassVar[bool] = True

    dim: int = 2
    """Dimension d of the data."""
    sigma2: float = 1.0
    """Variance of each coordinate of the real data."""
    n_test: int = 1000
    """Held-out real rows for the test NLL, drawn once per chain."""

    def validate(self, where: str) -> None:
        check_min(self.dim, 1, f"{where}.dim")
        check_finite_positive(self.sigma2, f"{where}.sigma2")
        check_min(self.n_test, 2, f"{where}.n_test")

    def row_nbytes(self) -> int:
        return 8 * self.dim

    # -- data -------------------------------------------------------------------
    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        x = _normals(rngs, (n_real + self.n_test, self.dim)) * np.sqrt(self.sigma2)
        test = self.statistics({"x": x[:, n_real:]})
        return RealData(
            train={"x": x[:, :n_real]},
            test=GaussianTestSet(mean=test.mean, cov=test.scatter / test.count),
        )

    # -- fitting ----------------------------------------------------------------
    def statistics(self, rows: Rows) -> GaussianStats:
        x = rows["x"]
        mean = x.mean(axis=1)
        centred = x - mean[:, None, :]
        return GaussianStats(x.shape[1], mean, np.matmul(centred.transpose(0, 2, 1), centred))

    def merge(self, a: GaussianStats, b: GaussianStats) -> GaussianStats:
        # Chan et al.'s pairwise update: stable where E[xx^T] - mm^T would cancel.
        count = a.count + b.count
        delta = b.mean - a.mean
        scatter = a.scatter + b.scatter + (a.count * b.count / count) * (
            delta[:, :, None] * delta[:, None, :]
        )
        return GaussianStats(count, a.mean + delta * (b.count / count), scatter)

    def fit_statistics(self, stats: GaussianStats, centred: np.ndarray | None = None) -> GaussianFit:
        cov = stats.scatter / stats.count
        chol, ok = _cholesky(cov) if stats.count > self.dim else (np.zeros_like(cov), None)
        if ok is None:  # fewer rows than dimensions: singular for certain
            ok = np.zeros(cov.shape[0], dtype=bool)
        if centred is not None and stats.count > self.dim:
            centred = None  # only needed to sample from a rank-deficient fit
        return GaussianFit(stats.mean, cov, stats.count, chol, ok, centred)

    def fit(self, train: Rows) -> GaussianFit:
        stats = self.statistics(train)
        centred = train["x"] - stats.mean[:, None, :] if stats.count <= self.dim else None
        return self.fit_statistics(stats, centred)

    # -- sampling ---------------------------------------------------------------
    def sample(self, model: GaussianFit, n: int, rngs: Sequence[np.random.Generator]) -> Rows:
        chains, d = model.mean.shape
        out = np.empty((chains, n, d))
        good = np.flatnonzero(model.ok)
        if len(good):
            z = _normals([rngs[i] for i in good], (n, d))
            out[good] = model.mean[good, None, :] + np.matmul(z, model.chol[good].transpose(0, 2, 1))
        bad = np.flatnonzero(~model.ok)
        if len(bad):
            out[bad] = self._sample_singular(model, bad, n, rngs)
        return {"x": out}

    def _sample_singular(self, model, chains, n, rngs):
        """Samples from a rank-deficient fit, which has no Cholesky factor."""
        mean = model.mean[chains, None, :]
        if model.centred is not None:
            # g @ X_c / sqrt(N) with g ~ N(0, I_N) has covariance X_c^T X_c / N = Sigma
            # exactly: O(n N d) with N <= d, no decomposition needed.
            g = _normals([rngs[i] for i in chains], (n, model.count))
            return mean + np.matmul(g, model.centred[chains]) / np.sqrt(model.count)
        # Statistics only (accumulate with few rows, or a numerically collapsed fit):
        # a symmetric square root with negative round-off eigenvalues clipped.
        evals, evecs = np.linalg.eigh(model.cov[chains])
        root = evecs * np.sqrt(np.clip(evals, 0.0, None))[:, None, :]
        z = _normals([rngs[i] for i in chains], (n, model.mean.shape[1]))
        return mean + np.matmul(z, root.transpose(0, 2, 1))

    # -- evaluation -------------------------------------------------------------
    def evaluate(self, model: GaussianFit, test: GaussianTestSet) -> Metrics:
        d, sigma2 = self.dim, self.sigma2
        diag = np.diagonal(model.chol, axis1=1, axis2=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            logdet = np.where(model.ok, 2.0 * np.log(np.where(model.ok[:, None], diag, 1.0)).sum(axis=1), -np.inf)
        nll = np.full(len(model.ok), np.inf)
        good = np.flatnonzero(model.ok)
        if len(good):
            # mean over test rows of -log N(x; mu, Sigma)
            #   = 0.5 [d log 2pi + logdet + tr(Sigma^-1 C) + (m - mu)^T Sigma^-1 (m - mu)]
            # with m, C the test rows' mean and MLE covariance: exact, O(d^3).
            diff = test.mean[good] - model.mean[good]
            rhs = np.concatenate([test.cov[good], diff[:, :, None]], axis=2)
            solved = _cholesky_solve(model.chol[good], rhs)
            trace_term = np.trace(solved[:, :, :d], axis1=1, axis2=2)
            quad = np.einsum("ci,ci->c", diff, solved[:, :, d])
            nll[good] = 0.5 * (d * LOG_2PI + logdet[good] + trace_term + quad)
        log_det_ratio = logdet - d * np.log(sigma2)
        return {
            "test_loss": nll,
            "mean_sq_error": np.einsum("ci,ci->c", model.mean, model.mean),
            "cov_trace_ratio": np.trace(model.cov, axis1=1, axis2=2) / (d * sigma2),
            "cov_det_ratio": np.exp(log_det_ratio),
            "cov_log_det_ratio": log_det_ratio,
        }


def _normals(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """Standard normals, one independent block per chain from that chain's generator."""
    out = np.empty((len(rngs), *shape))
    for i, rng in enumerate(rngs):
        rng.standard_normal(out=out[i])
    return out


def _cholesky(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched lower Cholesky factors and a per-chain success mask."""
    try:
        return np.linalg.cholesky(cov), np.ones(cov.shape[0], dtype=bool)
    except np.linalg.LinAlgError:  # some chain collapsed: find which, one by one
        chol = np.zeros_like(cov)
        ok = np.zeros(cov.shape[0], dtype=bool)
        for i, c in enumerate(cov):
            try:
                chol[i] = np.linalg.cholesky(c)
                ok[i] = True
            except np.linalg.LinAlgError:
                pass
        return chol, ok


def _cholesky_solve(chol: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve (L L^T) X = B for a batch of lower-triangular L."""
    y = np.linalg.solve(chol, rhs)
    return np.linalg.solve(chol.transpose(0, 2, 1), y)
