"""The task protocol: what the chain loop needs from a task setting.

A task is a frozen, validated config that also knows how to draw its real data, fit a
model to a training set, sample synthetic rows from a fitted model and evaluate a fitted
model on held-out real data.

Everything is *batched over chains*: a training set is a mapping of column name to an
array whose first axis is the chain (one chain per seed), so cheap numpy tasks run a
hundred seeds in one vectorised call. Expensive tasks (language models) set
`batched = False` and always see exactly one chain. Randomness comes in as one
`numpy.random.Generator` per chain; a chain's results therefore do not depend on which
other chains share its batch. Tasks never import Ray.

How the language models fit the same protocol (tasks/pretraining.py, tasks/sft.py):
they are unbatched (one chain per trial) and their rows are a `text` column. `fit`
hands the selected texts to a backend in `collapse_ray.text.backends` (Ray Train's
TorchTrainer driving DeepSpeed, or in-process) and returns a saved model folder;
`sample` is batch inference over that folder (Ray Data actors, or in-process);
`evaluate` is cross-entropy on the held-out real split. The loop, workflows and
checkpoint/resume logic are the same as for every other task.

Optional hooks a task may define (looked up with getattr, so most tasks ignore them):
  with_workdir(path) -> Task     the loop gives tasks that keep files (tokenizers,
                                 fitted models) the chain's checkpoint folder
  check_chain(chain, where)      task-specific rules on the chain config (SpecError)
  check_run(run, where)          task-specific rules on the `run:` block (SpecError)
  check_cluster(run, cpus, where)  one chain must fit the cluster's CPUs (SpecError)
  fits_empty_training_set        class flag: chain.n_real = 0 is meaningful (value grids)
  iteration_artifacts(model, context) -> {file name: bytes}
                                 pictures of an iteration's model (e.g. samples.png of the
                                 batch's first chain); sweeps log them to the chain's MLflow
                                 run under samples/iteration_TTT/
  stop_condition(metrics) -> bool array (chains,) or None
                                 a chain stops at the first iteration where it holds
                                 (chain.n_iterations is the cap; None: never); needs
  take_chains(stats, test, context, index) -> (stats, test, context)
                                 the same for the chains at positions `index` only (stats
                                 is None on the rows path): the loop drops stopped chains
                                 from the batch with it (discrete: collapse to one outcome)
  records_iteration(t) -> bool   keep iteration t's metrics (a subset for long chains;
                                 stopping iterations and the last are always kept)
  iteration_series(model) -> {name: [(step, value), ...]}
                                 a curve inside iteration t's fit (language models: the
                                 held-out loss against optimiser step); sweeps log it to
                                 the chain's MLflow run as metric name/iteration_TTT
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

Rows = Mapping[str, np.ndarray]
"""Column name -> array of shape (n_chains, n_rows, ...)."""

Metrics = dict[str, np.ndarray]
"""Metric name -> array of shape (n_chains,). Always contains 'test_loss'."""


@dataclass(frozen=True)
class RealData:
    """A task's real data for a batch of chains."""

    train: Rows  # (n_chains, n_real, ...): iteration 1 fits these
    test: Any  # held-out real data, in whatever form `evaluate` wants
    context: Any = None
    """Fixed per-chain facts that fitting and sampling need: linear regression's design
    (rows are design-row indices with labels; synthetic labels are drawn on the same
    inputs), blobs' centres for fresh real rows, later the prompts of conditional tasks."""


@runtime_checkable
class Task(Protocol):
    name: ClassVar[str]
    batched: ClassVar[bool]  # may several chains share one call?

    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData: ...

    def fit(self, train: Rows, context: Any = None) -> Any: ...

    def sample(self, model: Any, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Rows: ...

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Rows:
        """n fresh real rows (for workflows that receive new real data every iteration)."""
        ...

    def evaluate(self, model: Any, test: Any) -> Metrics: ...

    def row_nbytes(self) -> int:
        """Bytes one pool row takes in memory (sizes seed batches)."""
        ...


@runtime_checkable
class AdditiveStatisticsTask(Task, Protocol):
    """A task whose fit depends on the training set only through additive statistics.

    For workflows whose next training set is the newest rows alone (replace) or the
    previous training set plus them (accumulate), the loop then keeps statistics
    instead of rows: it merges rather than refits (a cost flat in the iteration index),
    and draws the statistics of the new synthetic rows directly where the task can.
    """

    def statistics(self, rows: Rows, context: Any = None) -> Any: ...

    def merge(self, a: Any, b: Any) -> Any: ...

    def fit_statistics(self, stats: Any) -> Any: ...

    def sample_statistics(self, model: Any, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Any:
        """Statistics of n rows sampled from `model`, equal in distribution to
        `statistics(sample(model, n, rngs, context), context)`."""
        ...
