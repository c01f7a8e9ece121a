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

Value grid ((A)'s Fig. 5 protocol; `value_pool_size > 0`, chain.n_iterations 1): a chain is
one fit on the first n_real real rows plus the first `value_synthetic` rows of synthetic
pool `value_pool` (of `n_value_pools`), evaluated on the held-out real test points. A
seed is a world: its data generator draws a key from which separate streams draw w* and
the test inputs; the real rows, row by row (so the first n_real rows are the same for
every n_real); and, per pool p, the `value_pool_real` separate real rows the pool's
generator (least squares, w_m) is fitted on, and the pool's rows: fresh inputs
x ~ N(0, I_d) labelled x.w_m + sigma * eps (fresh noise, as `sample`). Every cell of a
seed shares its world, and every cell naming pool p shares that pool (prefixes of one
stream), so differences between cells are paired. The design is the N = n_real +
value_synthetic rows' inputs. The expected test loss of a cell is
`theory.linear_regression_value_grid` (derived there):
    L(n, s) = sigma2 d/(n+s-d-1) + sigma2/(m-d-1) E tr(A A'),  A = (X'X)^-1 X_s'X_s,
with E tr(A A') ~ d (s/(n+s))^2; the value of s synthetic rows is L(n, s) - L(n, 0).
Specs: sweeps/linear_regression_value_grid.yaml (and _quick).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from collapse_ray.validation import check_finite_positive, check_min, fail
from collapse_ray.tasks.batched import cholesky, normals
from collapse_ray.tasks.protocol import Metrics, RealData, Rows, check_value_grid


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

    # value-grid cells may have no real rows (check_chain refuses n_real = 0 elsewhere)
    fits_empty_training_set: ClassVar[bool] = True

    def validate(self, where: str) -> None:
        check_min(self.dim, 1, f"{where}.dim")
        check_finite_positive(self.sigma2, f"{where}.sigma2")
        check_min(self.n_test, 1, f"{where}.n_test")
        check_value_grid(self, where, min_pool_real=self.dim)  # the generator is least squares: d rows

    @property
    def value_grid(self) -> bool:
        return self.value_pool_size > 0

    def check_chain(self, chain, where: str) -> None:
        """Synthetic labels are drawn on the real design, so both have n_real rows; a
        value-grid cell is one fit."""
        if self.value_grid:
            if chain.n_iterations != 1:
                fail(f"{where}.n_iterations", "1 for value-grid cells (task.value_pool_size > 0)", chain.n_iterations)
            if chain.n_real == 0 and self.value_synthetic == 0:  # the loop fits no empty training set
                fail(f"{where}.n_real", "an integer >= 1 in the value-grid cell with task.value_synthetic = 0 (no rows to "
                     "fit; list the n_real = 0 column in its own `cases:` entry)", chain.n_real)
        elif chain.n_real == 0:
            fail(f"{where}.n_real", "an integer >= 1 (0 only in value-grid cells: task.value_pool_size > 0)",
                 chain.n_real)
        for knob in ("n_synthetic", "n_fresh_real"):
            value = getattr(chain, knob)
            if value not in (None, 0, chain.n_real):
                fail(f"{where}.{knob}", f"null or equal to n_real ({chain.n_real}) for linear_regression, "
                     "whose labels are drawn on the real design", value)

    def row_nbytes(self) -> int:
        return 16

    # -- data -------------------------------------------------------------------
    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        if self.value_grid:
            return self._value_grid_data(n_real, rngs)
        d = self.dim
        w_true = normals(rngs, (d,))
        x = normals(rngs, (n_real, d))
        x_test = normals(rngs, (self.n_test, d))
        gram = np.matmul(x.transpose(0, 2, 1), x)
        chol, ok = cholesky(gram) if n_real >= d else (np.zeros_like(gram), np.zeros(len(rngs), dtype=bool))
        design = Design(x, w_true, gram, chol, ok)
        test = RegressionTestSet(np.matmul(x_test.transpose(0, 2, 1), x_test) / self.n_test, w_true)
        return RealData(train=self.sample_real(n_real, rngs, design), test=test, context=design)

    def _value_grid_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        """A cell's world, real rows and pool rows (see the module's notes), each from its own stream."""
        d, s, m, p = self.dim, self.value_synthetic, self.value_pool_real, self.value_pool
        keys = [int(rng.integers(2**63)) for rng in rngs]

        def streams(*tag: int) -> list[np.random.Generator]:
            return [np.random.default_rng([key, *tag]) for key in keys]

        def labelled(rngs_, n: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """n rows (x ~ N(0, I_d), y = x.w + sigma eps), row by row from one stream (prefixes agree)."""
            draws = normals(rngs_, (n, d + 1))
            x = draws[:, :, :d]
            return x, np.einsum("cnd,cd->cn", x, w) + draws[:, :, d] * np.sqrt(self.sigma2)

        world = streams(0)
        w_true = normals(world, (d,))
        x_test = normals(world, (self.n_test, d))
        x_real, y_real = labelled(streams(1), n_real, w_true)
        x_gen, y_gen = labelled(streams(2, p), m, w_true)  # the pool's generator: least squares on m separate rows
        w_gen = self.fit_statistics(RegressionStats(m, np.matmul(x_gen.transpose(0, 2, 1), x_gen),
                                                    np.einsum("cnd,cn->cd", x_gen, y_gen))).w
        x_pool, y_pool = labelled(streams(3, p), s, w_gen)
        x = np.concatenate([x_real, x_pool], axis=1)
        gram = np.matmul(x.transpose(0, 2, 1), x)
        chol, ok = cholesky(gram) if x.shape[1] >= d else (np.zeros_like(gram), np.zeros(len(rngs), dtype=bool))
        design = Design(x, w_true, gram, chol, ok)
        test = RegressionTestSet(np.matmul(x_test.transpose(0, 2, 1), x_test) / self.n_test, w_true)
        rows = np.broadcast_to(np.arange(x.shape[1]), (len(rngs), x.shape[1]))
        return RealData(train={"row": rows, "y": np.concatenate([y_real, y_pool], axis=1)}, test=test, context=design)

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
        if self.value_grid and n <= design.x.shape[1]:
            # a value-grid cell is one fit; the loop's draw after it (kept for growing a
            # chain) labels the design's first n rows, and nothing trains on it
            design = Design(design.x[:, :n], design.w_true, design.gram, design.gram_chol,
                            np.zeros_like(design.gram_ok))
        elif n != design.x.shape[1]:
            raise ValueError(f"labels are drawn on the {design.x.shape[1]}-row design; asked for {n}")
        noise = normals(rngs, (n,)) * np.sqrt(self.sigma2)
        rows = np.broadcast_to(np.arange(n), (len(rngs), n))
        return {"row": rows, "y": np.einsum("cnd,cd->cn", design.x, w) + noise}

    def sample_statistics(
        self, model: RegressionFit, n: int, rngs: Sequence[np.random.Generator], context: Design
    ) -> RegressionStats:
        if not context.gram_ok.all() or n != context.x.shape[1]:  # n < d (or a value-grid cell): draw the rows
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
