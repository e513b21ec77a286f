"""Synthetic "shapes" dataset: four geometric classes with a ground-truth mask.

Every image holds one bright shape on a darker background, plus Gaussian pixel
noise. Because the shape's pixels are known exactly, the mask is a ground truth
for explanation metrics ("how much relevance falls on the object").

Generation is fully vectorized: one coordinate grid is broadcast against the
per-image parameters, and each class's inside-test is evaluated for the whole
batch at once. The only loop is over fixed-size chunks of images, to bound
memory for large ``n``.

Geometry, for an image with centre ``(cy, cx)`` and size parameter ``r`` and a
pixel centre ``(y, x)``, with ``dy = y - cy``, ``dx = x - cx``:

- 0 ``square``: ``max(|dx|, |dy|) <= h`` with half-side ``h = r * sqrt(pi) / 2``
  (same area as the disk of radius ``r``).
- 1 ``disk``: ``dx**2 + dy**2 <= r**2``.
- 2 ``triangle``: equilateral, apex up, circumradius ``r``: the intersection of
  the three half-planes ``n_k . (dx, dy) <= r / 2`` with outward unit normals
  ``n_k`` at angles 90, 210 and 330 degrees (image axes, ``y`` pointing down).
- 3 ``plus``: ``(|dx| <= t and |dy| <= r) or (|dy| <= t and |dx| <= r)`` with
  arm half-width ``t = 0.3 * r``.

Every shape fits in the box ``|dx| <= r, |dy| <= r``, and the centre is drawn so
that this box lies inside the image.

Pixel values: ``x = clip(bg + (fg - bg) * mask + noise * N(0, 1), 0, 1)`` with
per-image background ``bg ~ U(0, 0.2)`` and foreground ``fg ~ U(0.7, 1.0)``.

Determinism: the same ``(n, seed, size, noise)`` gives bit-identical output, and
a smaller ``n`` gives a prefix of a larger one (labels, shape parameters and
noise come from three independent streams, each filled row by row, so sample
``i`` never depends on ``n``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "TRAIN_SEED",
    "TEST_SEED",
    "SPLIT_SIZES",
    "generate",
    "load_split",
]

#: Class index -> name. The order is the label value.
CLASS_NAMES: tuple[str, ...] = ("square", "disk", "triangle", "plus")
NUM_CLASSES = len(CLASS_NAMES)

#: Fixed seeds of the two splits (different, so test images are never train images).
TRAIN_SEED = 20250101
TEST_SEED = 20250202
#: Default number of images per split.
SPLIT_SIZES = {"train": 8000, "test": 2000}

# Size parameter r is drawn in this range, in pixels for a 32 x 32 image, and
# scaled by size / 32 for other image sizes.
_RADIUS_RANGE_32 = (5.0, 11.0)
_BACKGROUND_RANGE = (0.0, 0.2)
_FOREGROUND_RANGE = (0.7, 1.0)
_PLUS_HALF_WIDTH = 0.3
_CHUNK = 2048  # images per vectorized chunk; bounds the temporaries' memory

# Outward unit normals (x, y) of the apex-up equilateral triangle's edges.
_TRIANGLE_NORMALS = np.array(
    [[np.cos(a), np.sin(a)] for a in np.deg2rad([90.0, 210.0, 330.0])]
)


def _balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Labels in blocks of ``NUM_CLASSES``, each block a random permutation.

    Every class count is within 1 of ``n / NUM_CLASSES``, and the labels of a
    smaller ``n`` are a prefix of those of a larger one.
    """
    blocks = -(-n // NUM_CLASSES)
    keys = rng.random((blocks, NUM_CLASSES))
    return np.argsort(keys, axis=1).reshape(-1)[:n].astype(np.int64)


def _inside_masks(dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inside-tests of all classes: bool array ``(NUM_CLASSES, n, H, W)``.

    ``dy``, ``dx``: offsets of pixel centres from the shape centre, ``(n, H, W)``.
    ``r``: size parameter per image, ``(n, 1, 1)``.
    """
    ady, adx = np.abs(dy), np.abs(dx)
    square = np.maximum(adx, ady) <= r * (np.sqrt(np.pi) / 2.0)
    disk = dx * dx + dy * dy <= r * r
    # n_k . (dx, dy) for the three normals at once: (3, n, H, W)
    proj = (
        _TRIANGLE_NORMALS[:, 0, None, None, None] * dx
        + _TRIANGLE_NORMALS[:, 1, None, None, None] * dy
    )
    triangle = np.all(proj <= r / 2.0, axis=0)
    t = _PLUS_HALF_WIDTH * r
    plus = ((adx <= t) & (ady <= r)) | ((ady <= t) & (adx <= r))
    return np.stack([square, disk, triangle, plus])


def generate(
    n: int,
    seed: int = 0,
    size: int = 32,
    noise: float = 0.1,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` shape images.

    Parameters
    ----------
    n : number of images (>= 0).
    seed : seed of the generator; the same seed gives identical output.
    size : image height and width in pixels (>= 16).
    noise : standard deviation of the additive Gaussian pixel noise (>= 0).
    dtype : floating dtype of the images.

    Returns
    -------
    images : ``(n, size, size, 1)`` floats in ``[0, 1]`` (NHWC, one channel).
    labels : ``(n,)`` int64 class indices into :data:`CLASS_NAMES`.
    masks : ``(n, size, size)`` bool, True on the shape's pixels.
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    size = int(size)
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {np.dtype(dtype)}")

    # Three independent streams, each filled row by row, so that sample i never
    # depends on n (a smaller n gives a prefix of a larger one).
    label_rng, param_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )

    labels = _balanced_labels(label_rng, n)
    # One row of uniforms per image: radius, centre y, centre x, background, foreground.
    u = param_rng.random((n, 5))
    r_lo, r_hi = (v * size / 32.0 for v in _RADIUS_RANGE_32)
    r = r_lo + (r_hi - r_lo) * u[:, 0]
    # Centre range keeps the box |dx|, |dy| <= r inside the pixel centres 0 .. size-1.
    span = (size - 1) - 2.0 * r
    cy = r + span * u[:, 1]
    cx = r + span * u[:, 2]
    bg = _BACKGROUND_RANGE[0] + (_BACKGROUND_RANGE[1] - _BACKGROUND_RANGE[0]) * u[:, 3]
    fg = _FOREGROUND_RANGE[0] + (_FOREGROUND_RANGE[1] - _FOREGROUND_RANGE[0]) * u[:, 4]

    images = np.empty((n, size, size, 1), dtype=dtype)
    masks = np.empty((n, size, size), dtype=bool)
    grid = np.arange(size, dtype=np.float64)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        m = sl.stop - sl.start
        dy = grid[None, :, None] - cy[sl, None, None]  # (m, size, 1)
        dx = grid[None, None, :] - cx[sl, None, None]  # (m, 1, size)
        dy, dx = np.broadcast_arrays(dy, dx)
        inside = _inside_masks(dy, dx, r[sl, None, None])  # (classes, m, H, W)
        mask = inside[labels[sl], np.arange(m)]
        pixels = bg[sl, None, None] + (fg - bg)[sl, None, None] * mask
        pixels += noise * noise_rng.standard_normal((m, size, size))
        images[sl, :, :, 0] = np.clip(pixels, 0.0, 1.0)
        masks[sl] = mask
    return images, labels, masks


def load_split(split: str = "train", n: int | None = None, dtype=np.float32):
    """The fixed train or test split used by training and evaluation.

    ``split`` is ``"train"`` (seed :data:`TRAIN_SEED`) or ``"test"`` (seed
    :data:`TEST_SEED`); ``n`` defaults to :data:`SPLIT_SIZES` ``[split]``, and a
    smaller ``n`` gives the first ``n`` images of the split. Images are 32 x 32
    with noise 0.1. Returns ``(images, labels, masks)`` as :func:`generate`.
    """
    seeds = {"train": TRAIN_SEED, "test": TEST_SEED}
    if split not in seeds:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n is None:
        n = SPLIT_SIZES[split]
    return generate(n, seed=seeds[split], size=32, noise=0.1, dtype=dtype)
