"""The value grid's adaptive search (issue 28, 2): which cells (n_real, value_synthetic) to
run so as to find where s synthetic rows stop helping, V(n, s) = L(n, s) - L(n, 0) = 0,
without running the whole grid. Ray-free: collapse_ray/sweep/contour_searcher.py is the thin
Ray Tune adapter, collapse_ray/level_set.py the Gaussian process, contour_grid.py the
`search:` block, the grid's cells and a cell's paired observation.

    search:                      # in a value-grid spec; absent = method grid, every cell as before
      method: level_set          # grid | level_set
      acquisition: straddle      # straddle (Bryan et al. 2005) | lse (Gotovos et al. 2013)
      confidence: 0.95           # a cell's side is decided when P(side) >= this
      batch_size: 0              # cells proposed at once; 0: enough for the sweep's concurrent trials
      budget: 0                  # most cells run, baselines counted; 0: no cap
      initial: 4                 # cells of the space-filling first batch

What is modelled, and why:
* A cell is every chain of one (n_real, value_synthetic): its pools and seeds run together
  (all its trials), and its value is paired per (pool, seed) with the baseline cell (n, 0),
  which shares its real rows: V's standard error is then far smaller than L's.
* V(n, 0) = 0 by definition, so the level set V = 0 always holds the line s = 0 as well as
  the contour the question is about. The GP models instead
      z = sign(w) log(1 + |w|),  w = (L(n, s) - L(n, 0)) / (|L(n, 0)| q),  q = s / (n + s),
  which has V's sign (L(n, 0) and q are positive scales), no degenerate zero at s -> 0
  (V shrinks like the synthetic share q there), and a compressed range across n (test
  losses span decades). Inputs are (log n, log s), each scaled to [0, 1] over the grid:
  both are >= 1 in the modelled cells, so no log(1 + x) shift is needed.
* What is decided is each cell's own value, not the smooth surface through them: at a small
  scale a few more rows can add no optimiser step, so a cell deviates from its neighbours
  by more than its standard error (the GP's nugget, the roughness). A cell not run is
  decided by the predictive distribution of its value (the GP's uncertainty plus the
  roughness), a cell that ran by its own paired mean and standard error (shrunk towards
  the GP only where that error is large against the roughness). The roughness is not a
  single estimate: the GP averages over its hyperparameters weighted by their marginal
  likelihood (level_set.py), so while few cells have run, rough surfaces keep their share
  of the weight and the search does not stop on a first batch that happens to look smooth.
  That average is the minimum-evidence rule in statistical form: it needs no fixed count
  of cells beyond the first batch, and on a smooth surface (linear regression) it costs
  little. On a rough one it costs what roughness costs: cells near the contour can only be
  decided by running them.
* The s = 0 column holds the baselines: never a side, run whenever a cell of its n is.
* The n_real = 0 column has no baseline (no fit on nothing to compare with): the search
  leaves it out, neither run nor classified; the full grid (method grid) still runs it.
* Batches are synchronous: the next batch is chosen once every cell of the last has
  finished, from the finished cells alone, so the proposals are a function of the cells'
  results (fixed by their seeds) and not of timing. That is what makes a resume exact.

The state (every finished job's per-seed losses, the batches proposed, LSE's intervals,
the model's inputs) is plain JSON in the sweep folder (contour_search.json), written
atomically and fsynced after every change; Tune's own searcher checkpoint is not used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from collapse_ray import atomic, level_set
from collapse_ray.sweep.contour_grid import (Observation, SearchConfig, ValueGridCells, config_dict, initial_batch,
                                             observe, with_baselines)
from collapse_ray.sweep.layout import SEARCH_STATE_FILE
from collapse_ray.validation import SpecError

STATE_FILE = SEARCH_STATE_FILE  # in the sweep folder (sweep/layout.py)
FORMAT = "collapse_ray.contour_search/1"
MAX_STATE_BYTES = 64 * 2**20


# -- the estimate -----------------------------------------------------------------------
@dataclass(frozen=True)
class ContourEstimate:
    """The search's answer over every cell of the grid (NaN where a cell has no side)."""

    cells: ValueGridCells
    mean: np.ndarray  # posterior mean of the cell's own z (V's sign): the GP's latent plus the roughness
    sd: np.ndarray  # its posterior sd
    p_hurts: np.ndarray  # P(V > 0): s synthetic rows hurt
    ran: np.ndarray  # bool: every job of the cell finished
    observed: tuple[Observation | None, ...]
    confidence: float
    stopped: str | None
    gp: level_set.GaussianProcess
    n_batches: int

    @property
    def decided(self) -> np.ndarray:
        return np.maximum(self.p_hurts, 1 - self.p_hurts) >= self.confidence

    @property
    def hurts(self) -> np.ndarray:
        """The estimated side, the more probable one: True where s synthetic rows hurt (V > 0)."""
        return self.p_hurts > 0.5

    def predict(self, n_real, synthetic) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of a cell's z anywhere in the grid's range (for drawing the contour)."""
        n_real, synthetic = np.broadcast_arrays(np.asarray(n_real, float), np.asarray(synthetic, float))
        mean, sd = self.gp.predict(self.cells.scaled(n_real.ravel(), synthetic.ravel()).reshape(-1, 2), cell_value=True)
        return mean.reshape(n_real.shape), sd.reshape(n_real.shape)

    def summary(self) -> str:
        side = self.cells.candidates
        ran = int(self.ran.sum())
        reason = {"decided": f"every cell's side decided at {self.confidence:g}", "budget": "the run budget",
                  "exhausted": "every cell ran", None: "not finished"}.get(self.stopped, self.stopped)
        return (f"contour search: ran {ran} of {len(self.cells)} cells ({ran / max(len(self.cells), 1):.0%}) in "
                f"{self.n_batches} batches, stopped at {reason}; {int(side.sum())} cells with a side: "
                f"{int((self.hurts & side).sum())} hurt, {int((~self.hurts & side).sum())} help, "
                f"{int((self.decided & side).sum())} decided at {self.confidence:g}")

    def table(self) -> list[dict[str, Any]]:
        """A row per cell (for contour.json on the sweep run and tests)."""
        rows = []
        for i, (n, s) in enumerate(zip(self.cells.n_real, self.cells.synthetic)):
            obs = self.observed[i]
            has_side = bool(self.cells.candidates[i])
            rows.append({
                "n_real": int(n), "value_synthetic": int(s), "ran": bool(self.ran[i]),
                "role": "side" if has_side else ("baseline" if s == 0 and n > 0 else "no baseline"),
                "p_hurts": float(self.p_hurts[i]) if has_side else None,
                "side": ("hurts" if self.hurts[i] else "helps") if has_side else None,
                "decided": bool(self.decided[i]) if has_side else None,
                "value": None if obs is None else obs.value,
                "value_se": None if obs is None or not math.isfinite(obs.value_se) else obs.value_se})
        return rows


# -- the search -------------------------------------------------------------------------
class ContourSearch:
    """The search's policy and state: which jobs run next, what they gave, what is known.
    Driven by next_jobs / record / record_failure (ContourSearcher does it under Tune; the
    tests do it in a loop), saved with save() after each change."""

    def __init__(self, cells: ValueGridCells, config: SearchConfig, batch_size: int,
                 state: Mapping[str, Any] | None = None):
        self.cells, self.config, self.batch_size = cells, config, max(1, int(batch_size))
        self.batches: list[list[int]] = []
        self.results: dict[str, dict[str, list]] = {}  # job key -> {"seeds": [...], "losses": [...]}
        self.failed: list[str] = []
        self.lse: dict[str, list] | None = None
        self.stopped: str | None = None
        self.model: dict[str, Any] = {}
        if state is not None:
            self._load(state)

    # -- persistence
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "config": config_dict(self.config), "batch_size": self.batch_size,
                "cells": self.cells.pairs(), "batches": self.batches, "results": self.results,
                "failed": self.failed, "lse": self.lse, "stopped": self.stopped, "model": self.model}

    def save(self, path: Path) -> None:
        atomic.write_text(path, json.dumps(self.to_json(), allow_nan=False, default=_no_nan))

    @classmethod
    def open(cls, path: Path, cells: ValueGridCells, config: SearchConfig, batch_size: int) -> ContourSearch:
        """The search saved at `path` (a resumed or grown sweep), else a new one. A saved
        batch size is kept (proposals must not change with the cluster a resume runs on)."""
        from collapse_ray.core.checkpoint import CheckpointFormatError, read_json

        path = Path(path)
        if not path.exists():
            return cls(cells, config, batch_size)
        try:
            state = read_json(path, MAX_STATE_BYTES)
        except CheckpointFormatError as err:
            raise SpecError(f"--resume: {path} is {err}, so not a contour search's state") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise SpecError(f"--resume: {path} has no {FORMAT!r} format marker")
        saved_batch = state.get("batch_size")
        if not (isinstance(saved_batch, int) and saved_batch >= 1):
            raise SpecError(f"--resume: {path}: batch_size must be an integer >= 1; got {saved_batch!r}")
        return cls(cells, config, saved_batch, state)

    def _load(self, state: Mapping[str, Any]) -> None:
        where = f"--resume: {STATE_FILE}"
        if state.get("cells") != self.cells.pairs():
            raise SpecError(f"{where}: its cells differ from this spec's value grid (a sweep grows only by more seeds, "
                            "a larger search.budget or search.confidence)")
        saved = state.get("config") or {}
        fixed = ("method", "acquisition", "initial", "batch_size")
        for key in fixed:
            if saved.get(key) != getattr(self.config, key):
                raise SpecError(f"{where}: search.{key} was {saved.get(key)!r} and is {getattr(self.config, key)!r}; "
                                "a search grows only by search.budget and search.confidence")
        n_cells = len(self.cells)
        batches = state.get("batches")
        if not (isinstance(batches, list) and all(isinstance(b, list) and all(
                isinstance(c, int) and 0 <= c < n_cells for c in b) for b in batches)):
            raise SpecError(f"{where}: batches must be lists of cell indices")
        known = {job for jobs in self.cells.jobs for job in jobs}
        results = state.get("results")
        if not isinstance(results, dict):
            raise SpecError(f"{where}: results must be a mapping of job keys")
        for key, value in results.items():
            if key not in known:
                raise SpecError(f"{where}: job {key!r} belongs to no cell of this spec")
            if not (isinstance(value, dict) and set(value) == {"seeds", "losses"}
                    and isinstance(value["seeds"], list) and isinstance(value["losses"], list)
                    and len(value["seeds"]) == len(value["losses"])
                    and all(isinstance(s, int) for s in value["seeds"])
                    and all(v is None or isinstance(v, (int, float)) for v in value["losses"])):
                raise SpecError(f"{where}: the result of job {key!r} must be {{seeds: [...], losses: [...]}}")
        failed = state.get("failed", [])
        if not (isinstance(failed, list) and all(isinstance(k, str) and k in known for k in failed)):
            raise SpecError(f"{where}: failed must list this spec's job keys")
        lse = state.get("lse")
        if lse is not None and not (isinstance(lse, dict) and all(
                isinstance(lse.get(k), list) and len(lse[k]) == n_cells for k in ("lower", "upper"))):
            raise SpecError(f"{where}: lse must hold lower and upper, one per cell")
        self.batches = [list(b) for b in batches]
        self.results = {k: {"seeds": list(v["seeds"]), "losses": list(v["losses"])} for k, v in results.items()}
        self.failed = list(failed)
        self.lse = None if lse is None else {"lower": list(lse["lower"]), "upper": list(lse["upper"])}
        # a grown search (larger budget, higher confidence, more seeds) decides again whether to go on
        same = all(saved.get(k) == getattr(self.config, k) for k in ("budget", "confidence"))
        self.stopped = state.get("stopped") if same else None
        if self.pending_jobs():  # more seeds: the cells it ran get them first, then it decides again
            self.stopped = None
        self.model = state.get("model") or {}

    # -- driving
    def proposed(self) -> set[int]:
        return {c for batch in self.batches for c in batch}

    def pending_jobs(self) -> list[str]:
        """Jobs of proposed cells with no result yet, in the order they were proposed."""
        done = set(self.results) | set(self.failed)
        return [job for batch in self.batches for c in batch for job in self.cells.jobs[c] if job not in done]

    def next_jobs(self) -> list[str] | None:
        """What to run next, once nothing is running: the pending jobs (a resumed or grown
        sweep's first), else a new batch's; None once the search has stopped."""
        pending = self.pending_jobs()
        if pending:
            return pending
        if self.stopped is None:
            self._propose()
        return self.pending_jobs() or None

    def record(self, job: str, seeds: Sequence[int], losses: Sequence[float]) -> None:
        self.results[job] = {"seeds": [int(s) for s in seeds],
                             "losses": [float(v) if math.isfinite(v) else None for v in map(float, losses)]}

    def record_failure(self, job: str) -> None:
        if job not in self.failed:
            self.failed.append(job)

    # -- what is known
    def cell_done(self) -> np.ndarray:
        return np.array([bool(jobs) and all(j in self.results for j in jobs) for jobs in self.cells.jobs])

    def cell_failed(self) -> np.ndarray:
        failed = set(self.failed)
        return np.array([any(j in failed for j in jobs) for jobs in self.cells.jobs])

    def _units(self, cell: int) -> dict[tuple[int, int], float]:
        out = {}
        for job in self.cells.jobs[cell]:
            result = self.results[job]
            pool = self.cells.job_pool[job]
            for seed, loss in zip(result["seeds"], result["losses"]):
                out[(pool, seed)] = math.nan if loss is None else loss
        return out

    def observations(self) -> list[Observation | None]:
        done = self.cell_done()
        baseline = self.cells.baseline
        out: list[Observation | None] = []
        for i in range(len(self.cells)):
            b = baseline[i]
            if not (self.cells.candidates[i] and done[i] and done[b]):
                out.append(None)
                continue
            out.append(observe(self._units(i), self._units(b), int(self.cells.n_real[i]), int(self.cells.synthetic[i])))
        return out

    def _fit(self, observed: Sequence[Observation | None]) -> level_set.GaussianProcess:
        index = [i for i, o in enumerate(observed) if o is not None]
        x = self.cells.scaled(self.cells.n_real[index], self.cells.synthetic[index]).reshape(-1, 2)
        z = np.array([observed[i].z for i in index])
        noise = np.array([observed[i].z_se ** 2 for i in index])
        gp = level_set.fit(x, z, noise)
        self.model = {"cells": index, "x": x.tolist(), "z": z.tolist(), "noise": noise.tolist(),
                      "length_scales": gp.length_scales.tolist(), "signal_variance": gp.signal_variance,
                      "nugget": gp.nugget, "log_likelihood": gp.log_likelihood,
                      "expected_nugget": gp.expected_nugget, "settings": len(gp.weights)}
        return gp

    def estimate(self) -> ContourEstimate:
        observed = self.observations()
        gp = self._fit(observed)
        cells = self.cells
        side = cells.candidates
        mean, sd, p = (np.full(len(cells), np.nan) for _ in range(3))
        if side.any():
            x = cells.scaled(cells.n_real[side], cells.synthetic[side])
            mean[side], sd[side] = gp.predict(x, cell_value=True)
            p[side] = gp.prob_above(x, cell_value=True)
        return ContourEstimate(cells, mean, sd, p, self.cell_done(), tuple(observed), self.config.confidence,
                               self.stopped, gp, len(self.batches))

    def _propose(self) -> None:
        """Append the next batch, or set `stopped` (decided, budget, exhausted)."""
        cells, config = self.cells, self.config
        proposed = self.proposed()
        budget_left = math.inf if config.budget == 0 else config.budget - len(proposed)
        if not self.batches:
            self.batches.append(initial_batch(cells, config.initial))
            return
        estimate = self.estimate()
        failed = self.cell_failed()
        dead_baselines = {int(cells.n_real[b]) for b in np.flatnonzero(failed & (cells.synthetic == 0))}
        open_ = cells.candidates & ~np.isin(np.arange(len(cells)), list(proposed)) & ~failed
        open_ &= ~np.isin(cells.n_real, list(dead_baselines))
        if not open_.any():
            self.stopped = "exhausted"
            return
        side = cells.candidates
        mean, sd = np.nan_to_num(estimate.mean), np.nan_to_num(estimate.sd)
        if config.acquisition == "lse":
            beta_root = config.decided_z()
            lower = np.array([-np.inf if v is None else v for v in (self.lse or {}).get("lower", [None] * len(cells))])
            upper = np.array([np.inf if v is None else v for v in (self.lse or {}).get("upper", [None] * len(cells))])
            lower, upper = level_set.lse_intervals(mean, sd, beta_root, lower, upper)
            lower, upper = np.where(side, lower, -np.inf), np.where(side, upper, np.inf)
            self.lse = {"lower": [None if not np.isfinite(v) else float(v) for v in lower],
                        "upper": [None if not np.isfinite(v) else float(v) for v in upper]}
            undecided = open_ & (level_set.lse_ambiguity(lower, upper) > 0)

            def score(m, s):  # (over the candidates) the intervals narrowed by what the picks so far will teach
                lo, hi = level_set.lse_intervals(m, s, beta_root, lower[side], upper[side])
                return level_set.lse_ambiguity(lo, hi)
        else:
            undecided = open_ & ~estimate.decided
            kappa = config.straddle_kappa()

            def score(m, s):
                return level_set.straddle(m, s, kappa)
        if not undecided.any():
            self.stopped = "decided"
            return
        if budget_left < 1:
            self.stopped = "budget"
            return
        baseline = cells.baseline

        def costs(picked: list[int]) -> np.ndarray:
            have = proposed | {int(baseline[c]) for c in picked}
            return 1.0 + np.array([b >= 0 and int(b) not in have for b in baseline], dtype=float)

        # only the candidates enter the covariance; the batch conditions on picks among them
        index = np.flatnonzero(side)
        x = cells.scaled(cells.n_real[index], cells.synthetic[index])
        # the roughness is in the cells' covariance: running a cell leaves only its standard error
        noise = float(np.median(estimate.gp.noise)) if len(estimate.gp.noise) else 1e-6

        def local_costs(picked_local: list[int]) -> np.ndarray:
            return costs([int(index[i]) for i in picked_local])[index]

        picks = level_set.greedy_batch(score, mean[index], estimate.gp.covariance(x, cell_value=True), noise, undecided[index],
                                       self.batch_size, local_costs, budget_left)
        if not picks:
            self.stopped = "budget"
            return
        self.batches.append(with_baselines(cells, [int(index[i]) for i in picks], proposed))


def _no_nan(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def resolve_batch_size(config: SearchConfig, max_concurrent_trials: int, cpus: float, cpus_per_trial: float,
                       trials_per_cell: int) -> int:
    """search.batch_size, or (0) as many cells as the sweep's concurrent trials keep busy."""
    if config.batch_size:
        return config.batch_size
    concurrent = max_concurrent_trials or max(1, int(cpus // cpus_per_trial))
    return max(1, math.ceil(concurrent / max(trials_per_cell, 1)))
