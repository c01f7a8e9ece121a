"""One chain of model-fitting iterations: its config, its resolution, and the rules that
follow from the config and the task (statistics or rows; how many rows a chain holds).

`ChainConfig` is what a spec's `chain:` block (or a caller of `loop.run_chain`) gives.
`resolved()` makes the defaults that depend on other fields explicit (what gets logged
and run). A sweep resolves each grid cell's chain once, when it reads the spec
(`spec._grid_point`); a resolved config remembers that it is resolved, and its mixing
policy once asked, and carries both wherever it travels (a pickled job too), so later
`resolved()` and `policy()` calls are look-ups, not resolutions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Literal

from collapse_ray.core.types import AdditiveStatisticsTask, Task
from collapse_ray.validation import check_min, require
from collapse_ray.core.workflows import KNOBS, PRESETS, MixingPolicy, WorkflowName, check_knobs, make_workflow

MAX_SYNTHETIC_RATIO = 1e6  # synthetic rows per real row; beyond this the row count overflows


@dataclass(frozen=True)
class ChainConfig:
    """One model-fitting chain: how much data, which workflow, how long."""

    workflow: WorkflowName = "replace"
    """Training-workflow (a mixing-policy preset, see collapse_ray/core/workflows.py)."""
    n_real: int = 100
    """Real training rows; iteration 1 fits these alone."""
    n_synthetic: int | None = None
    """Synthetic rows sampled after each fit; null means n_real, as in (A)."""
    n_train: int | None = None
    """Training-set size of accumulate_subsample and real_fraction; null means n_real, as in (A)."""
    synthetic_ratio: float | None = None
    """iterative_retraining: synthetic rows per real row (Bertrand et al.'s lambda); null means 1."""
    real_fraction: float | None = None
    """real_fraction: share of real rows in the training set; null means 0.1."""
    n_fresh_real: int | None = None
    """New real rows per iteration (fresh_data; optional for accumulate*); null means
    n_real for fresh_data, else 0."""
    n_iterations: int = 10
    """Model-fitting iterations, counting iteration 1 on real data."""
    checkpoint_every: int = 1
    """Checkpoint (and log to MLflow) every this many iterations; 0 = only at the end.
    A crashed chain resumes from its last checkpoint."""
    persist_pool: bool = False
    """Write every iteration's rows to Parquet (else only what a resume needs)."""

    def validate(self, where: str) -> None:
        if self.n_real != 0:  # 0 is for tasks that fit an empty training set, see spec._grid_point
            check_min(self.n_real, 1, f"{where}.n_real")
        check_min(self.n_iterations, 1, f"{where}.n_iterations")
        check_min(self.checkpoint_every, 0, f"{where}.checkpoint_every")
        for name in ("n_synthetic", "n_train"):
            value = getattr(self, name)
            if value is not None:  # a cell with no real rows resolves n_synthetic to 0
                check_min(value, 0 if (name == "n_synthetic" and self.n_real == 0) else 1, f"{where}.{name}")
        if self.n_fresh_real is not None:
            check_min(self.n_fresh_real, 0, f"{where}.n_fresh_real")
        if self.synthetic_ratio is not None:
            require(math.isfinite(self.synthetic_ratio) and 0 <= self.synthetic_ratio <= MAX_SYNTHETIC_RATIO,
                    f"{where}.synthetic_ratio", f"a number in [0, {MAX_SYNTHETIC_RATIO:g}]", self.synthetic_ratio)
        if self.real_fraction is not None:
            require(0 <= self.real_fraction <= 1, f"{where}.real_fraction", "a number in [0, 1]", self.real_fraction)
        check_knobs(self.workflow, {knob: getattr(self, knob) for knob in KNOBS}, where)

    def resolved(self) -> ChainConfig:
        """Defaults that depend on other fields made explicit (this is what gets logged)."""
        return self._resolution

    def policy(self) -> MixingPolicy:
        """The workflow preset with this chain's knobs, made once per resolved chain."""
        return self._resolution._policy

    def checkpoints_at(self, iteration: int) -> bool:
        if iteration == self.n_iterations:
            return True
        return self.checkpoint_every > 0 and iteration % self.checkpoint_every == 0

    # Memoised in the instance's __dict__ (frozen dataclasses allow it; fields, equality
    # and hashing do not see it, pickling carries it): derived data, not configuration.
    @functools.cached_property
    def _resolution(self) -> ChainConfig:
        resolution = _resolve(self)
        resolution.__dict__["_resolution"] = resolution  # resolving a resolved chain changes nothing
        return resolution

    @functools.cached_property
    def _policy(self) -> MixingPolicy:
        return make_workflow(self.workflow, **{k: getattr(self, k) for k in KNOBS})


def _resolve(chain: ChainConfig) -> ChainConfig:
    """The resolution proper (tests count its calls)."""
    takes = PRESETS[chain.workflow][1]

    def knob(name, default):
        if name not in takes:
            return None
        value = getattr(chain, name)
        return default if value is None else value

    return dataclasses.replace(
        chain,
        n_synthetic=chain.n_synthetic if chain.n_synthetic is not None else chain.n_real,
        n_train=knob("n_train", chain.n_real),
        synthetic_ratio=knob("synthetic_ratio", 1.0),
        real_fraction=knob("real_fraction", 0.1),
        n_fresh_real=knob("n_fresh_real", chain.n_real if chain.workflow == "fresh_data" else 0),
    )


def uses_statistics(workflow: MixingPolicy, task: Task) -> bool:
    """Can the chain carry the training set's statistics instead of its rows?"""
    return workflow.update is not None and isinstance(task, AdditiveStatisticsTask)


def max_rows_held(workflow: MixingPolicy, task: Task, n_real: int, n_synthetic: int, n_iterations: int) -> int:
    """Most pool rows a chain holds in memory at once (sizes seed batches)."""
    per_iteration = n_synthetic + workflow.n_fresh_real
    if workflow.needs_history and not uses_statistics(workflow, task):
        return n_real + per_iteration * (n_iterations - 1)
    return n_real + per_iteration


def rows_held(task: Task, chain: ChainConfig) -> int:
    """max_rows_held for a (resolved) chain of `task`."""
    return max_rows_held(chain.policy(), task, chain.n_real, chain.n_synthetic, chain.n_iterations)


@dataclass(frozen=True)
class ExecutionConfig:
    """How the sweep runs on Ray (the `run:` block). Does not change results."""

    seeds_per_trial: int | Literal["auto"] = "auto"
    """Seeds (chains) carried by one Ray Tune trial. auto: as many as fit in
    memory_per_trial_gb for tasks that batch chains, one for those that don't."""
    memory_per_trial_gb: float = 1.0
    """Pool memory budget of one trial, used by seeds_per_trial: auto."""
    cpus_per_trial: float = 1.0
    """CPUs Ray reserves for each trial."""
    max_concurrent_trials: int = 0
    """0 = as many as the cluster's CPUs allow."""
    max_failures: int = 2
    """Times a failed trial is retried (it resumes from its last checkpoint)."""

    def validate(self, where: str) -> None:
        if self.seeds_per_trial != "auto":
            check_min(self.seeds_per_trial, 1, f"{where}.seeds_per_trial")
        require(
            math.isfinite(self.memory_per_trial_gb) and self.memory_per_trial_gb > 0,
            f"{where}.memory_per_trial_gb", "a number in (0, inf)", self.memory_per_trial_gb,
        )
        require(
            math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0,
            f"{where}.cpus_per_trial", "a number in (0, inf)", self.cpus_per_trial,
        )
        check_min(self.max_concurrent_trials, 0, f"{where}.max_concurrent_trials")
        check_min(self.max_failures, 0, f"{where}.max_failures")
