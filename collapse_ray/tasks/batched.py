"""Numerics shared by the numpy tasks, batched over chains (leading axis)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normals(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """Standard normals, one independent block per chain from that chain's generator."""
    out = np.empty((len(rngs), *shape))
    for i, rng in enumerate(rngs):
        rng.standard_normal(out=out[i])
    return out


def cholesky(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched lower Cholesky factors and a per-chain success mask."""
    try:
        return np.linalg.cholesky(cov), np.ones(cov.shape[0], dtype=bool)
    except np.linalg.LinAlgError:  # some chain collapsed: find which, one by one
        chol = np.zeros_like(cov)
        ok = np.zeros(cov.shape[0], dtype=bool)
        for i, c in enumerate(cov):
            try:
                chol[i] = np.linalg.cholesky(c)
                ok[i] = True
            except np.linalg.LinAlgError:
                pass
        return chol, ok
