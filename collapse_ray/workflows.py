"""Training-workflows as mixing policies: which pool rows model-fitting iteration t trains on.

Iteration 1 always fits the real rows of origin 0 alone. After fitting iteration t,
n_synthetic rows sampled from it enter the pool with iteration of origin t (and, for
policies with fresh data, n_fresh_real new real rows with origin t too). For t >= 2 a
policy takes a *real part* and a *synthetic part* of the pool:

  real:      all (every real row so far) | initial (origin 0) | latest (newest real rows) | none
  synthetic: all (every synthetic row) | latest (origin t-1)
then optionally draws, uniformly without replacement and per chain,
  synthetic_ratio  lambda x |real part| rows of the synthetic part (Bertrand et al.);
  real_fraction    an n_train training set with this share from the real part (Shumailov et al.);
  n_train          n_train rows of the union, not stratified by iteration ((A)'s subsample).

Presets (the names used in specs, MLflow params and legends):
  replace                synthetic latest                        (A), (B): collapses
  accumulate             real all + synthetic all                (A), (B): stays bounded
  accumulate_subsample   accumulate, subsampled to n_train       (A): fixed compute
  fresh_data             real latest + synthetic latest, with n_fresh_real new real rows
                         each iteration (Alemohammad et al.'s fresh-data loop)
  iterative_retraining   real initial + lambda x |real| rows of synthetic latest (Bertrand et al.)
  real_fraction          n_train rows: a real_fraction share of real, the rest synthetic latest
                         (Shumailov et al.'s retained share of real data)

A selection is a `slice` (the same rows for every chain: every chain's pool has the same
layout) or an int array (chains, k), one row set per chain.

Which knobs a preset accepts is checked here only (`check_knobs`, a SpecError); the
chain config (collapse_ray/chain.py) asks this module, as does `make_workflow`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .validation import SpecError, describe, fail

Selection = slice | np.ndarray

REAL, SYNTHETIC = 0, 1  # source codes in PoolIndex.source


@dataclass(frozen=True)
class PoolIndex:
    """What a workflow may look at: each held row's iteration of origin and source."""

    iteration: np.ndarray  # (rows,) int
    source: np.ndarray  # (rows,) int8: REAL or SYNTHETIC


@dataclass(frozen=True)
class MixingPolicy:
    name: str
    real: str = "none"  # all | initial | latest | none
    synthetic: str = "latest"  # all | latest
    n_train: int | None = None
    synthetic_ratio: float | None = None
    real_fraction: float | None = None
    n_fresh_real: int = 0

    @property
    def update(self) -> str | None:
        """How the training set at t follows from the one at t-1 and the rows added
        since: "replace" (those rows alone), "merge" (the old set plus them), or None.
        Lets tasks with additive statistics carry statistics instead of rows."""
        if self.n_train is not None or self.synthetic_ratio is not None or self.real_fraction is not None:
            return None
        if self.synthetic == "latest" and (self.real == "latest" or (self.real == "none" and not self.n_fresh_real)):
            return "replace"
        if self.synthetic == "all" and self.real == "all":
            return "merge"
        return None

    @property
    def needs_history(self) -> bool:
        """Does it train on rows older than the newest iteration's? If not, the pool drops them."""
        return self.real in ("all", "initial") or self.synthetic == "all"

    def select(self, index: PoolIndex, iteration: int, rngs: Sequence[np.random.Generator]) -> Selection:
        it, source = index.iteration, index.source
        if iteration == 1:
            return _as_selection(np.flatnonzero((it == 0) & (source == REAL)))
        real_rows = self._real_rows(it, source)
        if self.synthetic == "all":
            synthetic_rows = np.flatnonzero(source == SYNTHETIC)
        else:
            synthetic_rows = np.flatnonzero((source == SYNTHETIC) & (it == iteration - 1))
        if self.real_fraction is not None:
            k_real = min(len(real_rows), int(round(self.real_fraction * self.n_train)))
            k_synthetic = min(len(synthetic_rows), self.n_train - k_real)
            return np.concatenate(
                [_choose(real_rows, k_real, rngs), _choose(synthetic_rows, k_synthetic, rngs)], axis=1
            )
        if self.synthetic_ratio is not None:
            k = min(len(synthetic_rows), int(round(self.synthetic_ratio * len(real_rows))))
            synthetic_part = _choose(synthetic_rows, k, rngs)
            real_part = np.broadcast_to(real_rows, (len(rngs), len(real_rows)))
            return np.concatenate([real_part, synthetic_part], axis=1)
        # Disjoint (real vs synthetic) and each sorted, so their sorted concatenation is
        # their union; np.union1d's unique pass cost ~385 ms per call at 100k rows.
        rows = np.sort(np.concatenate([real_rows, synthetic_rows]), kind="stable")
        if self.n_train is not None and self.n_train < len(rows):
            return _choose(rows, self.n_train, rngs)
        return _as_selection(rows)

    def _real_rows(self, it: np.ndarray, source: np.ndarray) -> np.ndarray:
        is_real = source == REAL
        if self.real == "all":
            return np.flatnonzero(is_real)
        if self.real == "initial":
            return np.flatnonzero(is_real & (it == 0))
        if self.real == "latest" and is_real.any():
            return np.flatnonzero(is_real & (it == it[is_real].max()))
        return np.empty(0, dtype=np.int64)


def _as_selection(rows: np.ndarray) -> Selection:
    """A contiguous row range as a slice (a view, no copy), else the index array."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _choose(rows: np.ndarray, k: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """k of `rows` per chain, uniformly without replacement: (chains, k)."""
    if k >= len(rows):
        return np.broadcast_to(rows, (len(rngs), len(rows)))
    # Generator.choice without replacement uses Floyd's algorithm here: O(k), not O(rows).
    return np.stack([rows[rng.choice(len(rows), k, replace=False)] for rng in rngs])


# preset name -> (policy components, knobs it takes beyond the sizes)
PRESETS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "replace": ({"real": "none", "synthetic": "latest"}, ()),
    "accumulate": ({"real": "all", "synthetic": "all"}, ("n_fresh_real",)),
    "accumulate_subsample": ({"real": "all", "synthetic": "all"}, ("n_train", "n_fresh_real")),
    "fresh_data": ({"real": "latest", "synthetic": "latest"}, ("n_fresh_real",)),
    "iterative_retraining": ({"real": "initial", "synthetic": "latest"}, ("synthetic_ratio",)),
    "real_fraction": ({"real": "initial", "synthetic": "latest"}, ("n_train", "real_fraction")),
}
WORKFLOW_NAMES = tuple(PRESETS)
KNOBS = ("n_train", "synthetic_ratio", "real_fraction", "n_fresh_real")


def check_knobs(name: str, knobs: Mapping[str, Any], where: str = "workflow") -> None:
    """SpecError unless preset `name` takes every knob given a value (None and 0 mean
    unset): the one check of which knobs a workflow accepts."""
    takes = PRESETS[name][1]
    unknown = [k for k in knobs if k not in KNOBS]
    if unknown:
        raise SpecError(f"{where}: unknown knob {describe(unknown[0])}; knobs: {', '.join(KNOBS)}")
    for knob in KNOBS:
        value = knobs.get(knob)
        if value not in (None, 0) and knob not in takes:
            users = sorted(preset for preset, (_, preset_knobs) in PRESETS.items() if knob in preset_knobs)
            fail(f"{where}.{knob}", f"null unless workflow is one of {{{', '.join(users)}}}", value)


def make_workflow(name: str, **knobs) -> MixingPolicy:
    """The preset `name` with the knobs it takes (see PRESETS); None means unset."""
    check_knobs(name, knobs)
    components, _ = PRESETS[name]
    values = {k: v for k, v in knobs.items() if v is not None}
    values.setdefault("n_fresh_real", 0)
    return MixingPolicy(name=name, **components, **values)

