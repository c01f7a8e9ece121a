"""PNG pictures of samples, for MLflow (one per iteration) and the figures."""

from __future__ import annotations

import io

import numpy as np


def image_grid_png(images: np.ndarray, columns: int = 8, title: str | None = None) -> bytes:
    """Images (n, H, W) in [0, 1] as one grayscale grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, h, w = images.shape
    rows = int(np.ceil(n / columns))
    grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1), dtype=np.float32)
    for i, image in enumerate(np.clip(images, 0, 1)):
        r, c = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = image
    fig, ax = plt.subplots(figsize=(columns * 0.45, rows * 0.45 + (0.3 if title else 0)), dpi=100)
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    return _png(fig)


def scatter_png(points: np.ndarray, reference: np.ndarray | None = None, title: str | None = None) -> bytes:
    """Points (n, d>=2) over faint reference points; 3-D sets show their first and third
    coordinates (the swiss roll's spiral)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = (0, 2) if points.shape[-1] >= 3 else (0, 1)
    fig, ax = plt.subplots(figsize=(3, 3), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, axes[0]], reference[:, axes[1]], s=2, c="0.8", label="real")
    ax.scatter(points[:, axes[0]], points[:, axes[1]], s=2, c="C0", label="samples")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=6)
    if title:
        ax.set_title(title, fontsize=8)
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
