"""Real data of the neural tasks, offline: scikit-learn's bundled 8x8 digits (1,797
images), its moons and swiss roll generators, or a local folder / Parquet of images; and
the per-chain draws of real rows every neural task makes the same way."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from collapse_ray.validation import require

DIGITS = "digits"
POINT_SETS = ("moons", "swiss_roll")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the digits' train/test split is fixed: every chain is tested on the same images
MAX_SEED = 2**63 - 1  # per-chain seeds (of torch generators) are drawn in [0, MAX_SEED)


@lru_cache(maxsize=8)
def image_split(source: str = DIGITS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, test images, train labels, test labels); images float32 in [0, 1],
    shape (n, H, W). Labels are -1 where the source has none."""
    images, labels = _load_images(source)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    n_test = int(round(TEST_FRACTION * len(images)))
    test, train = order[:n_test], order[n_test:]
    for arr in (images, labels):
        arr.setflags(write=False)
    return images[train], images[test], labels[train], labels[test]


def check_split_size(n: int, source: str, split: str, where: str) -> None:
    """Refuse n images from `split` ('train' or 'test') of an image source that holds fewer:
    real images are distinct rows of the fixed split."""
    train, test = image_split(source)[:2]
    size, name = (len(train), "training split") if split == "train" else (len(test), "test split")
    require(n <= size, where, f"an integer <= {size} (the {name} of {source!r})", n)


def distinct_rows(size: int, n: int, rngs, what: str) -> np.ndarray:
    """(chains, n) indices of n distinct rows of `size`, each chain from its own generator:
    a chain's real training set. `what` names the rows in the error."""
    if n > size:
        raise ValueError(f"n_real = {n} exceeds the {size} {what} (real rows are drawn without replacement)")
    return np.stack([rng.choice(size, n, replace=False) for rng in rngs])


def resampled_rows(size: int, n: int, rngs) -> np.ndarray:
    """(chains, n) indices of rows drawn with replacement: fresh real rows (`sample_real`)."""
    return np.stack([rng.integers(0, size, n) for rng in rngs])


def _load_images(source: str) -> tuple[np.ndarray, np.ndarray]:
    if source == DIGITS:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"image folder {source!r} holds no {'/'.join(IMAGE_SUFFIXES)} files")
        import matplotlib.image

        images = [_gray(matplotlib.image.imread(f)) for f in files]
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise ValueError(f"image folder {source!r} mixes image sizes {sorted(shapes)}; one size is needed")
        return np.stack(images).astype(np.float32), np.full(len(images), -1, dtype=np.int64)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if not {"image", "height", "width"} <= set(table.column_names):
            raise ValueError(f"image Parquet {source!r} needs columns image (flat pixels), height, width; "
                             f"has {table.column_names}")
        h, w = int(table["height"][0].as_py()), int(table["width"][0].as_py())
        pixels = np.asarray(table["image"].to_pylist(), dtype=np.float32).reshape(-1, h, w)
        if pixels.max() > 1:
            pixels = pixels / 255.0
        labels = table["label"].to_numpy() if "label" in table.column_names else np.full(len(pixels), -1)
        return pixels.astype(np.float32), np.asarray(labels, dtype=np.int64)
    raise ValueError(f"image source must be 'digits', a folder of images or a .parquet file; got {source!r}")


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.max() > 1:
        image = image / 255.0
    return image[..., :3].mean(axis=-1) if image.ndim == 3 else image


def point_set(name: str, n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """n points of a scikit-learn 2-D / 3-D set, scaled to roughly unit variance."""
    from sklearn.datasets import make_moons, make_swiss_roll

    seed = int(rng.integers(2**31 - 1))
    if name == "moons":
        x, _ = make_moons(n, noise=noise, random_state=seed)
        return ((x - [0.5, 0.25]) / [0.87, 0.5]).astype(np.float32)
    if name == "swiss_roll":
        x, _ = make_swiss_roll(n, noise=noise, random_state=seed)
        return ((x - [1.9, 10.5, 0.1]) / [6.6, 5.9, 6.6]).astype(np.float32)
    raise ValueError(f"point set must be one of {POINT_SETS}; got {name!r}")
