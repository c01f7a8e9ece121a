"""A discrete distribution over K outcomes ("discrete"), as (A)'s categorical setting.

Real data: draws from the uniform distribution over K outcomes. A fit is the empirical
proportions; sampling draws n outcomes from them. Once an outcome's mass hits zero it
never returns, which is how diversity collapses under replace.

Metrics: `entropy` (nats), `n_zero_mass` (outcomes with zero probability),
`gini_simpson` = 1 - sum p^2, and `test_loss` = cross-entropy of the true distribution
under the fit, -sum_k q_k log p_k: the expected NLL of a held-out real draw (+inf once
an outcome is lost).

Fits depend on rows only through counts (additive); the counts of n new draws are
drawn directly as a multinomial, O(K) instead of O(n).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..validation import check_min
from .protocol import Metrics, RealData, Rows


@dataclass(frozen=True)
class Counts:
    count: int
    counts: np.ndarray  # (chains, K) int


@dataclass(frozen=True)
class Proportions:
    p: np.ndarray  # (chains, K)


@dataclass(frozen=True)
class DiscreteTask:
    """Fit the proportions of K outcomes by counting."""

    name: ClassVar[str] = "discrete"
    batched: ClassVar[bool] = True

    n_outcomes: int = 10
    """K, the number of outcomes; the real distribution is uniform over them."""

    def validate(self, where: str) -> None:
        check_min(self.n_outcomes, 2, f"{where}.n_outcomes")

    def row_nbytes(self) -> int:
        return 8

    @property
    def truth(self) -> np.ndarray:
        return np.full(self.n_outcomes, 1.0 / self.n_outcomes)

    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        return RealData(train=self.sample_real(n_real, rngs), test=self.truth)

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        return {"x": np.stack([rng.integers(0, self.n_outcomes, n) for rng in rngs])}

    def statistics(self, rows: Rows, context=None) -> Counts:
        x = rows["x"]
        chains, n = x.shape
        flat = x + self.n_outcomes * np.arange(chains)[:, None]
        counts = np.bincount(flat.ravel(), minlength=chains * self.n_outcomes).reshape(chains, self.n_outcomes)
        return Counts(n, counts)

    def merge(self, a: Counts, b: Counts) -> Counts:
        return Counts(a.count + b.count, a.counts + b.counts)

    def fit_statistics(self, stats: Counts) -> Proportions:
        return Proportions(stats.counts / stats.count)

    def fit(self, train: Rows, context=None) -> Proportions:
        return self.fit_statistics(self.statistics(train))

    def sample(self, model: Proportions, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        return {"x": np.stack([rng.choice(self.n_outcomes, n, p=p) for rng, p in zip(rngs, model.p)])}

    def sample_statistics(self, model: Proportions, n: int, rngs: Sequence[np.random.Generator], context=None) -> Counts:
        return Counts(n, np.stack([rng.multinomial(n, p) for rng, p in zip(rngs, model.p)]))

    def evaluate(self, model: Proportions, test: np.ndarray) -> Metrics:
        p = model.p
        with np.errstate(divide="ignore", invalid="ignore"):
            log_p = np.log(p)
            entropy = -np.sum(np.where(p > 0, p * log_p, 0.0), axis=1)  # 0 log 0 = 0
        return {
            "test_loss": -(log_p @ test),
            "entropy": entropy,
            "n_zero_mass": (p == 0).sum(axis=1).astype(np.float64),
            "gini_simpson": 1.0 - np.sum(p**2, axis=1),
        }
