"""A small denoising diffusion model ("diffusion"), trained from scratch each iteration.

Real data (`source`): scikit-learn's 8x8 digits (column `image`, float32 (chains, n, 8, 8) in
[0, 1]; n_real training images drawn without replacement from the fixed training split),
or its moons (2-D) / swiss roll (3-D) point sets (column `x`, float32 (chains, n, d),
about unit variance); see collapse_ray/neural/data.py.

A fit is DDPM (Ho et al. 2020): a linear beta schedule from `beta_start` to `beta_end`
over `n_steps` steps and an MLP noise predictor eps(x_t, t) (three hidden layers of
`hidden` units) trained on the epsilon-prediction MSE with Adam, from scratch each
iteration as (B). The network sees [x_t, emb(t)], emb a sinusoidal embedding of t; for
the point sets also sin/cos features of x_t (Fourier features: an MLP on raw 2-D
coordinates learns the moons' thin arcs only after many more steps). The schedule,
noising and sampler are neural/ddpm.py's, shared with conformer_diffusion. Each training row
gets `n_train_noise` (timestep, noise) draws per step, which lowers the variance of the
loss at little cost for networks this small. Digits are rescaled to [-1, 1] for the model.

Synthetic rows are ancestral samples: the posterior mean from the predicted x_0 (for
digits clipped to [-1, 1] at each step, as DDPM's code does; samples come back in
[0, 1]) plus N(0, beta_t) noise (DDPM's sigma_t^2 = beta_t). Given the exact denoiser of
a Gaussian with standard deviation 0.5 (0.1), this sampler returns its variance +2%
(+8%) off with the default schedule and +2% (+18%) at T = 100; DDPM's other choice,
beta~_t, shrinks it by 4% (18%) and 10% (30%), a bias replace would compound into
collapse by itself.

Metrics per chain:
  test_loss        denoising MSE per coordinate on `n_test` held-out real rows, averaged
                   over `n_eval_noise` (timestep, noise) draws per row that are fixed for
                   the chain, so iterations compare on the same draws
  mmd              squared kernel MMD between `n_quality` samples (from a generator fixed
                   per chain) and the held-out rows; the kernel is the mean of Gaussians of
                   widths h, h/2, h/4, h the median distance of a fixed real sample (one h
                   per data set): width h alone sees little beyond the mean and covariance
                   of 2-D points (a standard normal scores like a trained model on moons)
  classifier_confidence, class_entropy   (digits) quality.digit_scores of those samples
  train_rows_per_s fit throughput (all chains of the batch together)

Randomness: everything fixed for a chain (held-out rows, evaluation draws, the seed of
its initial weights, minibatch order and training noise, the seed of its quality
samples) is drawn in `real_data` from the chain's data generator; sampling noise comes
from the chain's generator. A chain's numbers do not depend on its batch mates.

Speed: all chains of a batch train and sample together (BatchedMLP: one batched matmul
per layer for every chain, no Python loop over chains around a step). A fit is
epochs x ceil(rows / batch_size) Adam steps on batch_size x n_train_noise rows per
chain; sampling is n_steps network evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from collapse_ray.neural import ddpm, quality, render
from collapse_ray.neural.data import DIGITS, check_split_size, distinct_rows, image_split, point_set, resampled_rows
from collapse_ray.validation import check_finite_positive, check_min, fail, require
from collapse_ray.tasks.protocol import Metrics, RealData, Rows

if TYPE_CHECKING:  # torch is imported where it is used: importing the task registry stays light
    import torch

    from collapse_ray.neural.batched import BatchedMLP

Source = Literal["digits", "moons", "swiss_roll"]
DIMS = {"digits": 64, "moons": 2, "swiss_roll": 3}
N_LAYERS_HIDDEN = 3
# Point sets only: sin/cos of each coordinate at these angular frequencies (the data have
# about unit variance, so periods from ~12 down to ~0.6 units)
FOURIER_FREQUENCIES = np.geomspace(0.5, 10.0, 8)
MMD_WIDTHS = (1.0, 0.5, 0.25)  # kernel widths, as fractions of the median distance


@dataclass(frozen=True)
class DiffusionContext:
    """Per-chain seeds fixed for the whole chain (fit() and the artifacts get no rngs)."""

    init_seeds: np.ndarray  # (chains,): initial weights, minibatch order, training noise
    quality_seeds: np.ndarray  # (chains,): the noise of evaluation samples and pictures
    reference: np.ndarray  # (n_test, d): the first chain's held-out rows, under its scatter plot


@dataclass(frozen=True)
class DiffusionTestSet:
    x: torch.Tensor  # (chains, n_test, d): held-out rows in model space
    rows: np.ndarray  # (chains, n_test, d): the same in data space (digits in [0, 1]), for the MMD
    t: torch.Tensor  # (chains, n_test * n_eval_noise) int64: fixed timesteps
    noise: torch.Tensor  # (chains, n_test * n_eval_noise, d): fixed noises
    quality_seeds: np.ndarray  # (chains,)


@dataclass(frozen=True, eq=False)
class DiffusionFit:
    net: BatchedMLP  # one noise predictor per chain
    rows_per_s: float  # training throughput of the fit (all chains together)


@dataclass(frozen=True)
class DiffusionTask:
    """DDPM with an MLP noise predictor on digits, moons or swiss roll."""

    name: ClassVar[str] = "diffusion"
    batched: ClassVar[bool] = True

    source: Source = "moons"
    """Real data: scikit-learn's 8x8 digits, or its moons (2-D) / swiss roll (3-D) points."""
    noise: float = 0.05
    """Noise of the moons and swiss roll generators, in their own units (digits ignore it)."""
    n_steps: int = 200
    """Diffusion steps T."""
    beta_start: float = 1e-4
    """Linear beta schedule: beta_1 ..."""
    beta_end: float = 0.05
    """... beta_T. At T = 200 the chain keeps exp(-sum beta) = 0.7% of the data's variance at
    its end (x_T is close to standard normal); lower T wants a higher beta_end."""
    hidden: int = 128
    """Units in each of the noise predictor's three hidden layers (digits do better with 256)."""
    epochs: int = 200
    """Passes over the training set per fit."""
    batch_size: int = 64
    """Training rows per Adam step."""
    n_train_noise: int = 4
    """(timestep, noise) draws per training row in each step."""
    learning_rate: float = 3e-3
    """Adam's learning rate."""
    n_test: int = 500
    """Held-out real rows: per chain from its data generator (point sets), or the first
    n_test images of the digits' fixed test split (at most 359)."""
    n_eval_noise: int = 8
    """Fixed (timestep, noise) draws per held-out row that test_loss averages over."""
    n_quality: int = 500
    """Samples drawn at evaluation for mmd (and the digit classifier's scores)."""
    n_grid: int = 64
    """Samples in the per-iteration picture (samples.png) of the batch's first chain."""

    def validate(self, where: str) -> None:
        if self.source not in DIMS:  # from_mapping checks the Literal; direct construction too
            fail(f"{where}.source", "one of {" + ", ".join(DIMS) + "}", self.source)
        require(math.isfinite(self.noise) and self.noise >= 0, f"{where}.noise", "a number in [0, inf)", self.noise)
        ddpm.check_schedule(self.n_steps, self.beta_start, self.beta_end, where)
        check_min(self.hidden, 1, f"{where}.hidden")
        check_min(self.epochs, 1, f"{where}.epochs")
        check_min(self.batch_size, 1, f"{where}.batch_size")
        check_min(self.n_train_noise, 1, f"{where}.n_train_noise")
        check_finite_positive(self.learning_rate, f"{where}.learning_rate")
        check_min(self.n_test, 2, f"{where}.n_test")
        if self.source == DIGITS:
            check_split_size(self.n_test, DIGITS, "test", f"{where}.n_test")
        check_min(self.n_eval_noise, 1, f"{where}.n_eval_noise")
        check_min(self.n_quality, 2, f"{where}.n_quality")
        check_min(self.n_grid, 1, f"{where}.n_grid")

    def check_chain(self, chain, where: str) -> None:
        """Digits' real rows are distinct training images, of which there are 1,438."""
        if self.source == DIGITS:
            check_split_size(chain.n_real, DIGITS, "train", f"{where}.n_real")

    @property
    def dim(self) -> int:
        return DIMS[self.source]

    @property
    def column(self) -> str:
        return "image" if self.source == DIGITS else "x"

    def row_nbytes(self) -> int:
        return 4 * self.dim

    # -- data -------------------------------------------------------------------
    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        import torch

        from collapse_ray.neural.batched import as_tensor

        if self.source == DIGITS:
            images, test_images = image_split(DIGITS)[:2]
            train = images[distinct_rows(len(images), n_real, rngs, "images of the digits' training split")]
            test = np.broadcast_to(test_images[: self.n_test], (len(rngs), self.n_test, 8, 8))
        else:
            draws = np.stack([point_set(self.source, n_real + self.n_test, self.noise, rng) for rng in rngs])
            train, test = draws[:, :n_real], draws[:, n_real:]
        t, noise, init_seeds, quality_seeds = ddpm.fixed_draws(rngs, self.n_test * self.n_eval_noise, self.n_steps,
                                                               (self.dim,))
        rows = self._flat(test)
        test_set = DiffusionTestSet(
            x=as_tensor(self._to_model(rows)), rows=rows, t=torch.from_numpy(t), noise=as_tensor(noise),
            quality_seeds=quality_seeds,
        )
        context = DiffusionContext(init_seeds=init_seeds, quality_seeds=quality_seeds, reference=rows[0])
        return RealData(train={self.column: train}, test=test_set, context=context)

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        if self.source == DIGITS:  # fresh real images: the training split, with replacement
            images = image_split(DIGITS)[0]
            return {self.column: images[resampled_rows(len(images), n, rngs)]}
        return {self.column: np.stack([point_set(self.source, n, self.noise, rng) for rng in rngs])}

    def _flat(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows, dtype=np.float32).reshape(rows.shape[0], rows.shape[1], self.dim)

    def _to_model(self, flat: np.ndarray) -> np.ndarray:
        return flat * 2 - 1 if self.source == DIGITS else flat

    def _to_rows(self, x: torch.Tensor) -> np.ndarray:
        """Model-space samples (chains, n, d) as rows in data space."""
        out = x.numpy().astype(np.float32)
        if self.source == DIGITS:
            out = np.clip((out + 1) / 2, 0, 1).reshape(*out.shape[:2], 8, 8)
        return out

    # -- the network --------------------------------------------------------------
    def _network(self, generators: Sequence[torch.Generator]) -> BatchedMLP:
        from collapse_ray.neural.batched import BatchedMLP

        n_fourier = 0 if self.source == DIGITS else len(FOURIER_FREQUENCIES)
        n_in = self.dim * (1 + 2 * n_fourier) + ddpm.TIME_FEATURES
        return BatchedMLP([n_in, *[self.hidden] * N_LAYERS_HIDDEN, self.dim], generators)

    def _predict(self, net: BatchedMLP, xt: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """eps(x_t, t) for x_t (chains, n, d), given emb(t) as (chains, n, F) or (F,)."""
        import torch

        parts = [xt]
        if self.source != DIGITS:
            angles = (xt[..., None] * _frequencies()).flatten(-2)
            parts += [angles.sin(), angles.cos()]
        return net(torch.cat([*parts, emb.expand(*xt.shape[:2], ddpm.TIME_FEATURES)], dim=2))

    # -- fitting ----------------------------------------------------------------
    def fit(self, train: Rows, context: DiffusionContext) -> DiffusionFit:
        from collapse_ray.neural.batched import as_tensor, seeded_generators
        from collapse_ray.neural.batched import train as train_networks

        data = as_tensor(self._to_model(self._flat(train[self.column])))
        # the chain's fixed seed: trained from scratch, from the same weights every iteration
        generators = seeded_generators(context.init_seeds)
        net = self._network(generators)
        s = ddpm.schedule(self.n_steps, self.beta_start, self.beta_end)

        def loss(batch: torch.Tensor) -> torch.Tensor:
            x0 = batch.repeat(1, self.n_train_noise, 1)
            t, eps = ddpm.training_draws(generators, self.n_steps, x0.shape[1], (self.dim,))
            return ((self._predict(net, ddpm.noised(s, x0, t, eps), s.embedding[t]) - eps) ** 2).mean(dim=(1, 2))

        rows_per_s = train_networks(
            list(net.parameters()), data, loss, generators, self.epochs, self.batch_size, self.learning_rate
        )
        return DiffusionFit(net, rows_per_s)

    # -- sampling ---------------------------------------------------------------
    def _ancestral(self, net: BatchedMLP, n: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """DDPM ancestral sampling for every chain at once: (chains, n, d) in model space;
        digits' predicted x_0 are clipped to [-1, 1], where the data lie."""
        from collapse_ray.neural.batched import standard_normal

        return ddpm.ancestral(ddpm.schedule(self.n_steps, self.beta_start, self.beta_end),
                              lambda x, emb: self._predict(net, x, emb),
                              lambda: standard_normal(generators, n, self.dim), clip=self.source == DIGITS)

    def sample(self, model: DiffusionFit, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        from collapse_ray.neural.batched import torch_generators

        return {self.column: self._to_rows(self._ancestral(model.net, n, torch_generators(rngs)))}

    def _fixed_samples(self, net: BatchedMLP, n: int, seeds: np.ndarray) -> np.ndarray:
        """n samples per chain from its fixed quality seed: the same noise every iteration."""
        from collapse_ray.neural.batched import seeded_generators

        return self._to_rows(self._ancestral(net, n, seeded_generators(seeds)))

    # -- evaluation -------------------------------------------------------------
    def evaluate(self, model: DiffusionFit, test: DiffusionTestSet) -> Metrics:
        import torch

        s = ddpm.schedule(self.n_steps, self.beta_start, self.beta_end)
        # n_test x n_eval_noise rows through the network, row i's draws next to each other
        x0 = test.x.repeat_interleave(self.n_eval_noise, dim=1)
        with torch.no_grad():
            predicted = self._predict(model.net, ddpm.noised(s, x0, test.t, test.noise), s.embedding[test.t])
        error = (predicted - test.noise) ** 2
        samples = self._fixed_samples(model.net, self.n_quality, test.quality_seeds)
        mmd = self.mmd(samples, test.rows)
        metrics = {
            "test_loss": error.mean(dim=(1, 2)).double().numpy(),
            "mmd": mmd,
            "train_rows_per_s": np.full(len(mmd), model.rows_per_s),
        }
        if self.source == DIGITS:
            metrics.update(quality.digit_scores(samples))
        return metrics

    def mmd(self, samples: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Squared MMD per chain between rows (chains, n, ...) and reference (chains, m, d),
        with the mean of Gaussian kernels of widths MMD_WIDTHS x the data set's median
        distance (quality.reference_bandwidth)."""
        h = quality.reference_bandwidth(self.source, self.noise)
        return quality.mmd(self._flat(samples), reference, [h * w for w in MMD_WIDTHS])

    def iteration_artifacts(self, model: DiffusionFit, context: DiffusionContext) -> dict[str, bytes]:
        """samples.png: n_grid samples of the batch's first chain (from its fixed quality noise)."""
        from collapse_ray.neural.batched import first_chain

        samples = self._fixed_samples(first_chain(model.net, self._network), self.n_grid, context.quality_seeds[:1])[0]
        if self.source == DIGITS:
            return {"samples.png": render.image_grid_png(samples)}
        return {"samples.png": render.scatter_png(samples, context.reference, title=f"diffusion on {self.source}")}


@lru_cache(maxsize=1)
def _frequencies() -> torch.Tensor:
    import torch

    return torch.from_numpy(FOURIER_FREQUENCIES.astype(np.float32))
