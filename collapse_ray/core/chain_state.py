"""A chain's checkpoint: the state the loop carries between iterations, as a chain folder
holds it (checkpoint.json naming its state-*.npz, in the data-only format of checkpoint.py).

The JSON document also lists the pool shards the state depends on ("pool", the commit
point's manifest) and two flags: "ended", the chain finished (its cap, or every chain
stopped), and "continues", it finished and can run on to more iterations exactly as a
longer chain would (see run_chain).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from collapse_ray.core import checkpoint as checkpoint_format
from collapse_ray.core.shards import check_manifest, check_shards
from collapse_ray.core.types import Metrics

CHECKPOINT_FILE = "checkpoint.json"  # plus the state-*.npz it names: data only (checkpoint.py)


@dataclass
class ChainState:
    """What a resume needs beyond the pool (checkpoint.RENAMED maps its earlier names here)."""

    iteration: int  # last finished iteration
    rngs: list[np.random.Generator]
    stats: Any  # statistics of the next training set on the statistics path, else None
    records: list[tuple[int, Metrics]]
    stopped_at: np.ndarray | None = None  # int per chain: iteration it stopped at, 0 while running; None: no stopping rule

    def finished(self, n_iterations: int) -> bool:
        return self.iteration >= n_iterations or (self.stopped_at is not None and bool((self.stopped_at > 0).all()))


@dataclass(frozen=True)
class Checkpoint:
    state: ChainState
    manifest: list[dict]  # the pool shards it depends on
    ended: bool
    continues: bool


def load_checkpoint(ckpt: Path | None) -> Checkpoint | None:
    """The chain folder's checkpoint, checked whole (ValueError naming the file); None if it has none."""
    if ckpt is None or not (ckpt / CHECKPOINT_FILE).exists():
        for legacy in ckpt.glob("checkpoint.pkl") if ckpt is not None else ():
            raise ValueError(f"{legacy} is a pickle, which collapse_ray no longer reads (unpickling a file "
                             f"can run code); start the sweep afresh")
        return None
    try:
        state, document = checkpoint_format.load(ckpt / CHECKPOINT_FILE)
    except checkpoint_format.CheckpointFormatError as err:
        raise ValueError(f"{ckpt / CHECKPOINT_FILE} is not a readable chain checkpoint: {err}") from None
    manifest = document.get("pool")
    if not isinstance(state, ChainState) or not isinstance(manifest, list):
        raise ValueError(f"{ckpt / CHECKPOINT_FILE} is not a chain checkpoint (holds {type(state).__name__})")
    return Checkpoint(state, manifest, bool(document.get("ended", False)), bool(document.get("continues", False)))


def save_checkpoint(ckpt: Path, state: ChainState, manifest: list[dict], ended: bool, continues: bool) -> None:
    """Arrays first, then the JSON naming them and the pool's shards (the commit point)."""
    document = {"pool": manifest, "ended": ended, "continues": continues}
    try:
        checkpoint_format.save(ckpt, CHECKPOINT_FILE, state, document, tag=f"{state.iteration}-{os.getpid()}")
    except TypeError as err:  # a field of a type the data-only format does not hold
        raise TypeError(f"chain state cannot be checkpointed: {err}") from None


def load_state(ckpt: Path) -> ChainState | None:
    checkpoint = load_checkpoint(ckpt)
    return checkpoint.state if checkpoint is not None else None


def is_finished(checkpoint_dir: str | Path, n_iterations: int) -> bool:
    state = load_state(Path(checkpoint_dir))
    return state is not None and state.finished(n_iterations)


def checkpoint_continues(checkpoint_dir: str | Path) -> bool:
    """Whether a finished chain's checkpoint can run on to more iterations exactly (a
    statistics-path chain's, or one with chain.persist_pool: see run_chain); others rerun
    from iteration 1 when lengthened."""
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    if not path.exists():
        return False
    try:  # the JSON only: load_checkpoint checks the whole checkpoint (and names the file)
        document = checkpoint_format.read_json(path, checkpoint_format.MAX_JSON_BYTES)
    except (checkpoint_format.CheckpointFormatError, ValueError, OSError):
        return False
    return isinstance(document, dict) and bool(document.get("continues", False))


def check_checkpoint(checkpoint_dir: str | Path, seeds: Sequence[int]) -> None:
    """Raise ValueError naming the file if a chain folder cannot be resumed from exactly:
    an unreadable checkpoint, another number of chains, a pool shard that is missing,
    altered, corrupt or foreign."""
    ckpt = Path(checkpoint_dir)
    checkpoint = load_checkpoint(ckpt)
    if checkpoint is not None and len(checkpoint.state.rngs) != len(seeds):
        raise ValueError(f"{ckpt / CHECKPOINT_FILE} holds {len(checkpoint.state.rngs)} chains, expected {len(seeds)}")
    if (ckpt / "pool").exists():
        check_shards(ckpt / "pool", seeds)
    if checkpoint is not None and checkpoint.manifest:
        check_manifest(ckpt / "pool", checkpoint.manifest)
