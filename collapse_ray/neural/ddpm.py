"""DDPM (Ho et al. 2020) as the diffusion tasks share it (tasks/diffusion.py on points and
digits, tasks/conformer_diffusion.py on molecules): the linear beta schedule and its
per-step constants, the sinusoidal timestep embedding, noising, the draws fixed per chain
for the held-out loss, the training draws, and ancestral sampling with DDPM's
sigma_t^2 = beta_t. The tasks supply the data, the network and what a row's shape is.

torch is imported where it is used: `check_schedule` and `fixed_draws` run without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from collapse_ray.validation import check_min, require
from collapse_ray.neural.data import MAX_SEED

if TYPE_CHECKING:
    import torch

TIME_FEATURES = 32  # width of the sinusoidal timestep embedding


def check_schedule(n_steps: int, beta_start: float, beta_end: float, where: str) -> None:
    """The linear schedule's fields: T >= 2 and 0 < beta_start <= beta_end < 1."""
    check_min(n_steps, 2, f"{where}.n_steps")
    require(0 < beta_start < 1, f"{where}.beta_start", "a number in (0, 1)", beta_start)
    require(beta_start <= beta_end < 1, f"{where}.beta_end",
            f"a number in [beta_start, 1) = [{beta_start:g}, 1)", beta_end)


@dataclass(frozen=True)
class Schedule:
    """DDPM's per-step constants as float32 tensors indexed by t = 0 .. T-1."""

    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    post_x0: torch.Tensor  # posterior mean of x_{t-1} = post_x0 * x_0 + post_xt * x_t
    post_xt: torch.Tensor
    sigma: torch.Tensor  # sampling noise sqrt(beta_t)
    embedding: torch.Tensor  # (T, TIME_FEATURES)


@lru_cache(maxsize=8)
def schedule(n_steps: int, beta_start: float, beta_end: float) -> Schedule:
    import torch

    beta = np.linspace(beta_start, beta_end, n_steps)  # float64 until the end
    alpha = 1 - beta
    alpha_bar = np.cumprod(alpha)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    half = TIME_FEATURES // 2
    angles = np.arange(n_steps)[:, None] * np.exp(-math.log(10_000) * np.arange(half) / half)[None, :]

    def f32(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return Schedule(
        sqrt_alpha_bar=f32(np.sqrt(alpha_bar)),
        sqrt_one_minus_alpha_bar=f32(np.sqrt(1 - alpha_bar)),
        post_x0=f32(beta * np.sqrt(alpha_bar_prev) / (1 - alpha_bar)),
        post_xt=f32((1 - alpha_bar_prev) * np.sqrt(alpha) / (1 - alpha_bar)),
        sigma=f32(np.sqrt(beta)),
        embedding=f32(np.concatenate([np.sin(angles), np.cos(angles)], axis=1)),
    )


def noised(s: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a_bar_t) x_0 + sqrt(1 - a_bar_t) eps, for t (chains, k) and x0, eps
    (chains, k, ...): the row's coefficient broadcast over its trailing axes."""
    trailing = (..., *[None] * (x0.dim() - t.dim()))
    return s.sqrt_alpha_bar[t][trailing] * x0 + s.sqrt_one_minus_alpha_bar[t][trailing] * eps


def fixed_draws(rngs: Sequence[np.random.Generator], n_draws: int, n_steps: int, shape: tuple[int, ...]):
    """What stays fixed for a chain's lifetime, each from the chain's own data generator:
    n_draws (timestep, noise) pairs of the held-out loss, t (chains, n_draws) int64 and
    noise (chains, n_draws, *shape) float32, and two seeds per chain, (init, quality):
    initial weights, minibatch order and training noise; the quality samples' noise."""
    t = np.stack([rng.integers(0, n_steps, n_draws) for rng in rngs])
    noise = np.stack([rng.standard_normal((n_draws, *shape), dtype=np.float32) for rng in rngs])
    seeds = np.stack([rng.integers(MAX_SEED, size=2) for rng in rngs])
    return t, noise, seeds[:, 0], seeds[:, 1]


def training_draws(generators: Sequence[torch.Generator], n_steps: int, k: int, shape: tuple[int, ...]):
    """A training step's k timesteps (chains, k) and noises (chains, k, *shape) per chain."""
    import torch

    from collapse_ray.neural.batched import per_chain, standard_normal

    t = per_chain(lambda g: torch.randint(0, n_steps, (k,), generator=g), generators)
    return t, standard_normal(generators, k, *shape)


def ancestral(
    s: Schedule,
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: Callable[[], torch.Tensor],
    clip: bool = False,
) -> torch.Tensor:
    """DDPM ancestral sampling for every chain at once, from x_T = noise() down to x_0:
    predict(x_t, emb(t)) is the noise predictor, noise() one draw of the sampling noise
    (chains, n, ...); clip keeps the predicted x_0 in [-1, 1] (data that live there)."""
    import torch

    with torch.no_grad():
        x = noise()
        for t in range(len(s.sigma) - 1, -1, -1):
            eps = predict(x, s.embedding[t])
            x0 = (x - s.sqrt_one_minus_alpha_bar[t] * eps) / s.sqrt_alpha_bar[t]
            if clip:
                x0 = x0.clamp(-1, 1)
            x = s.post_x0[t] * x0 + s.post_xt[t] * x
            if t > 0:
                x = x + s.sigma[t] * noise()
    return x
