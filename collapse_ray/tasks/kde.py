"""Kernel density estimation ("kde") on sklearn's toy datasets, the setting of (A)'s Fig. 2.

Real data: `make_blobs` (2-D, 3 centres, cluster_std 1, centres in (-10, 10)),
`make_circles` (`factor`, sklearn's default 0.8 as in (A)'s sweeps), `make_moons` (both
with `noise`), `make_swiss_roll` (3-D, with `noise`). Train and test rows come from the same distribution: for blobs the centres
are drawn once per chain and shared by train, test and fresh real rows. (A)'s code calls
`make_blobs` twice without fixing centres, so its blobs test set is a different mixture
from its training set; we do not copy that.

A fit is a Gaussian-kernel KDE with bandwidth h: a float, or "scott" / "silverman" with
sklearn's meaning (n^(-1/(d+4)) and (n (d+2)/4)^(-1/(d+4)), not scaled by the data's
spread, recomputed at each fit from its number of points). Sampling is sklearn's: a
uniformly chosen training point plus N(0, h^2 I) noise. `test_loss` is the mean NLL of
`n_test` held-out real points, drawn once per chain; `bandwidth_used` is h (it changes
under a rule); `train_var` is the mean
per-coordinate variance of the fit's points (theory: replace E[s^2_{t+1}] =
(1 - 1/n)(s_t^2 + h^2)).

Speed: a KDE's statistics are its points; merging appends to an amortised buffer. With a
fixed bandwidth the accumulated KDE's log-density at each test point is a log-sum-exp
that is carried forward, so accumulate costs O(n_test x n_new) per iteration, flat in
the iteration index, instead of rescoring every test point against the whole pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from collapse_ray.validation import check_finite_positive, check_min, fail
from collapse_ray.tasks.protocol import Metrics, RealData, Rows

Dataset = Literal["blobs", "circles", "moons", "swiss_roll"]
Precision = Literal["float32", "float64"]
DIMS = {"blobs": 2, "circles": 2, "moons": 2, "swiss_roll": 3}
BLOCK_ELEMENTS = 1 << 17  # kernel values per block: 1 MiB of float64 stays in a core's L2 cache (1.5-1.8x over 4 MiB at n = 32-100)


@dataclass
class _ScoreCache:
    """log sum_j exp(-|x - p_j|^2 / 2h^2) over the first `upto` points, per test point."""

    test: object  # the test set it is for
    h: float
    upto: int
    lse: np.ndarray  # (chains, n_test)


@dataclass(frozen=True, eq=False)
class KDEStats:
    """A KDE's points: the first `count` rows of `buffer` (chains, capacity, d).

    `merge` may fill `buffer` beyond `count` in place; this object stays valid because it
    only ever reads its first `count` rows.
    """

    count: int
    buffer: np.ndarray
    mean: np.ndarray  # (chains, d): running moments, so train_var costs O(1) in the pool size
    m2: np.ndarray  # (chains, d): sum of squared deviations per coordinate
    cache: list = field(default_factory=list, compare=False)  # at most one _ScoreCache

    @property
    def points(self) -> np.ndarray:
        return self.buffer[:, : self.count]


@dataclass(frozen=True, eq=False)
class KDEFit:
    stats: KDEStats
    h: float

    @property
    def points(self) -> np.ndarray:
        return self.stats.points


@dataclass(frozen=True, eq=False)
class KDETestSet:
    x: np.ndarray  # (chains, n_test, d)
    sq_norms: np.ndarray  # (chains, n_test)


@dataclass(frozen=True)
class KDETask:
    """Gaussian-kernel KDE fitted to sklearn's blobs, circles, moons or swiss roll."""

    name: ClassVar[str] = "kde"
    batched: ClassVar[bool] = True

    dataset: Dataset = "moons"
    """Which sklearn generator makes the real data."""
    bandwidth: float | Literal["scott", "silverman"] = 0.5
    """Kernel bandwidth h, or a rule recomputed at each fit."""
    noise: float = 0.05
    """Noise of circles, moons and swiss roll (blobs use cluster_std 1)."""
    factor: float = 0.8
    """Circles only: inner radius over outer; 0.8 is sklearn's default, which (A) uses."""
    n_test: int = 500
    """Held-out real points for the test NLL, drawn once per chain."""
    record_every: int = 1
    """Keep the metrics of iteration 1 and every record_every-th (the bandwidth study's
    1000-iteration chains keep 1, 100, ..., 1000, the iterations (A)'s notebooks plot)."""
    precision: Precision = "float32"
    """Kernel values in float32 (1.3-1.45x float64's kernel throughput; test_loss within 1e-6 nats
    of float64's on the same draws, measured <= 3e-8 over the Fig. 2 grid's cells, where
    the Monte-Carlo SE of a 100-seed mean is >= 1.4e-4: tests/test_kde.py) or float64
    (exact to ~1e-12)."""

    def validate(self, where: str) -> None:
        if not isinstance(self.bandwidth, str):
            check_finite_positive(self.bandwidth, f"{where}.bandwidth")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            fail(f"{where}.noise", "a number in [0, inf)", self.noise)
        check_min(self.n_test, 1, f"{where}.n_test")
        check_min(self.record_every, 1, f"{where}.record_every")
        if not (0 <= self.factor < 1):  # sklearn's own range for make_circles
            fail(f"{where}.factor", "a number in [0, 1)", self.factor)

    @property
    def dim(self) -> int:
        return DIMS[self.dataset]

    def row_nbytes(self) -> int:
        return 8 * self.dim

    def bandwidth_for(self, n_points: int) -> float:
        d = self.dim
        if self.bandwidth == "scott":
            return n_points ** (-1.0 / (d + 4))
        if self.bandwidth == "silverman":
            return (n_points * (d + 2) / 4.0) ** (-1.0 / (d + 4))
        return float(self.bandwidth)

    def records_iteration(self, t: int) -> bool:
        """Loop hook: which iterations' metrics are kept (the last always is)."""
        return t == 1 or t % self.record_every == 0

    # -- data -------------------------------------------------------------------
    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        centres = None
        if self.dataset == "blobs":
            centres = np.stack([rng.uniform(-10.0, 10.0, size=(3, 2)) for rng in rngs])  # make_blobs' centre box
        # two draws, as (A)'s code does: circles and moons then split their rows exactly
        # in half between the two components in both sets (one draw of n_real + n_test
        # rows split afterwards would give the training set a random share of each,
        # which raises circles' iteration-1 NLL by ~0.013 nats at n = 100, h = 0.5)
        train = self._draw(n_real, rngs, centres)
        test = self._draw(self.n_test, rngs, centres)
        return RealData(
            train={"x": train},
            test=KDETestSet(test, np.einsum("cnd,cnd->cn", test, test)),
            context=centres,
        )

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        return {"x": self._draw(n, rngs, context)}

    def _draw(self, n: int, rngs, centres) -> np.ndarray:
        from sklearn import datasets

        out = np.empty((len(rngs), n, self.dim))
        for i, rng in enumerate(rngs):
            seed = int(rng.integers(2**31 - 1))
            if self.dataset == "blobs":
                out[i] = datasets.make_blobs(n, n_features=2, centers=centres[i], cluster_std=1.0, random_state=seed)[0]
            elif self.dataset == "circles":
                out[i] = datasets.make_circles(n, noise=self.noise, factor=self.factor, random_state=seed)[0]
            elif self.dataset == "moons":
                out[i] = datasets.make_moons(n, noise=self.noise, random_state=seed)[0]
            else:
                out[i] = datasets.make_swiss_roll(n, noise=self.noise, random_state=seed)[0]
        return out

    # -- fitting ----------------------------------------------------------------
    def statistics(self, rows: Rows, context=None) -> KDEStats:
        x = np.array(rows["x"], dtype=np.float64)
        mean = x.mean(axis=1)
        return KDEStats(x.shape[1], x, mean, ((x - mean[:, None, :]) ** 2).sum(axis=1))

    def merge(self, a: KDEStats, b: KDEStats) -> KDEStats:
        count = a.count + b.count
        buffer = a.buffer
        if buffer.shape[1] < count:  # amortised doubling
            buffer = np.empty((buffer.shape[0], max(count, 2 * buffer.shape[1]), buffer.shape[2]))
            buffer[:, : a.count] = a.points
        buffer[:, a.count : count] = b.points
        delta = b.mean - a.mean  # Chan et al.'s pairwise update of the moments
        m2 = a.m2 + b.m2 + delta**2 * (a.count * b.count / count)
        mean = a.mean + delta * (b.count / count)
        return KDEStats(count, buffer, mean, m2, a.cache)  # the score cache carries forward

    def fit_statistics(self, stats: KDEStats) -> KDEFit:
        return KDEFit(stats, self.bandwidth_for(stats.count))

    def fit(self, train: Rows, context=None) -> KDEFit:
        return self.fit_statistics(self.statistics(train))

    # -- sampling ---------------------------------------------------------------
    def sample(self, model: KDEFit, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        points = model.points
        out = np.empty((len(rngs), n, self.dim))
        for i, rng in enumerate(rngs):
            rng.standard_normal(out=out[i])
            out[i] *= model.h
            out[i] += points[i, rng.integers(0, points.shape[1], n)]
        return {"x": out}

    def sample_statistics(self, model: KDEFit, n: int, rngs: Sequence[np.random.Generator], context=None) -> KDEStats:
        return self.statistics(self.sample(model, n, rngs))

    # -- evaluation -------------------------------------------------------------
    def evaluate(self, model: KDEFit, test: KDETestSet) -> Metrics:
        stats, h = model.stats, model.h
        cache = stats.cache[0] if stats.cache else None
        if cache is not None and cache.test is not test and _same_test_set(cache.test, test):
            cache.test = test  # restored from a checkpoint: its sums carry on (bit-identical to a run never stopped)
        if cache is None or cache.test is not test or cache.h != h or cache.upto > stats.count:
            cache = _ScoreCache(test, h, 0, np.full(test.sq_norms.shape, -np.inf))
            stats.cache[:] = [cache]
        if cache.upto < stats.count:  # only the points added since the last evaluation
            new = _log_kernel_sums(test, stats.points[:, cache.upto :], h, self.precision)
            np.logaddexp(cache.lse, new, out=cache.lse)
            cache.upto = stats.count
        d = self.dim
        log_density = cache.lse - math.log(stats.count) - 0.5 * d * math.log(2 * math.pi * h * h)
        return {
            "test_loss": -log_density.mean(axis=1),
            "train_var": (stats.m2 / stats.count).mean(axis=1),
            "bandwidth_used": np.full(len(log_density), h),  # differs from the config under a rule
        }


def _same_test_set(a, b) -> bool:
    return (isinstance(a, KDETestSet) and isinstance(b, KDETestSet) and np.array_equal(a.x, b.x)
            and np.array_equal(a.sq_norms, b.sq_norms))


def _log_kernel_sums(test: KDETestSet, points: np.ndarray, h: float, precision: Precision = "float64") -> np.ndarray:
    """log sum_j exp(-|x_i - p_j|^2 / 2h^2) for each test point x_i: (chains, n_test).

    O(n_test x n_points) per chain, in blocks of at most BLOCK_ELEMENTS kernel values
    (whole chains, or rows of test points when one chain is larger) so temporaries stay
    in cache. The exponent comes from one float64 matrix product of augmented vectors,
    [x/h^2, -|x|^2/2h^2, 1] . [p, 1, -|p|^2/2h^2], and is shifted by its row maximum.
    "float64": shifted values are clipped at -700 (exp of float64 denormals is ~90x
    slower; those terms are below e^-700 of the largest) and summed in float64: exact to
    ~1e-12 in the log-density. "float32": the shifted exponent (<= 0, formed in float64, so
    no distance cancellation happens in float32) is rounded to float32, exponentiated and
    summed in float32, 1.3-1.45x float64's kernel throughput at 100-1000 points (0.55 of
    the machine's bare float32 distance-plus-exp rate; benchmarks/breakdown.py
    task_kernel_throughput), at a cost of at most ~1e-5 in a test
    point's log-density (the rounding, 6e-8 relative on each exponent that matters,
    |arg| < 17 + log n, and the float32 sum's); averaged over n_test points test_loss moves
    by <= 3e-8 nats on the full grid's cells (measured), and tests/test_kde.py holds it to
    1e-6 on the grid's datasets and bandwidths.
    """
    chains, n_test, d = test.x.shape
    n_points = points.shape[1]
    out = np.empty((chains, n_test))
    if n_points == 0:
        out.fill(-np.inf)
        return out
    inv_h2 = 1.0 / (h * h)
    left = np.empty((chains, n_test, d + 2))
    left[..., :d] = test.x * inv_h2
    left[..., d] = -0.5 * inv_h2 * test.sq_norms
    left[..., d + 1] = 1.0
    right = np.empty((chains, d + 2, n_points))
    right[:, :d] = points.transpose(0, 2, 1)
    right[:, d] = 1.0
    right[:, d + 1] = -0.5 * inv_h2 * np.einsum("cnd,cnd->cn", points, points)
    rows = min(n_test, max(1, BLOCK_ELEMENTS // n_points))  # test rows per block
    step = max(1, BLOCK_ELEMENTS // (n_test * n_points)) if rows == n_test else 1  # chains per block
    exponent = np.empty((min(step, chains), rows, n_points))
    kernel = exponent if precision == "float64" else np.empty(exponent.shape, np.float32)
    for lo in range(0, chains, step):
        hi = min(chains, lo + step)
        for r0 in range(0, n_test, rows):
            r1 = min(n_test, r0 + rows)
            block = exponent[: hi - lo, : r1 - r0]
            np.matmul(left[lo:hi, r0:r1], right[lo:hi], out=block)
            top = block.max(axis=2, keepdims=True)
            block -= top
            values = kernel[: hi - lo, : r1 - r0]
            if precision == "float64":
                np.maximum(block, -700.0, out=block)
            else:
                values[...] = block
            np.exp(values, out=values)
            out[lo:hi, r0:r1] = np.log(values.sum(axis=2)) + top[:, :, 0]
    return out
