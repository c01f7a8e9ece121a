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
layout) or an int array (chains, k), one row set per chain. For a pool on disk,
`select_blocks` makes the same selection from the pool's (iteration, source) blocks
(PoolBlocks) without a per-row array: per chain a BlockSelection (blocks taken whole,
and a subsample's drawn rows), by the same rule (`parts`) and the same random draws.

Which knobs a preset accepts is checked here only (`check_knobs`, a SpecError); the
chain config (collapse_ray/core/chain.py) asks this module, as does `make_workflow`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from collapse_ray.validation import SpecError, describe, fail

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

    def parts(self, iteration_of: np.ndarray, source: np.ndarray, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """The one eligibility rule: which entries are in the real part and which in the
        synthetic part of iteration `iteration`'s training set (two bool masks), from each
        entry's iteration of origin and source. Entries are rows (select) or whole
        (iteration, source) blocks (select_blocks) alike: every rule is per (iteration,
        source), and real="latest"'s newest real iteration is the same over either."""
        it, source = np.asarray(iteration_of), np.asarray(source)
        is_real = source == REAL
        if iteration == 1:  # the real rows of origin 0 alone
            return is_real & (it == 0), np.zeros(len(it), dtype=bool)
        if self.real == "all":
            real = is_real
        elif self.real == "initial":
            real = is_real & (it == 0)
        elif self.real == "latest" and is_real.any():
            real = is_real & (it == it[is_real].max())
        else:
            real = np.zeros(len(it), dtype=bool)
        synthetic = source == SYNTHETIC
        if self.synthetic != "all":
            synthetic = synthetic & (it == iteration - 1)
        return real, synthetic

    @property
    def draws_per_part(self) -> bool:
        """Are the parts sized and drawn each on its own (real_fraction, synthetic_ratio)? Then
        a training set is its real part's rows, then its synthetic part's; else their union,
        in pool order (n_train: a subsample of it)."""
        return self.real_fraction is not None or self.synthetic_ratio is not None

    def training_size(self, n_real: int, n_synthetic: int, iteration: int) -> TrainingSize:
        """The one size rule: how many rows iteration `iteration`'s training set takes from
        a real part of n_real eligible rows and a synthetic part of n_synthetic (`parts`).
        Iteration 1, and policies without a size knob, take both parts whole."""
        if iteration > 1 and self.real_fraction is not None:
            k_real = min(n_real, int(round(self.real_fraction * self.n_train)))
            return TrainingSize(k_real, min(n_synthetic, self.n_train - k_real))
        if iteration > 1 and self.synthetic_ratio is not None:
            return TrainingSize(n_real, min(n_synthetic, int(round(self.synthetic_ratio * n_real))))
        if iteration > 1 and self.n_train is not None and self.n_train < n_real + n_synthetic:
            return TrainingSize(n_real, n_synthetic, subsample=self.n_train)
        return TrainingSize(n_real, n_synthetic)

    def select(self, index: PoolIndex, iteration: int, rngs: Sequence[np.random.Generator]) -> Selection:
        """Per row: the in-memory pool's selection (a slice, or row positions per chain)."""
        real, synthetic = self.parts(index.iteration, index.source, iteration)
        if iteration == 1:
            return _as_selection(np.flatnonzero(real))
        real_rows, synthetic_rows = np.flatnonzero(real), np.flatnonzero(synthetic)
        size = self.training_size(len(real_rows), len(synthetic_rows), iteration)
        if self.draws_per_part:  # (a part taken whole is no draw: _choose leaves the rngs alone)
            return np.concatenate(
                [_choose(real_rows, size.real, rngs), _choose(synthetic_rows, size.synthetic, rngs)], axis=1
            )
        # The parts are disjoint, so their union in index order is one flatnonzero (the
        # sorted concatenation it replaces; np.union1d's unique pass cost ~385 ms at 100k rows).
        rows = np.flatnonzero(real | synthetic)
        if size.subsample is not None:
            return _choose(rows, size.subsample, rngs)
        return _as_selection(rows)

    def select_blocks(self, blocks: PoolBlocks, iteration: int,
                      rngs: Sequence[np.random.Generator]) -> list[BlockSelection]:
        """Per block: what `select` selects on the rows these blocks hold, one
        BlockSelection per chain, without a per-row array: eligible blocks are taken
        whole, and a subsample makes `select`'s very draws (the same calls on each rng,
        over the eligible rows in the same order) and maps each drawn row to its block.
        Memory: O(blocks + n_train per chain), whatever the pool's size."""
        sizes = np.asarray(blocks.rows, dtype=np.int64)
        held = np.flatnonzero(sizes > 0)  # (an empty block has no row for the per-row rule to see)
        real, synthetic = self.parts(np.asarray(blocks.iteration)[held], np.asarray(blocks.source)[held], iteration)
        real_blocks, synthetic_blocks = held[real], held[synthetic]
        n_real, n_synthetic = int(sizes[real_blocks].sum()), int(sizes[synthetic_blocks].sum())
        if iteration == 1:
            return [BlockSelection(sizes, ((real_blocks, None),)) for _ in rngs]
        size = self.training_size(n_real, n_synthetic, iteration)
        if self.draws_per_part:
            real_parts = _choose_blocks(real_blocks, sizes, size.real, rngs)
            synthetic_parts = _choose_blocks(synthetic_blocks, sizes, size.synthetic, rngs)
            return [BlockSelection(sizes, (r, s)) for r, s in zip(real_parts, synthetic_parts)]
        union = np.sort(np.concatenate([real_blocks, synthetic_blocks]))  # blocks in index order
        if size.subsample is not None:
            return [BlockSelection(sizes, (p,)) for p in _choose_blocks(union, sizes, size.subsample, rngs)]
        return [BlockSelection(sizes, ((union, None),)) for _ in rngs]


@dataclass(frozen=True)
class TrainingSize:
    """A training set's size by part (MixingPolicy.training_size): `real` rows of the real
    part and `synthetic` of the synthetic part, or, with `subsample`, that many rows drawn
    from the union of both whole parts (not stratified: the split between them is random)."""

    real: int
    synthetic: int
    subsample: int | None = None


@dataclass(frozen=True)
class PoolBlocks:
    """The pool as its (iteration, source) blocks, in index order (the per-row index is
    each block's iteration and source repeated `rows` times): what select_blocks reads."""

    iteration: np.ndarray  # (blocks,) int
    source: np.ndarray  # (blocks,) int8: REAL or SYNTHETIC
    rows: np.ndarray  # (blocks,) int: rows per chain

    def index(self) -> PoolIndex:
        """The per-row index these blocks stand for (O(rows): for tests and small pools)."""
        return PoolIndex(iteration=np.repeat(np.asarray(self.iteration, np.int64), self.rows),
                         source=np.repeat(np.asarray(self.source, np.int8), self.rows))


@dataclass(frozen=True, eq=False)
class BlockSelection:
    """One chain's selected rows of a pool of blocks (PoolBlocks), in the order the
    per-row selection lists them: `parts` in turn, each (block numbers, offsets):
    offsets None takes those blocks whole, in order; else one row per entry, row
    `offsets[i]` (0-based within its block) of block `blocks[i]` (a subsample's draw)."""

    sizes: np.ndarray  # rows per chain of every block of the pool
    parts: tuple[tuple[np.ndarray, np.ndarray | None], ...]

    def __len__(self) -> int:
        return sum(int(self.sizes[b].sum()) if offsets is None else len(offsets) for b, offsets in self.parts)

    def by_block(self) -> dict[int, np.ndarray | None]:
        """Block number -> None (taken whole) or the sorted offsets of its selected rows,
        in block order; a block whose every row was drawn counts as whole."""
        out: dict[int, np.ndarray | None] = {}
        for blocks, offsets in self.parts:
            if offsets is None:
                out.update((int(b), None) for b in blocks)
                continue
            order = np.lexsort((offsets, blocks))
            blocks, offsets = np.asarray(blocks)[order], np.asarray(offsets, dtype=np.int64)[order]
            starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]]) if len(blocks) else []
            for lo, hi in zip(starts, [*starts[1:], len(blocks)]):
                b = int(blocks[lo])
                out[b] = None if hi - lo == self.sizes[b] else offsets[lo:hi]
        return dict(sorted(out.items()))

    def positions(self) -> np.ndarray:
        """The selected rows as positions in the per-row index, in selection order (O(rows)
        for whole blocks: for tests and small pools)."""
        starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        out = [np.concatenate([np.arange(starts[b], starts[b] + self.sizes[b]) for b in blocks] or
                              [np.empty(0, np.int64)]) if offsets is None else starts[blocks] + offsets
               for blocks, offsets in self.parts]
        return np.concatenate(out or [np.empty(0, np.int64)]).astype(np.int64)


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


def _choose_blocks(blocks: np.ndarray, sizes: np.ndarray, k: int,
                   rngs: Sequence[np.random.Generator]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """_choose on the rows of `blocks` (in this order) without listing them: per chain
    (blocks, None) for all of them, or the k drawn rows as (block, offset) pairs. The
    same calls on each rng as _choose, so the same rows in the same order."""
    counts = sizes[blocks]
    total = int(counts.sum())
    if k >= total:
        return [(blocks, None) for _ in rngs]
    ends = np.cumsum(counts)
    out = []
    for rng in rngs:
        drawn = rng.choice(total, k, replace=False)
        at = np.searchsorted(ends, drawn, side="right")
        out.append((blocks[at], (drawn - (ends[at] - counts[at])).astype(np.int64)))
    return out


# preset name -> (policy components, knobs it takes beyond the sizes): the one place the
# workflow names are spelled; WORKFLOW_NAMES and the WorkflowName type follow from it
PRESETS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "replace": ({"real": "none", "synthetic": "latest"}, ()),
    "accumulate": ({"real": "all", "synthetic": "all"}, ("n_fresh_real",)),
    "accumulate_subsample": ({"real": "all", "synthetic": "all"}, ("n_train", "n_fresh_real")),
    "fresh_data": ({"real": "latest", "synthetic": "latest"}, ("n_fresh_real",)),
    "iterative_retraining": ({"real": "initial", "synthetic": "latest"}, ("synthetic_ratio",)),
    "real_fraction": ({"real": "initial", "synthetic": "latest"}, ("n_train", "real_fraction")),
}
WORKFLOW_NAMES = tuple(PRESETS)
# The names as a type (ChainConfig.workflow: a spec's value is checked against its
# arguments). Made from the tuple at run time, so a static type checker sees no names.
WorkflowName = Literal[WORKFLOW_NAMES]
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

