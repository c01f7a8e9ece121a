"""Sample quality without downloads: kernel MMD to held-out real data, and the
confidence of a digit classifier trained once on the real training split."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from collapse_ray.neural.data import POINT_SETS, image_split, point_set

MEDIAN_POINTS = 500  # real rows behind a median distance
BANDWIDTH_SEED = 0  # point sets: the kernel width comes from one fixed draw, the same for every chain
MMD_BLOCK_ELEMENTS = 1 << 22  # kernel values per block of chains in `mmd` (float64, a few temporaries)


def mmd(samples: np.ndarray, reference: np.ndarray, bandwidths) -> np.ndarray:
    """Squared MMD per chain between samples (chains, n, ...) and reference (chains, m, d)
    or (m, d), with the mean of Gaussian kernels of the given widths. O(n (n + m)) kernel
    values per chain and width: blocks of chains keep them to ~100 MB."""
    chains, n = samples.shape[:2]
    samples = samples.reshape(chains, n, -1)
    step = max(1, MMD_BLOCK_ELEMENTS // (n * (n + np.shape(reference)[-2])))
    blocks = []
    for lo in range(0, chains, step):
        block_reference = reference[lo : lo + step] if np.ndim(reference) == 3 else reference
        blocks.append(np.mean([mmd_rbf(samples[lo : lo + step], block_reference, h) for h in bandwidths], axis=0))
    return np.concatenate(blocks)


@lru_cache(maxsize=8)
def reference_bandwidth(source: str, noise: float = 0.0) -> float:
    """The kernel width h of a data set: the median distance of a fixed real sample (the
    image source's training split; a point set's draw from BANDWIDTH_SEED at `noise`), so
    mmd compares across iterations, workflows and seeds."""
    if source in POINT_SETS:
        return median_bandwidth(point_set(source, MEDIAN_POINTS, noise, np.random.default_rng(BANDWIDTH_SEED)))
    return median_bandwidth(image_split(source)[0])


def mmd_rbf(samples: np.ndarray, reference: np.ndarray, bandwidth: float) -> np.ndarray:
    """Squared MMD (biased V-statistic) with a Gaussian kernel, per chain.

    samples (chains, n, d), reference (chains, m, d) or (m, d); bandwidth fixed by the
    caller (from the real data), so the number compares across iterations.
    """
    samples = np.asarray(samples, dtype=np.float64)
    reference = np.broadcast_to(reference, (samples.shape[0], *np.shape(reference)[-2:])).astype(np.float64)

    def mean_kernel(a, b):
        sq = (a**2).sum(-1)[:, :, None] + (b**2).sum(-1)[:, None, :] - 2 * a @ b.transpose(0, 2, 1)
        return np.exp(-np.maximum(sq, 0) / (2 * bandwidth**2)).mean(axis=(1, 2))

    return mean_kernel(samples, samples) + mean_kernel(reference, reference) - 2 * mean_kernel(samples, reference)


def median_bandwidth(points: np.ndarray) -> float:
    """The median pairwise distance of (a subset of) points: the usual kernel width."""
    points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)[:MEDIAN_POINTS]
    d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    return float(np.median(d[np.triu_indices(len(points), 1)]))


@lru_cache(maxsize=1)
def digit_classifier():
    """Logistic regression on the digits' real training split (about 96% test accuracy)."""
    from sklearn.linear_model import LogisticRegression

    train, _, labels, _ = image_split("digits")
    return LogisticRegression(max_iter=2000).fit(train.reshape(len(train), -1), labels)


def digit_scores(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per chain: the classifier's mean confidence on the samples (sharp digits score
    high) and the entropy of its predicted classes in nats (log 10 = 2.30 when all ten
    digits appear equally; collapse onto few classes lowers it)."""
    classifier = digit_classifier()
    n_chains, n = images.shape[:2]
    probs = classifier.predict_proba(np.clip(images, 0, 1).reshape(n_chains * n, -1)).reshape(n_chains, n, -1)
    counts = np.stack([np.bincount(p.argmax(-1), minlength=probs.shape[-1]) for p in probs]) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(counts > 0, counts * np.log(counts), 0).sum(-1)
    return {"classifier_confidence": probs.max(-1).mean(-1), "class_entropy": entropy}
