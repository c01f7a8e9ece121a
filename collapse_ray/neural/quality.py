"""Sample quality without downloads: kernel MMD to held-out real data, and the
confidence of a digit classifier trained once on the real training split."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


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
    points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)[:500]
    d = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    return float(np.median(d[np.triu_indices(len(points), 1)]))


@lru_cache(maxsize=1)
def digit_classifier():
    """Logistic regression on the digits' real training split (about 96% test accuracy)."""
    from sklearn.linear_model import LogisticRegression

    from .data import image_split

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
