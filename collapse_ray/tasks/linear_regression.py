"""Linear regression ("linear_regression"), the setting with closed-form theory in (A).

Per chain: true weights w* ~ N(0, I_d); a fixed design X (n_real x d, standard normal)
reused every iteration; real labels y = X w* + sigma * eps. A fit is least squares by the
pseudo-inverse; synthetic rows are the same design with labels X w_hat + sigma * eps. A
row is (`row`: index into the design, `y`: label), so the pool stores 16 bytes per row
rather than a copy of the design row.
`test_loss` = mean squared error on n_test noise-free test points,
(w_hat - w*)^T G (w_hat - w*) with G the test inputs' Gram / n_test: the exact
per-point average at O(d^2) per iteration.

Fits depend on rows only through X^T X and X^T y (additive), and pinv(X) y =
pinv(X^T X) X^T y, so replace and accumulate carry those sums; the sums of a synthetic
label set are drawn directly: X^T y' = X^T X w_hat + sigma X^T eps with
X^T eps ~ N(0, X^T X), O(d^2) instead of O(n d).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..validation import check_finite_positive, check_min, fail
from .batched import cholesky, normals
from .protocol import Metrics, RealData, Rows


@dataclass(frozen=True)
class RegressionStats:
    count: int
    xtx: np.ndarray  # (chains, d, d)
    xty: np.ndarray  # (chains, d)


@dataclass(frozen=True)
class RegressionFit:
    w: np.ndarray  # (chains, d)


@dataclass(frozen=True)
class Design:
    """The fixed inputs synthetic labels are drawn on, and the truth."""

    x: np.ndarray  # (chains, n_real, d)
    w_true: np.ndarray  # (chains, d)
    gram: np.ndarray  # (chains, d, d) = X^T X
    gram_chol: np.ndarray  # (chains, d, d), valid where gram_ok
    gram_ok: np.ndarray  # (chains,) bool


@dataclass(frozen=True)
class RegressionTestSet:
    gram: np.ndarray  # (chains, d, d): test inputs' X^T X / n_test
    w_true: np.ndarray


@dataclass(frozen=True)
class LinearRegressionTask:
    """Least squares on a fixed Gaussian design, as (A)'s linear-regression setting."""

    name: ClassVar[str] = "linear_regression"
    batched: ClassVar[bool] = True

    dim: int = 10
    """Number of features d."""
    sigma2: float = 1.0
    """Label noise variance, for real and synthetic labels alike."""
    n_test: int = 1000
    """Noise-free test points per chain."""

    def validate(self, where: str) -> None:
        check_min(self.dim, 1, f"{where}.dim")
        check_finite_positive(self.sigma2, f"{where}.sigma2")
        check_min(self.n_test, 1, f"{where}.n_test")

    def check_chain(self, chain, where: str) -> None:
        """Synthetic labels are drawn on the real design, so both have n_real rows."""
        for knob in ("n_synthetic", "n_fresh_real"):
            value = getattr(chain, knob)
            if value not in (None, 0, chain.n_real):
                fail(f"{where}.{knob}", f"null or equal to n_real ({chain.n_real}) for linear_regression, "
                     "whose labels are drawn on the real design", value)

    def row_nbytes(self) -> int:
        return 16

    # -- data -------------------------------------------------------------------
    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        d = self.dim
        w_true = normals(rngs, (d,))
        x = normals(rngs, (n_real, d))
        x_test = normals(rngs, (self.n_test, d))
        gram = np.matmul(x.transpose(0, 2, 1), x)
        chol, ok = cholesky(gram) if n_real >= d else (np.zeros_like(gram), np.zeros(len(rngs), dtype=bool))
        design = Design(x, w_true, gram, chol, ok)
        test = RegressionTestSet(np.matmul(x_test.transpose(0, 2, 1), x_test) / self.n_test, w_true)
        return RealData(train=self.sample_real(n_real, rngs, design), test=test, context=design)

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context: Design) -> Rows:
        return self._labels(context, context.w_true, n, rngs)

    # -- fitting ----------------------------------------------------------------
    def statistics(self, rows: Rows, context: Design) -> RegressionStats:
        x = np.take_along_axis(context.x, rows["row"][:, :, None], axis=1)  # (chains, n, d)
        y = rows["y"]
        return RegressionStats(x.shape[1], np.matmul(x.transpose(0, 2, 1), x), np.einsum("cnd,cn->cd", x, y))

    def merge(self, a: RegressionStats, b: RegressionStats) -> RegressionStats:
        return RegressionStats(a.count + b.count, a.xtx + b.xtx, a.xty + b.xty)

    def fit_statistics(self, stats: RegressionStats) -> RegressionFit:
        try:
            w = np.linalg.solve(stats.xtx, stats.xty[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:  # rank-deficient: the minimum-norm solution
            w = np.einsum("cij,cj->ci", np.linalg.pinv(stats.xtx, hermitian=True), stats.xty)
        return RegressionFit(w)

    def fit(self, train: Rows, context: Design) -> RegressionFit:
        return self.fit_statistics(self.statistics(train, context))

    # -- sampling ---------------------------------------------------------------
    def sample(self, model: RegressionFit, n: int, rngs: Sequence[np.random.Generator], context: Design) -> Rows:
        return self._labels(context, model.w, n, rngs)

    def _labels(self, design: Design, w: np.ndarray, n: int, rngs) -> Rows:
        if n != design.x.shape[1]:
            raise ValueError(f"labels are drawn on the {design.x.shape[1]}-row design; asked for {n}")
        noise = normals(rngs, (n,)) * np.sqrt(self.sigma2)
        rows = np.broadcast_to(np.arange(n), (len(rngs), n))
        return {"row": rows, "y": np.einsum("cnd,cd->cn", design.x, w) + noise}

    def sample_statistics(
        self, model: RegressionFit, n: int, rngs: Sequence[np.random.Generator], context: Design
    ) -> RegressionStats:
        if not context.gram_ok.all():  # n < d: draw the rows
            return self.statistics(self.sample(model, n, rngs, context), context)
        z = normals(rngs, (self.dim,))
        noise = np.einsum("cij,cj->ci", context.gram_chol, z) * np.sqrt(self.sigma2)  # ~ X^T eps
        return RegressionStats(n, context.gram, np.einsum("cij,cj->ci", context.gram, model.w) + noise)

    # -- evaluation -------------------------------------------------------------
    def evaluate(self, model: RegressionFit, test: RegressionTestSet) -> Metrics:
        err = model.w - test.w_true
        return {
            "test_loss": np.einsum("ci,cij,cj->c", err, test.gram, err),
            "weight_sq_error": np.einsum("ci,ci->c", err, err),
        }
