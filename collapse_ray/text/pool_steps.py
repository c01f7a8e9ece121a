"""The language-model tasks' steps on a pool that lives on disk (loop.PoolOnDiskTask).

The trial process that runs the chain loop holds the pool's blocks, never its rows:
- real rows: loaded (and the tokenizer trained on them) in a Ray task, which writes
  them into the pool's iteration-0 shard and returns only the held-out examples and
  the chain's context;
- fits: a `PoolSelection` handle becomes a Ray Data read of the shards it names,
  tokenized by Ray Data and streamed by the Ray Train workers (backends.fit_ray_train_texts);
- samples: a Ray task drives Ray Data batch inference and streams the samples into
  the iteration's shard as they come (shards.ShardWriter: hidden file, then rename);
  the loop then records the shard and its sha256 in the pool manifest.
With the in-process backends (`backend: local`, `sampler: local`, debugging) the same
steps run in this process on the same files, and give the rows-path results exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from collapse_ray.core.disk_pool import PoolSelection
from collapse_ray.core.shards import ShardTarget, ShardWriter
from collapse_ray.text.readers import selection_dataset_of
from collapse_ray.core.types import RealData
from collapse_ray.text import backends
from collapse_ray.text.settings import LanguageModelSettings, placement
from collapse_ray.text.steps import (FittedLM, TextContext, fit_key, fit_settings_for, fit_texts, fits_folder, initial_fit,
                    publish_fit, stored_fit)

TEXT = ("text",)


def off_trial(placement: backends.Placement, fn: Callable, *args) -> Any:
    """fn(*args) in a Ray task, so whatever it holds (rows, samples) is never in this
    process; in this process when nothing of the task runs on Ray. The Ray task asks for
    no CPU: like the trial, it drives work that holds the CPUs (actors, workers)."""
    if placement.backend == "local" and placement.sampler == "local":
        return fn(*args)
    import ray

    return ray.get(ray.remote(num_cpus=0)(fn).remote(*args))


def real_data_on_disk(task, n_real: int, rngs: Sequence[np.random.Generator], target: ShardTarget | None) -> RealData:
    """`task.real_data` off the trial; its rows go into `target`, only the held-out
    examples and the context come back."""
    return off_trial(placement(task), _real_rows_into, task, n_real, rngs, target)


def _real_rows_into(task, n_real: int, rngs, target: ShardTarget | None) -> RealData:
    real = task.real_data(n_real, rngs)
    if target is not None:
        with ShardWriter(target, TEXT) as shard:
            shard.write({"text": real.train["text"][0]})
    return RealData(train={}, test=real.test, context=real.context)


def fit_on_disk(settings: LanguageModelSettings, workdir: Path, selection: PoolSelection,
                context: TextContext) -> FittedLM:
    """Fit on the selected rows. In-process backend: read here in the selection's order,
    then fit_texts (the rows path's fit, bit for bit). Ray Train: the workers stream the
    rows; the fit is stored under a key of the selection's content (PoolSelection.digest:
    shard sha256s, whole shards' row ranges, a subsample's row ids), so a resumed
    iteration, or another chain whose selection holds the same rows, finds it again."""
    if settings.backend == "local" or len(selection) == 0:
        return fit_texts(settings, workdir, selection.read(TEXT)["text"] if len(selection) else [], context)
    key = fit_key(settings, "pool:" + selection.digest(), context)
    out = fits_folder(settings, workdir) / key
    if (stored := stored_fit(out)) is not None:
        return FittedLM(str(out), context.tokenizer_dir, stored)

    def fit_into(folder: Path) -> dict | None:
        fit_settings = fit_settings_for(settings, context, folder, key, None)
        start = time.perf_counter()
        figures = backends.fit_ray_train_texts(fit_settings, selection_dataset_of(selection, TEXT), placement(settings),
                                               settings.max_length, settings.long_rows == "drop", context.held_out)
        if not figures.get("train_examples"):  # every row dropped as too long: nothing fitted
            return None
        return {**figures, "fit_seconds": time.perf_counter() - start}

    figures = publish_fit(out, fit_into, Path(workdir))
    if figures is None:  # every row dropped: the initial model
        from collapse_ray.text.models import load_tokenizer

        return initial_fit(settings, load_tokenizer(context.tokenizer_dir), context, out, Path(workdir))
    return FittedLM(str(out), context.tokenizer_dir, figures)


def sample_on_disk(placement: backends.Placement, batches: Callable[[], Iterable[list[str]]],
                   target: ShardTarget) -> None:
    """Write the texts `batches()` yields into `target`, batch by batch, off the trial."""
    off_trial(placement, _write_batches, batches, target)


def _write_batches(batches: Callable[[], Iterable[list[str]]], target: ShardTarget) -> int:
    with ShardWriter(target, TEXT) as shard:
        for texts in batches():
            shard.write({"text": texts})
    return shard.rows
