"""Where a language-model task's fits and samples run, and the Ray Data context every
stage that runs them shares: what settings.py, backends.py and vllm_sampler.py all need,
kept below them so that none of them imports another for it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    """Where fits and samples run (the task's backend fields)."""

    backend: str  # ray_train | local
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    sampler: str  # ray_data | local | vllm
    sampling_concurrency: int


def quiet_ray_data() -> None:
    """No progress bars from Ray Data: the sweep prints its own progress."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
