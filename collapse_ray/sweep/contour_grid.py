"""The value grid's adaptive search, its inputs (collapse_ray/sweep/contour_search.py holds
the search itself and what is modelled): the spec's `search:` block, the grid's cells with
their baselines and jobs, the first batch, and a cell's observation, its value paired per
(pool, seed) with its baseline's."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy.special import ndtri

from collapse_ray.core.aggregate import mean_se
from collapse_ray.validation import SpecError, check_min, fail, require

if TYPE_CHECKING:
    from collapse_ray.core.jobs import ChainJob, GridPoint

METRIC = "test_loss"  # every value-grid task's held-out loss
N_REAL, SYNTHETIC, POOL = "chain.n_real", "task.value_synthetic", "task.value_pool"


@dataclass(frozen=True)
class SearchConfig:
    """The spec's `search:` block: how a value grid's cells are chosen (see the module docstring)."""

    method: Literal["grid", "level_set"] = "grid"
    """grid: every cell, as a spec without `search:`; level_set: a GP-guided search for V = 0."""
    acquisition: Literal["straddle", "lse"] = "straddle"
    """straddle: kappa sd - |mean| with kappa = Phi^-1((1 + confidence) / 2) (1.96 at 0.95, Bryan
    et al.'s); lse: the widest interval still holding 0, intervals kept across rounds (Gotovos et al.)."""
    confidence: float = 0.95
    """A cell's side is decided when the posterior puts at least this probability on it; the
    search stops once every cell it could still run is decided."""
    batch_size: int = 0
    """Cells proposed at once (their missing baselines join them); 0: enough cells to fill
    run.max_concurrent_trials (or the cluster's CPUs / run.cpus_per_trial), fixed at the start."""
    budget: int = 0
    """The most cells run, baselines counted; 0: no cap (the search stops when decided)."""
    initial: int = 4
    """Cells (s > 0) of the first batch, spread over the grid (farthest-point in (log n, log s))."""

    def validate(self, where: str) -> None:
        require(math.isfinite(self.confidence) and 0.5 < self.confidence < 1, f"{where}.confidence",
                "a number in (0.5, 1)", self.confidence)
        check_min(self.batch_size, 0, f"{where}.batch_size")
        check_min(self.budget, 0, f"{where}.budget")
        check_min(self.initial, 1, f"{where}.initial")
        if self.method == "grid" and self != SearchConfig():
            changed = next(k for k in ("acquisition", "confidence", "batch_size", "budget", "initial")
                           if getattr(self, k) != getattr(SearchConfig(), k))
            fail(f"{where}.{changed}", "left out when search.method is grid (every cell runs)", getattr(self, changed))

    @property
    def adaptive(self) -> bool:
        return self.method != "grid"

    def decided_z(self) -> float:
        """|mean| / sd beyond which P(side) >= confidence."""
        return float(ndtri(self.confidence))

    def straddle_kappa(self) -> float:
        return float(ndtri((1 + self.confidence) / 2))

    def check_grid(self, points: Sequence[GridPoint], where: str = "search") -> None:
        """A level-set search needs a value grid: n_real and value_synthetic swept, nothing but
        the pools besides, value_synthetic 0 (the baseline) at every n_real > 0 it runs, and
        room for its first batch in the budget. SpecError (one line) otherwise."""
        if not self.adaptive:
            return
        swept = {key for point in points for key, _ in point.swept}
        if not {N_REAL, SYNTHETIC} <= swept:
            raise SpecError(f"{where}.method level_set needs a value grid: grid or cases must sweep {N_REAL} and "
                            f"{SYNTHETIC}; got {', '.join(sorted(swept)) or 'no axes'}", field=f"{where}.method")
        for key in sorted(swept - {N_REAL, SYNTHETIC, POOL}):
            values = {repr(dict(point.swept).get(key)) for point in points}
            if len(values) > 1:
                raise SpecError(f"{where}.method level_set searches over {N_REAL} x {SYNTHETIC} only (pools and "
                                f"seeds are replicates); the grid also sweeps {key}: run one sweep per value",
                                field=f"{where}.method")
        cells = ValueGridCells.from_points(points)
        missing = sorted({int(n) for n, s, b in zip(cells.n_real, cells.synthetic, cells.baseline)
                          if n > 0 and s > 0 and b < 0})
        if missing:
            raise SpecError(f"{where}.method level_set: {SYNTHETIC} 0 (the baseline L(n, 0)) must be a cell at every "
                            f"{N_REAL} > 0; missing at n_real {missing[0]}", field=f"{where}.method")
        n_candidates = int(cells.candidates.sum())
        require(n_candidates >= 2, f"{where}.method", "level_set only on a grid of at least 2 cells with n_real > 0 "
                "and value_synthetic > 0", n_candidates)
        require(self.initial <= n_candidates, f"{where}.initial",
                f"at most the grid's {n_candidates} cells with n_real > 0 and value_synthetic > 0", self.initial)
        first = initial_batch(cells, self.initial)
        require(self.budget == 0 or self.budget >= len(first), f"{where}.budget",
                f"0 (no cap) or at least {len(first)} (the first batch's {self.initial} cells and their baselines)",
                self.budget)


def config_dict(config: SearchConfig) -> dict[str, Any]:
    from collapse_ray.validation import as_flat_dict

    return as_flat_dict(config)


# -- the grid's cells -------------------------------------------------------------------
@dataclass(frozen=True)
class ValueGridCells:
    """The cells of a value grid, sorted by (n_real, value_synthetic), with their jobs."""

    n_real: np.ndarray  # (m,) per cell
    synthetic: np.ndarray  # (m,)
    jobs: tuple[tuple[str, ...], ...] = ()  # job keys per cell (every pool and seed block)
    job_pool: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_points(cls, points: Sequence[GridPoint]) -> ValueGridCells:
        pairs = sorted({(int(p.chain.n_real), int(p.task.value_synthetic)) for p in points})
        return cls(np.array([n for n, _ in pairs], dtype=np.int64), np.array([s for _, s in pairs], dtype=np.int64))

    @classmethod
    def from_jobs(cls, jobs: Sequence[ChainJob]) -> ValueGridCells:
        by_cell: dict[tuple[int, int], list[str]] = {}
        for job in jobs:
            by_cell.setdefault((int(job.point.chain.n_real), int(job.point.task.value_synthetic)), []).append(job.key)
        pairs = sorted(by_cell)
        return cls(np.array([n for n, _ in pairs], dtype=np.int64), np.array([s for _, s in pairs], dtype=np.int64),
                   tuple(tuple(sorted(by_cell[p])) for p in pairs),
                   {job.key: int(job.point.task.value_pool) for job in jobs})

    def __len__(self) -> int:
        return len(self.n_real)

    @functools.cached_property  # (in the instance's __dict__: fields and equality do not see it)
    def baseline(self) -> np.ndarray:
        """Index of each cell's (n, 0), -1 where the grid has none."""
        index = {(int(n), int(s)): i for i, (n, s) in enumerate(zip(self.n_real, self.synthetic))}
        return np.array([index.get((int(n), 0), -1) for n in self.n_real], dtype=np.int64)

    @functools.cached_property
    def candidates(self) -> np.ndarray:
        """Cells with a side: n_real > 0, value_synthetic > 0 and a baseline cell."""
        return (self.n_real > 0) & (self.synthetic > 0) & (self.baseline >= 0)

    def scaled(self, n_real, synthetic) -> np.ndarray:
        """(log n, log s) scaled to [0, 1] over the candidate cells' ranges: the GP's inputs."""
        n = self.n_real[self.candidates].astype(float)
        s = self.synthetic[self.candidates].astype(float)
        out = []
        for values, axis in ((n_real, n), (synthetic, s)):
            lo, hi = np.log(axis.min()), np.log(axis.max())
            out.append((np.log(np.asarray(values, float)) - lo) / (hi - lo if hi > lo else 1.0))
        return np.stack(np.broadcast_arrays(*out), axis=-1)

    def pairs(self) -> list[list[int]]:
        return [[int(n), int(s)] for n, s in zip(self.n_real, self.synthetic)]


def initial_batch(cells: ValueGridCells, size: int) -> list[int]:
    """`size` candidate cells spread over the grid (the one nearest its centre, then each the
    farthest from those picked), then the baselines they need: cell indices, baselines first."""
    candidates = np.flatnonzero(cells.candidates)
    x = cells.scaled(cells.n_real[candidates], cells.synthetic[candidates])
    picked = [int(np.argmin(((x - 0.5) ** 2).sum(axis=1)))]
    distance = ((x - x[picked[0]]) ** 2).sum(axis=1)
    while len(picked) < min(size, len(candidates)):
        best = int(np.argmax(distance))
        picked.append(best)
        distance = np.minimum(distance, ((x - x[best]) ** 2).sum(axis=1))
    chosen = [int(candidates[i]) for i in picked]
    return with_baselines(cells, chosen, set())


def with_baselines(cells: ValueGridCells, chosen: Sequence[int], proposed: set[int]) -> list[int]:
    """`chosen` preceded by the baselines they need that `proposed` does not hold yet."""
    baseline = cells.baseline
    needed = sorted({int(baseline[c]) for c in chosen} - proposed)
    return needed + list(chosen)


# -- observations -----------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """One cell's value from its paired (pool, seed) units."""

    z: float  # the modelled, sign-preserving transform of V (module docstring)
    z_se: float  # its standard error (delta method over units; 0 with one unit)
    value: float  # V = mean L(n, s) - mean L(n, 0)
    value_se: float  # paired standard error of V
    units: int


def observe(losses: Mapping[tuple[int, int], float], baseline: Mapping[tuple[int, int], float], n: int,
            s: int) -> Observation | None:
    """The cell's observation from its and its baseline's losses per (pool, seed); None when
    no unit has both finite, or the baseline's mean loss is 0 (no scale to compare with)."""
    units = sorted(set(losses) & set(baseline))
    ls = np.array([losses[u] for u in units], dtype=float)
    l0 = np.array([baseline[u] for u in units], dtype=float)
    keep = np.isfinite(ls) & np.isfinite(l0)
    ls, l0 = ls[keep], l0[keep]
    if len(ls) == 0:
        return None
    mean_s, mean_0 = float(ls.mean()), float(l0.mean())
    if mean_0 == 0:
        return None
    share = s / (n + s)
    w = (mean_s - mean_0) / (abs(mean_0) * share)
    z = math.copysign(math.log1p(abs(w)), w)
    # delta method: dz = dw / (1 + |w|), dw = (dmean_s - mean_s/mean_0 dmean_0) / (|mean_0| q)
    influence = ((ls - mean_s) - (mean_s / mean_0) * (l0 - mean_0)) / (abs(mean_0) * share * (1 + abs(w)))
    k = len(ls)
    # both standard errors by the one rule (core/aggregate.py): V's over the units' paired
    # differences, z's over their influence values; one unit has no z_se, and the GP takes
    # its value as exact (0), its scatter left to the nugget
    z_se = float(mean_se(influence).se[0]) if k > 1 else 0.0
    value_se = float(mean_se(ls - l0).se[0])
    return Observation(z, z_se, mean_s - mean_0, value_se, k)
