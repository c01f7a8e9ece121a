"""Independent small networks for a batch of chains, trained together.

Each layer's weight has a leading chain axis, (chains, in, out), so one batched matmul
evaluates every chain's network, and the summed loss gives each chain exactly its own
gradient (chains share no parameters; Adam is element-wise). A chain's randomness
(initial weights, minibatch order, noise) comes from its own torch.Generator, seeded
from its numpy generator, so a chain trains the same alone or in a batch (up to
floating-point summation order inside the batched matmul).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from collapse_ray.neural.data import MAX_SEED


def seeded_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One torch generator per chain from the chain's fixed seed (drawn once per chain in
    `real_data`): the same initialisation and noise every iteration."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def torch_generators(rngs: Sequence[np.random.Generator]) -> list[torch.Generator]:
    """One torch generator per chain, seeded from (and advancing) the chain's numpy one."""
    return seeded_generators([rng.integers(MAX_SEED) for rng in rngs])


def per_chain(make: Callable[[torch.Generator], torch.Tensor], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Stack one tensor per chain, each drawn from that chain's generator."""
    return torch.stack([make(g) for g in generators])


def standard_normal(generators: Sequence[torch.Generator], *shape: int) -> torch.Tensor:
    """(chains, *shape) standard normal noise, each chain from its own generator."""
    return per_chain(lambda g: torch.randn(*shape, generator=g), generators)


def first_chain(net: torch.nn.Module, build: Callable[[list[torch.Generator]], torch.nn.Module]) -> torch.nn.Module:
    """A one-chain network holding chain 0's weights of `net`; `build(generators)` makes an
    untrained network of the same layout (its initial weights are overwritten)."""
    first = build([torch.Generator()])
    with torch.no_grad():
        for mine, theirs in zip(first.parameters(), net.parameters(), strict=True):
            mine.copy_(theirs[:1])
    return first


class BatchedMLP(torch.nn.Module):
    """`len(generators)` MLPs with layer sizes `sizes`, SiLU between layers.

    forward: (chains, batch, sizes[0]) -> (chains, batch, sizes[-1]).
    """

    def __init__(self, sizes: Sequence[int], generators: Sequence[torch.Generator]):
        super().__init__()
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation
            self.weights.append(torch.nn.Parameter(
                per_chain(lambda g, i=fan_in, o=fan_out: (torch.rand(i, o, generator=g) * 2 - 1) * bound, generators)))
            self.biases.append(torch.nn.Parameter(
                per_chain(lambda g, o=fan_out: (torch.rand(o, generator=g) * 2 - 1) * bound, generators)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b[:, None, :], x, w)
            if i < last:
                x = torch.nn.functional.silu(x)
        return x


def train(
    parameters: Sequence[torch.nn.Parameter],
    data: torch.Tensor,
    loss: Callable[[torch.Tensor], torch.Tensor],
    generators: Sequence[torch.Generator],
    epochs: int,
    batch_size: int,
    learning_rate: float,
) -> float:
    """Adam on `loss(batch) -> (chains,)` over minibatches of `data` (chains, n, ...),
    each chain in its own shuffled order. Returns images (rows) per second."""
    import time

    optimiser = torch.optim.Adam(parameters, lr=learning_rate)
    n_chains, n = data.shape[:2]
    chains = torch.arange(n_chains)[:, None]
    start = time.perf_counter()
    for _ in range(epochs):
        order = per_chain(lambda g: torch.randperm(n, generator=g), generators)
        for i in range(0, n, batch_size):
            batch = data[chains, order[:, i : i + batch_size]]
            optimiser.zero_grad(set_to_none=True)
            loss(batch).sum().backward()
            optimiser.step()
    seconds = time.perf_counter() - start
    return epochs * n * n_chains / max(seconds, 1e-9)


def as_tensor(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
