"""A variational autoencoder on small images ("vae"), the image setting of (B).

Real data: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download),
scaled to [0, 1] and split once into a training split (1,438) and a held-out test split
(359) (`neural.data.image_split`); or a local folder / Parquet of images of one size.
Each chain's real training set is `n_real` images of the training split, chosen
without replacement with the chain's generator.

A fit is an MLP VAE trained from scratch (as (B) retrains each iteration): encoder
pixels -> hidden -> hidden -> (mu, log sigma^2) of a `latent_dim`-dimensional Gaussian,
decoder latent -> hidden -> hidden -> pixel logits, prior N(0, I). The decoder is
Bernoulli on pixel intensities in [0, 1] (plain binary cross-entropy with soft targets,
as Kingma & Welling's MNIST VAE, not the continuous Bernoulli): the "likelihood" is a
cross-entropy, so it is >= the intensities' own entropy (13.7 nats per digits test
image) rather than a normalised density, and comparable across iterations and workflows. Synthetic images are decoder
means (pixel probabilities) at z ~ N(0, I), float32 in [0, 1], as many as asked.

Metrics per chain, all on the same held-out real test images every iteration:
  test_loss     negative ELBO, nats per image: BCE reconstruction + KL(q(z|x) || p(z)),
                KL analytic, one reparameterised z per image whose noise is fixed per
                chain in `real_data` (so the number moves only when the model does)
  recon_error   mean squared error per pixel of the mean reconstructions decoder(mu(x))
  kl            the KL term alone, nats per image
  mmd           squared kernel MMD between `n_eval_samples` prior samples (fixed z per
                chain) and the test images; Gaussian kernel of fixed width (the median
                pairwise distance of the training split)
  classifier_confidence, class_entropy   (source "digits" only) a logistic-regression
                digit classifier on the same prior samples: sharp digits score high
                confidence (real test digits 0.91), blur scores low (the mean digit
                image 0.30; uniform noise, out of its domain, 0.56); collapse onto a few
                classes lowers the class entropy (ln 10 = 2.30 for ten classes equally)
  train_images_per_s   training throughput of the fit (all chains together)

Speed: every chain of a batch has its own networks, stacked on a leading chain axis
(`neural.batched.BatchedMLP`), so one batched matmul trains them all; nothing loops over
chains except drawing each chain's random numbers from its own generator, which makes a
chain's results independent of its batch mates. Fit cost is epochs x training-set size:
under accumulate it grows linearly with the iteration.

What to expect (tests/test_vae.py, 300 real digits, hidden 128, 30 epochs): replace
collapses within 2-3 iterations to a VAE that ignores its latent (KL ~0) and draws one
mean image, test loss 26.0 -> 27.1 nats; accumulate keeps drawing several digits, 26.0
-> 26.2 by iteration 4.

Run it small:

    python -c "from collapse_ray.core.loop import run_chain; from collapse_ray.tasks.vae import VAETask;
    from collapse_ray.core.chain import ChainConfig;
    print(run_chain(VAETask(epochs=20), ChainConfig(workflow='replace', n_real=300, n_iterations=4), seeds=[0, 1]).table)"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from collapse_ray.neural import quality
from collapse_ray.neural.data import DIGITS, MAX_SEED, check_split_size, distinct_rows, image_split, resampled_rows
from collapse_ray.neural.render import image_grid_png
from collapse_ray.validation import check_finite_positive, check_min, fail, require
from collapse_ray.tasks.protocol import Metrics, RealData, Rows

if TYPE_CHECKING:  # torch is imported where it is used: importing the task registry stays light
    import torch

    from collapse_ray.neural.batched import BatchedMLP

NOISE_CHUNK = 64  # minibatches of reparameterisation noise drawn per chain at once (one small loop per chunk)


@dataclass(frozen=True, eq=False)
class VAEContext:
    """Fixed per-chain facts, drawn once in `real_data` from each chain's data generator."""

    init_seeds: np.ndarray  # (chains,) int64: the torch seed of each chain's fits (weights, order, noise)
    grid_z: np.ndarray  # (chains, n_grid, latent): latents of the samples.png grid


@dataclass(frozen=True, eq=False)
class VAETestSet:
    images: torch.Tensor  # (n_test, H*W): the held-out real images, the same for every chain
    eps: torch.Tensor  # (chains, n_test, latent): the fixed reparameterisation noise of the ELBO
    prior_z: torch.Tensor  # (chains, n_eval_samples, latent): the fixed latents of the quality scores
    bandwidth: float  # MMD kernel width, from the training split


@dataclass(frozen=True, eq=False)
class VAEFit:
    encoder: BatchedMLP  # pixels -> (mu, log sigma^2)
    decoder: BatchedMLP  # latent -> pixel logits
    image_shape: tuple[int, int]
    images_per_s: float

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities (chains, n, H*W) of latents (chains, n, latent)."""
        import torch

        with torch.no_grad():
            return torch.sigmoid(self.decoder(z))

    def images(self, z: torch.Tensor) -> np.ndarray:
        """Decoder means as float32 images (chains, n, H, W)."""
        pixels = self.decode(z).numpy()
        return pixels.reshape(*pixels.shape[:2], *self.image_shape).astype(np.float32, copy=False)


@dataclass(frozen=True)
class VAETask:
    """An MLP VAE trained from scratch each iteration on 8x8 digits (or a local image set)."""

    name: ClassVar[str] = "vae"
    batched: ClassVar[bool] = True

    source: str = "digits"
    """'digits' (scikit-learn's 8x8 digits), a folder of .png/.jpg images of one size, or a
    .parquet with columns image (flat pixels), height, width."""
    latent_dim: int = 8
    """Dimension of the latent Gaussian."""
    hidden: int = 256
    """Width of the encoder's and decoder's two hidden layers."""
    epochs: int = 40
    """Passes over the training set per fit (the fit is from scratch every iteration)."""
    batch_size: int = 64
    """Images per Adam step, per chain."""
    learning_rate: float = 2e-3
    """Adam's step size (3e-3 trains as well at these sizes; 1e-3 needs ~1.5x the epochs)."""
    n_test: int = 359
    """Held-out test images the metrics use (the first n_test of the test split; digits has 359)."""
    n_eval_samples: int = 500
    """Prior samples scored for mmd and the digit-classifier numbers (fixed latents per chain)."""
    n_grid: int = 64
    """Prior samples of the batch's first chain drawn per iteration into samples.png."""

    def validate(self, where: str) -> None:
        for name in ("latent_dim", "hidden", "epochs", "batch_size", "n_test", "n_eval_samples", "n_grid"):
            check_min(getattr(self, name), 1, f"{where}.{name}")
        check_finite_positive(self.learning_rate, f"{where}.learning_rate")
        allowed = "'digits', an existing folder of images or an existing .parquet file"
        path = Path(self.source).expanduser()
        usable = self.source == DIGITS or path.is_dir() or (path.suffix == ".parquet" and path.is_file())
        require(usable, f"{where}.source", allowed, self.source)
        try:
            train_images, test_images = self._split()[:2]
        except (ValueError, OSError) as err:  # an unreadable folder or Parquet
            fail(f"{where}.source", f"{allowed} ({err})", self.source)
        require(len(train_images) >= 1 and len(test_images) >= 1, f"{where}.source",
                f"{allowed} with at least 3 images (a fifth are held out)", self.source)
        check_split_size(self.n_test, self.source, "test", f"{where}.n_test")

    def check_chain(self, chain, where: str) -> None:
        """Real training images are drawn without replacement from the training split."""
        check_split_size(chain.n_real, self.source, "train", f"{where}.n_real")

    def _split(self):
        return image_split(self.source)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self._split()[0].shape[1:])

    def row_nbytes(self) -> int:
        h, w = self.image_shape
        return 4 * h * w

    # -- data -------------------------------------------------------------------
    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        import torch

        train_images, test_images = self._split()[:2]
        train = train_images[distinct_rows(len(train_images), n_real, rngs,
                                           f"images of {self.source!r}'s training split")]
        chains = len(rngs)
        init_seeds = np.empty(chains, dtype=np.int64)
        eps = np.empty((chains, self.n_test, self.latent_dim), dtype=np.float32)
        prior_z = np.empty((chains, self.n_eval_samples, self.latent_dim), dtype=np.float32)
        grid_z = np.empty((chains, self.n_grid, self.latent_dim), dtype=np.float32)
        for c, rng in enumerate(rngs):  # each chain from its own generator, in a fixed order
            # the drawn seed passes through a numpy generator once more: the seeding the VAE's
            # numbers were measured with
            init_seeds[c] = np.random.default_rng(int(rng.integers(MAX_SEED))).integers(MAX_SEED)
            for out in (eps, prior_z, grid_z):
                out[c] = rng.standard_normal(out.shape[1:], dtype=np.float32)
        test = VAETestSet(
            images=torch.from_numpy(np.array(test_images[: self.n_test].reshape(self.n_test, -1), dtype=np.float32)),
            eps=torch.from_numpy(eps),
            prior_z=torch.from_numpy(prior_z),
            bandwidth=quality.reference_bandwidth(self.source),
        )
        return RealData(train={"image": train}, test=test, context=VAEContext(init_seeds, grid_z))

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        """n training-split images per chain, with replacement."""
        train_images = self._split()[0]
        return {"image": train_images[resampled_rows(len(train_images), n, rngs)]}

    # -- fitting ----------------------------------------------------------------
    def fit(self, train: Rows, context: VAEContext | None = None) -> VAEFit:
        """A fresh VAE per chain. Its initial weights, minibatch order and training noise
        come from the chain's seed in `context`: the same initialisation every iteration
        (a fresh one, as (B)), different across seeds. Without a context every chain
        starts from seed 0."""
        import torch

        from collapse_ray.neural.batched import BatchedMLP, as_tensor, seeded_generators, torch_generators
        from collapse_ray.neural.batched import train as train_networks

        images = train["image"]
        chains, n = images.shape[:2]
        image_shape = tuple(images.shape[2:])
        pixels = int(np.prod(image_shape))
        data = as_tensor(images.reshape(chains, n, pixels))
        if context is not None:
            generators = seeded_generators(context.init_seeds)
        else:
            generators = torch_generators([np.random.default_rng(0) for _ in range(chains)])
        h, k = self.hidden, self.latent_dim
        encoder = BatchedMLP([pixels, h, h, 2 * k], generators)
        decoder = BatchedMLP([k, h, h, pixels], generators)
        noise = _NoiseStream(generators, k)

        def loss(batch: torch.Tensor) -> torch.Tensor:
            mu, logvar = encoder(batch).chunk(2, dim=-1)
            z = mu + torch.exp(0.5 * logvar) * noise.take(batch.shape[1])
            return _negative_elbo(decoder(z), batch, mu, logvar)[0].mean(dim=1)

        parameters = [*encoder.parameters(), *decoder.parameters()]
        rate = train_networks(parameters, data, loss, generators, self.epochs, self.batch_size, self.learning_rate)
        for p in parameters:
            p.requires_grad_(False)
        return VAEFit(encoder, decoder, image_shape, rate)

    # -- sampling ---------------------------------------------------------------
    def sample(self, model: VAEFit, n: int, rngs: Sequence[np.random.Generator], context=None) -> Rows:
        import torch

        z = np.stack([rng.standard_normal((n, self.latent_dim), dtype=np.float32) for rng in rngs])
        return {"image": model.images(torch.from_numpy(z))}

    def iteration_artifacts(self, model: VAEFit, context: VAEContext) -> dict[str, bytes]:
        """samples.png: decoder means at the batch's first chain's fixed grid latents."""
        import torch

        z = torch.from_numpy(context.grid_z)
        return {"samples.png": image_grid_png(model.images(z)[0], columns=8)}

    # -- evaluation -------------------------------------------------------------
    def evaluate(self, model: VAEFit, test: VAETestSet) -> Metrics:
        import torch

        chains = test.eps.shape[0]
        x = test.images.expand(chains, *test.images.shape)
        with torch.no_grad():
            mu, logvar = model.encoder(x).chunk(2, dim=-1)
            z = mu + torch.exp(0.5 * logvar) * test.eps
            loss, kl = _negative_elbo(model.decoder(z), x, mu, logvar)
            recon = torch.sigmoid(model.decoder(mu))
            recon_error = ((recon - x) ** 2).mean(dim=(1, 2))
        samples = model.images(test.prior_z)  # (chains, n_eval_samples, H, W)
        metrics = {
            "test_loss": loss.mean(dim=1).double().numpy(),
            "recon_error": recon_error.double().numpy(),
            "kl": kl.mean(dim=1).double().numpy(),
            "mmd": quality.mmd(samples, test.images.numpy(), [test.bandwidth]),
            "train_images_per_s": np.full(chains, model.images_per_s),
        }
        if self.source == DIGITS:
            metrics.update({k: v.astype(np.float64) for k, v in quality.digit_scores(samples).items()})
        return metrics


def _negative_elbo(logits, x, mu, logvar) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative ELBO, KL) per image, (chains, n), in nats: Bernoulli cross-entropy of the
    pixels summed over pixels, plus KL(N(mu, sigma^2) || N(0, I)) in closed form."""
    import torch

    recon = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=-1)
    kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(dim=-1)
    return recon + kl, kl


class _NoiseStream:
    """Standard normal latents for successive minibatches, each chain from its own
    generator, drawn NOISE_CHUNK minibatches at a time so the per-chain loop is rare.
    A chain's stream depends only on its generator and the minibatch sizes."""

    def __init__(self, generators: Sequence[torch.Generator], dim: int):
        import torch

        self.generators = generators
        self.dim = dim
        self.buffer = torch.empty(len(generators), 0, dim)
        self.used = 0

    def take(self, n: int) -> torch.Tensor:
        from collapse_ray.neural.batched import standard_normal

        if self.used + n > self.buffer.shape[1]:
            size = max(n, NOISE_CHUNK * n)
            self.buffer = standard_normal(self.generators, size, self.dim)
            self.used = 0
        out = self.buffer[:, self.used : self.used + n]
        self.used += n
        return out
