"""Multivariate Gaussian fitting ("gaussian"), the setting of (A)'s Fig. 1.

Real data are N(0, sigma2 I_d). A fit is the sample mean and the MLE covariance
(`np.cov(bias=True)`, as (A)). Synthetic rows are drawn from the fitted Gaussian.

Metrics per chain: `mean_sq_error` = ||mu_t - mu_0||^2, `cov_trace_ratio` and
`cov_det_ratio` (fitted over true; `cov_log_det_ratio` too, since the determinant
underflows in high d), and `test_loss` = mean NLL of held-out real rows, +inf once the
covariance is singular.

Speed: all chains of a batch move together through batched BLAS. The fit depends on
the data only through (count, mean, centred scatter), so
  - accumulate merges statistics instead of refitting the pool (flat cost in t);
  - replace and accumulate need no synthetic rows at all: the statistics of n rows
    from N(mu, F F^T) are drawn directly, mean = mu + F z / sqrt(n) and
    scatter = F W F^T with W ~ Wishart(I, n - 1) by Bartlett's decomposition: exact
    in distribution, O(d^3) instead of O(n d^2) (`sample_statistics`);
  - the test NLL uses the held-out rows' mean and covariance: the exact average
    log-density at O(d^3) instead of O(n_test d^2).

Value grid ((A)'s Fig. 5 protocol; `value_pool_size > 0`, chain.n_iterations 1): a chain is
one fit on the first n_real real rows plus the first `value_synthetic` rows of pool
`value_pool`, sampled from the Gaussian fitted to `value_pool_real` separate real rows.
As linear regression's: a seed draws a key; separate streams draw the test rows, the
real rows (row by row: the first n_real are the same for every n_real), and per pool
the generator's rows and the pool's rows, so cells are paired. E[mean_sq_error] of a
cell is exact: ||mu_hat||^2 with mu_hat = (n xbar + s xbar_pool)/N gives
sigma2 d [n + s^2/m + s (m - 1)/m] / N^2 (theory.gaussian_value_grid_mean_sq_error).
Spec: sweeps/gaussian_value_grid_quick.yaml.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from collapse_ray.validation import check_finite_positive, check_min, fail
from collapse_ray.tasks.batched import cholesky, normals
from collapse_ray.tasks.protocol import Metrics, RealData, Rows, check_value_grid

LOG_2PI = float(np.log(2 * np.pi))


@dataclass(frozen=True)
class GaussianStats:
    """Sufficient statistics of a batch of training sets of equal size."""

    count: int
    mean: np.ndarray  # (chains, d)
    scatter: np.ndarray  # (chains, d, d): sum of centred outer products
    factor: np.ndarray | None = None
    """(chains, k <= d, d) with factor^T factor = scatter, carried while the data are
    structurally rank-deficient (the real rows numbered <= d: synthetic rows never
    leave their affine span). Such a fit has no Cholesky factor; this one samples it."""


@dataclass(frozen=True)
class GaussianFit:
    mean: np.ndarray  # (chains, d)
    cov: np.ndarray  # (chains, d, d), MLE
    count: int  # training rows behind the fit
    chol: np.ndarray  # (chains, d, d); garbage where `ok` is False
    ok: np.ndarray  # (chains,) bool: covariance numerically positive definite
    factor: np.ndarray | None  # GaussianStats.factor, for rank-deficient fits


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
    value_pool_size: int = 0
    """Value grid: synthetic rows in each pool (0: an ordinary chain)."""
    value_pool_real: int = 0
    """Value grid: separate real rows each pool's generator is fitted on (m)."""
    n_value_pools: int = 1
    """Value grid: synthetic pools, each from its own generator."""
    value_pool: int = 0
    """Value grid: the pool this cell draws from (0 .. n_value_pools - 1; a grid axis)."""
    value_synthetic: int = 0
    """Value grid: first rows of the pool added to this cell's training set."""

    def validate(self, where: str) -> None:
        check_min(self.dim, 1, f"{where}.dim")
        check_finite_positive(self.sigma2, f"{where}.sigma2")
        check_min(self.n_test, 2, f"{where}.n_test")
        # the generator's covariance must be nonsingular to sample the pool
        check_value_grid(self, where, min_pool_real=self.dim + 1)

    def check_chain(self, chain, where: str) -> None:
        """A value-grid cell is one fit."""
        if self.value_pool_size and chain.n_iterations != 1:
            fail(f"{where}.n_iterations", "1 for value-grid cells (task.value_pool_size > 0)", chain.n_iterations)

    def row_nbytes(self) -> int:
        return 8 * self.dim

    # -- data -------------------------------------------------------------------
    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        if self.value_pool_size:
            return self._value_grid_data(n_real, rngs)
        x = self.sample_real(n_real + self.n_test, rngs)["x"]
        test = self.statistics({"x": x[:, n_real:]})
        return RealData(
            train={"x": x[:, :n_real]},
            test=GaussianTestSet(mean=test.mean, cov=test.scatter / test.count),
        )

    def _value_grid_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        """A cell's test rows, real rows and pool rows (see the module's notes), each from its own stream."""
        keys = [int(rng.integers(2**63)) for rng in rngs]

        def rows(n: int, *tag: int) -> np.ndarray:
            return self.sample_real(n, [np.random.default_rng([key, *tag]) for key in keys])["x"]

        test = self.statistics({"x": rows(self.n_test, 0)})
        real = rows(n_real, 1)
        generator = self.fit({"x": rows(self.value_pool_real, 2, self.value_pool)})
        # the pool: rows of N(mu_m, Sigma_m) as mu_m + z L^T, z row by row (prefixes agree)
        z = rows(self.value_synthetic, 3, self.value_pool) / np.sqrt(self.sigma2)
        pool = generator.mean[:, None, :] + np.matmul(z, generator.chol.transpose(0, 2, 1))
        return RealData(train={"x": np.concatenate([real, pool], axis=1)},
                        test=GaussianTestSet(mean=test.mean, cov=test.scatter / test.count))

    # -- fitting ----------------------------------------------------------------
    def statistics(self, rows: Rows, context=None) -> GaussianStats:
        x = rows["x"]
        mean = x.mean(axis=1)
        centred = x - mean[:, None, :]
        scatter = np.matmul(centred.transpose(0, 2, 1), centred)
        return GaussianStats(x.shape[1], mean, scatter, centred if x.shape[1] <= self.dim else None)

    def merge(self, a: GaussianStats, b: GaussianStats) -> GaussianStats:
        # Chan et al.'s pairwise update: stable where E[xx^T] - mm^T would cancel.
        count = a.count + b.count
        delta = b.mean - a.mean
        weight = a.count * b.count / count
        scatter = a.scatter + b.scatter + weight * (delta[:, :, None] * delta[:, None, :])
        factor = None
        if a.factor is not None and b.factor is not None:
            factor = np.concatenate([a.factor, b.factor, np.sqrt(weight) * delta[:, None, :]], axis=1)
            if factor.shape[1] > self.dim:  # keep it d x d: R of a QR has R^T R = F^T F
                factor = np.linalg.qr(factor, mode="r")
        return GaussianStats(count, a.mean + delta * (b.count / count), scatter, factor)

    def fit_statistics(self, stats: GaussianStats) -> GaussianFit:
        cov = stats.scatter / stats.count
        if stats.factor is None:
            chol, ok = cholesky(cov)
        else:  # structurally rank-deficient: singular for certain
            chol, ok = np.zeros_like(cov), np.zeros(cov.shape[0], dtype=bool)
        return GaussianFit(stats.mean, cov, stats.count, chol, ok, stats.factor)

    def fit(self, train: Rows, context=None) -> GaussianFit:
        return self.fit_statistics(self.statistics(train))

    # -- sampling ---------------------------------------------------------------
    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        return {"x": normals(rngs, (n, self.dim)) * np.sqrt(self.sigma2)}

    def sample(self, model: GaussianFit, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        out = np.empty((len(model.ok), n, self.dim))
        for chains, root in self._roots(model):
            z = normals([rngs[i] for i in chains], (n, root.shape[2]))
            root_t = np.ascontiguousarray(root.transpose(0, 2, 1))  # BLAS's fast path; the same products
            if len(chains) == len(out):  # one group (no chain collapsed): no temporaries
                np.matmul(z, root_t, out=out)
                out += model.mean[:, None, :]
            else:
                out[chains] = model.mean[chains, None, :] + np.matmul(z, root_t)
        return {"x": out}

    def sample_statistics(
        self, model: GaussianFit, n: int, rngs: Sequence[np.random.Generator], context=None
    ) -> GaussianStats:
        """Statistics of n rows from the fit, drawn without drawing the rows."""
        chains_total, d = model.mean.shape
        mean = np.empty((chains_total, d))
        scatter = np.empty((chains_total, d, d))
        # n <= d rows, or rows of a rank-deficient fit (they stay in its span), are
        # rank-deficient: carry their factor
        singular = model.factor is not None or n <= d
        factors = np.zeros((chains_total, max(1, min(n - 1, d)), d)) if singular else None
        for chains, root in self._roots(model):
            chain_rngs = [rngs[i] for i in chains]
            r = root.shape[2]
            # rows - their mean = (g - g_bar) root^T with g ~ N(0, I_r): the centred
            # scatter is root W root^T, W = Z^T Z, Z ~ (n-1) x r standard normal, and
            # Z = Q R gives W = R^T R with Bartlett's R.
            z, bartlett = _mean_and_bartlett_draws(chain_rngs, n - 1, r)
            mean[chains] = model.mean[chains] + np.einsum("cdr,cr->cd", root, z) / np.sqrt(n)
            b = np.matmul(bartlett, root.transpose(0, 2, 1))  # (chains, q, d)
            scatter[chains] = np.matmul(b.transpose(0, 2, 1), b)
            if factors is not None:
                factors[chains, : b.shape[1]] = b
        return GaussianStats(n, mean, scatter, factors)

    def _roots(self, model: GaussianFit):
        """Groups of chains with a factor F (chains, d, r) such that Sigma = F F^T."""
        good = np.flatnonzero(model.ok)
        if len(good):
            yield good, model.chol[good]
        bad = np.flatnonzero(~model.ok)
        if not len(bad):
            return
        if model.factor is not None:
            # rank-deficient fit: Sigma = factor^T factor / N exactly
            yield bad, model.factor[bad].transpose(0, 2, 1) / np.sqrt(model.count)
        else:
            # a numerically collapsed fit: symmetric square root, round-off clipped
            evals, evecs = np.linalg.eigh(model.cov[bad])
            yield bad, evecs * np.sqrt(np.clip(evals, 0.0, None))[:, None, :]

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
            precision = _inverse_fromcholesky(model.chol[good])
            trace_term = np.einsum("cij,cij->c", precision, test.cov[good])
            quad = np.einsum("ci,cij,cj->c", diff, precision, diff)
            nll[good] = 0.5 * (d * LOG_2PI + logdet[good] + trace_term + quad)
        log_det_ratio = logdet - d * np.log(sigma2)
        return {
            "test_loss": nll,
            "mean_sq_error": np.einsum("ci,ci->c", model.mean, model.mean),
            "cov_trace_ratio": np.trace(model.cov, axis1=1, axis2=2) / (d * sigma2),
            "cov_det_ratio": np.exp(log_det_ratio),
            "cov_log_det_ratio": log_det_ratio,
        }


def _inverse_fromcholesky(chol: np.ndarray) -> np.ndarray:
    """Sigma^-1 = L^-T L^-1 for a batch of lower-triangular L."""
    inv_l = np.linalg.inv(chol)
    return np.matmul(inv_l.transpose(0, 2, 1), inv_l)


def _mean_and_bartlett_draws(rngs: Sequence[np.random.Generator], df: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """z (chains, dim) standard normal, and R (chains, min(df, dim), dim)
    upper-trapezoidal with R^T R ~ Wishart(I_dim, df).

    R_ii ~ chi(df - i) (0-based i), entries right of the diagonal N(0, 1); for
    df < dim this is the singular Wishart of df standard normal rows. Per chain, its
    generator gives z, then R's q x dim normals, then the q chi-squares: two calls
    (a generator's normals continue one stream across calls, so z and R's normals
    come from one fill); the triangle and the diagonal are set for all chains at once.
    """
    q = min(df, dim)
    draws = np.empty((len(rngs), dim + q * dim))
    chi2 = np.empty((len(rngs), q))
    dof = df - np.arange(q)
    for c, rng in enumerate(rngs):
        rng.standard_normal(out=draws[c])
        chi2[c] = rng.chisquare(dof)
    z, out = draws[:, :dim], draws[:, dim:].reshape(len(rngs), q, dim)
    rows, cols = np.tril_indices(q, -1, dim)
    out[:, rows, cols] = 0.0
    out[:, np.arange(q), np.arange(q)] = np.sqrt(chi2)
    return z, out
