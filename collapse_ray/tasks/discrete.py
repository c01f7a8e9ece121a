"""A discrete distribution over K outcomes ("discrete"), (A)'s `fit_discrete_distributions.py`.

Real data: n draws from the uniform distribution over K outcomes. A fit is the empirical
proportions; sampling draws n outcomes from them. Once an outcome's mass hits zero it
never returns, so under replace (the neutral Wright-Fisher model with population n) the
chain ends on one outcome; (A) runs replace until the entropy falls below 1e-8, which
`stop_when_collapsed` asks the chain loop to do (collapse_ray.theory has the expected
time). Accumulate never collapses: every real outcome stays in the pool.

Metrics: `entropy` (nats), `fraction_of_initial_entropy` = entropy / ln K (the real
distribution's), `n_zero_mass` (outcomes with zero probability), `gini_simpson` =
1 - sum p^2, and `test_loss` = cross-entropy of the true distribution under the fit,
-sum_k q_k log p_k: the expected NLL of a held-out real draw (+inf once an outcome is
lost).

Speed: fits depend on rows only through counts (additive), and the counts of n new
draws are drawn directly as a multinomial over the *surviving support* only: each
chain keeps its nonzero counts packed to the left, with the outcome each column stands
for in `labels`. Under replace the support shrinks from min(K, n) to 1 within a few
generations' worth of coalescence (about 2n/t outcomes survive t generations), so a
generation costs O(survivors) per chain, not O(K). Every metric is invariant under
relabelling (the truth is uniform), so evaluation never needs the labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from collapse_ray.validation import check_min, fail
from collapse_ray.tasks.protocol import Metrics, RealData, Rows

COLLAPSED_ENTROPY = 1e-8
"""(A)'s stopping threshold: below it one outcome is left (with n <= 1e5 the smallest
entropy of a two-outcome fit, (1/n) ln n + ..., is above 1e-4)."""

LOG_SPACED_PER_DECADE = 100
"""`record: log_spaced` keeps every iteration up to 100, then about this many per decade."""


@dataclass(frozen=True, eq=False)
class Counts:
    count: int  # draws behind these counts (the same for every chain)
    counts: np.ndarray  # (chains, width) int64: packed nonzero counts, zero-padded on the right
    labels: np.ndarray | None = None  # (chains, width) outcome of each column; None: column k is outcome k

    def dense(self, n_outcomes: int) -> np.ndarray:
        """(chains, K) counts indexed by outcome."""
        if self.labels is None:
            return self.counts
        chains = len(self.counts)
        flat = self.labels + n_outcomes * np.arange(chains)[:, None]  # padding adds 0 to some outcome
        dense = np.bincount(flat.ravel(), weights=self.counts.ravel(), minlength=chains * n_outcomes)
        return dense.reshape(chains, n_outcomes).astype(np.int64)  # exact: counts < 2^53


@dataclass(frozen=True, eq=False)
class Proportions:
    p: np.ndarray  # (chains, width); columns beyond a chain's support have p = 0
    labels: np.ndarray | None = None  # as Counts.labels


@dataclass(frozen=True)
class DiscreteTask:
    """Fit the proportions of K outcomes by counting."""

    name: ClassVar[str] = "discrete"
    batched: ClassVar[bool] = True

    n_outcomes: int = 10
    """K, the number of outcomes; the real distribution is uniform over them."""
    stop_when_collapsed: bool = False
    """Stop a chain once its entropy is below 1e-8 (one outcome left), as (A) runs
    replace; `chain.n_iterations` is then the cap."""
    record: Literal["all", "log_spaced"] = "all"
    """Which iterations' metrics are kept and logged: all, or (for chains of 1e5
    generations) every one up to 100 and then ~100 per decade; a chain's stopping
    iteration and the last one are always kept."""

    def validate(self, where: str) -> None:
        check_min(self.n_outcomes, 2, f"{where}.n_outcomes")
        if not isinstance(self.stop_when_collapsed, bool):
            fail(f"{where}.stop_when_collapsed", "true or false", self.stop_when_collapsed)
        if self.record not in ("all", "log_spaced"):
            fail(f"{where}.record", "one of {all, log_spaced}", self.record)

    def row_nbytes(self) -> int:
        return 8

    @property
    def truth(self) -> np.ndarray:
        return np.full(self.n_outcomes, 1.0 / self.n_outcomes)

    # -- data -------------------------------------------------------------------
    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        return RealData(train=self.sample_real(n_real, rngs), test=self.truth)

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        return {"x": np.stack([rng.integers(0, self.n_outcomes, n) for rng in rngs])}

    # -- fitting ----------------------------------------------------------------
    def statistics(self, rows: Rows, context=None) -> Counts:
        x = rows["x"]
        chains, n = x.shape
        flat = x + self.n_outcomes * np.arange(chains)[:, None]
        counts = np.bincount(flat.ravel(), minlength=chains * self.n_outcomes).reshape(chains, self.n_outcomes)
        return Counts(n, counts)

    def merge(self, a: Counts, b: Counts) -> Counts:
        # O(chains x K): accumulate keeps every real outcome, so its support never shrinks
        return Counts(a.count + b.count, a.dense(self.n_outcomes) + b.dense(self.n_outcomes))

    def fit_statistics(self, stats: Counts) -> Proportions:
        return Proportions(stats.counts / stats.count, stats.labels)

    def fit(self, train: Rows, context=None) -> Proportions:
        return self.fit_statistics(self.statistics(train))

    # -- sampling ---------------------------------------------------------------
    def sample(self, model: Proportions, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        labels = model.labels if model.labels is not None else np.broadcast_to(np.arange(model.p.shape[1]), model.p.shape)
        return {"x": np.stack([lab[rng.choice(len(p), n, p=p)] for rng, p, lab in zip(rngs, model.p, labels)])}

    def sample_statistics(self, model: Proportions, n: int, rngs: Sequence[np.random.Generator], context=None) -> Counts:
        # one multinomial per chain over its current support (the only per-chain Python
        # step), then the survivors are packed left for all chains at once. A packed row
        # is cut to its own support: numpy draws the last category as the remainder, so
        # trailing zeros of the batch's padding would change the draws (and make a chain
        # depend on its batch)
        counts = np.zeros(model.p.shape, dtype=np.int64)
        support = np.full(len(model.p), model.p.shape[1]) if model.labels is None else np.count_nonzero(model.p, axis=1)
        for i, (rng, p, width) in enumerate(zip(rngs, model.p, support.tolist())):
            counts[i, :width] = rng.multinomial(n, p[:width])
        labels = model.labels
        alive = counts > 0
        if alive.all():
            return Counts(n, counts, labels)
        order = np.argsort(~alive, axis=1, kind="stable")  # survivors first, in their order
        width = int(alive.sum(axis=1).max())
        order = order[:, :width]
        if labels is None:
            labels = order
        else:
            labels = np.take_along_axis(labels, order, axis=1)
        return Counts(n, np.take_along_axis(counts, order, axis=1), labels)

    # -- evaluation -------------------------------------------------------------
    def evaluate(self, model: Proportions, test: np.ndarray) -> Metrics:
        p = model.p
        n_zero = self.n_outcomes - np.count_nonzero(p, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_p = np.log(p)
            entropy = -np.sum(np.where(p > 0, p * log_p, 0.0), axis=1)  # 0 log 0 = 0
            # the truth is uniform (test = 1/K everywhere): -sum_k q_k log p_k
            cross = np.where(n_zero > 0, np.inf, -np.sum(np.where(p > 0, log_p, 0.0), axis=1) * test[0])
        return {
            "test_loss": cross,
            "entropy": entropy,
            "fraction_of_initial_entropy": entropy / math.log(self.n_outcomes),
            "n_zero_mass": n_zero.astype(np.float64),
            "gini_simpson": 1.0 - np.sum(p**2, axis=1),
        }

    # -- stopping (optional loop hooks, see protocol.py) --------------------------
    def stop_condition(self, metrics: Metrics) -> np.ndarray | None:
        if not self.stop_when_collapsed:
            return None
        return metrics["entropy"] < COLLAPSED_ENTROPY

    def take_chains(self, stats: Counts | None, test: np.ndarray, context, index: np.ndarray):
        """The statistics of chains `index` only (test and context are shared by chains)."""
        if stats is not None:
            stats = Counts(stats.count, stats.counts[index], None if stats.labels is None else stats.labels[index])
        return stats, test, context

    def records_iteration(self, t: int) -> bool:
        if self.record == "all" or t <= 100:
            return True
        # ~100 per decade: the integers nearest 10^(k/100)
        return t == round(10 ** (round(LOG_SPACED_PER_DECADE * math.log10(t)) / LOG_SPACED_PER_DECADE))
