"""A sweep's folder, the one place that says where its files live:

    <out>/<sweep name>/<UTC time>/
        sweep.json              the resolved spec, the tracking store, the planned trials, the status
        chains/<job key>/       a trial's chain checkpoint (its task's files under task/)
        chains/_shared/         files the sweep's chains share (sft's value pools, fits each workflow's
                                iteration 1 makes alike); tasks are handed this folder, never derive it
        tune/                   Ray Tune's own files
        contour_search.json     an adaptive search's state
        cells.csv, figures/     the sweep's conclusion (collapse_ray.sweep.cells writes them)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SWEEP_FILE = "sweep.json"
CHAINS_FOLDER = "chains"
SHARED_FOLDER = "_shared"  # starts with "_": no job key does
TUNE_FOLDER = "tune"
SEARCH_STATE_FILE = "contour_search.json"
CELLS_TABLE = "cells.csv"  # also the sweep run's artifact of that name
FIGURES_FOLDER = "figures"


@dataclass(frozen=True)
class SweepFolder:
    path: Path

    @classmethod
    def new(cls, out_root: Path, name: str) -> SweepFolder:
        """A fresh folder for a sweep named `name` (not created yet), named by the UTC time."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        return cls((out_root / name / stamp).resolve())

    @staticmethod
    def newest_first(out_root: Path, name: str) -> list[SweepFolder]:
        """The folders of the sweeps named `name` under `out_root` that have a sweep file."""
        return [SweepFolder(path.parent.resolve())
                for path in sorted((out_root / name).glob(f"*/{SWEEP_FILE}"), reverse=True)]

    @property
    def sweep_file(self) -> Path:
        return self.path / SWEEP_FILE

    def chain(self, job_key: str) -> Path:
        """The checkpoint folder of the trial with this job key."""
        return self.path / CHAINS_FOLDER / job_key

    def chain_folders(self) -> Iterator[Path]:
        """Every chain's folder there is (not the shared one)."""
        for folder in sorted((self.path / CHAINS_FOLDER).glob("*")):
            if folder.is_dir() and not folder.name.startswith("_"):
                yield folder

    @property
    def shared(self) -> Path:
        """Files every chain of the sweep may read (PreparesSweep, SharesFits)."""
        return self.path / CHAINS_FOLDER / SHARED_FOLDER

    @property
    def tune(self) -> Path:
        return self.path / TUNE_FOLDER

    @property
    def search_state(self) -> Path:
        return self.path / SEARCH_STATE_FILE

    @property
    def cells_table(self) -> Path:
        return self.path / CELLS_TABLE

    @property
    def figures(self) -> Path:
        return self.path / FIGURES_FOLDER
