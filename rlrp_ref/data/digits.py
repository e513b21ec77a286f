"""UCI "Optical Recognition of Handwritten Digits", 8 x 8 version (bundled).

1797 grey-level images of the digits 0..9, each an 8 x 8 grid of counts in
``0 .. 16`` (the number of "on" pixels in a 4 x 4 block of a 32 x 32 bitmap).
The values are those that scikit-learn ships as
``sklearn/datasets/data/digits.csv.gz``, stored here as ``digits.npz``
(``images``: uint8 ``(1797, 8, 8)``, ``labels``: uint8 ``(1797,)``).
Attribution and licence: ``DIGITS_LICENSE.md`` next to this file.

Scaling: ``x = v / 16`` maps the counts ``v`` onto ``[0, 1]``.

Split: a fixed stratified split, seed :data:`SPLIT_SEED`, with
``round(TEST_FRACTION * n_c)`` test images drawn from each class ``c`` of
``n_c`` images; the rest are train images. Both keep the file's order.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = ["NUM_CLASSES", "N_SAMPLES", "SPLIT_SEED", "TEST_FRACTION", "load", "load_split", "split_indices"]

NUM_CLASSES = 10
N_SAMPLES = 1797
MAX_VALUE = 16
SPLIT_SEED = 0
TEST_FRACTION = 0.25


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """The bundled uint8 images ``(1797, 8, 8)`` and labels ``(1797,)``, read once."""
    ref = resources.files(__package__).joinpath("digits.npz")
    with ref.open("rb") as fh, np.load(fh) as archive:
        images, labels = archive["images"], archive["labels"]
    if images.shape != (N_SAMPLES, 8, 8) or labels.shape != (N_SAMPLES,):
        raise RuntimeError(
            f"bundled digits.npz is damaged: images {images.shape}, labels "
            f"{labels.shape}, expected ({N_SAMPLES}, 8, 8) and ({N_SAMPLES},)"
        )
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Indices of the fixed stratified train/test split, ascending.

    Vectorized: a seeded permutation, stably sorted by label, gives each class's
    images in random order; an image is a test image when its rank within its
    class is below ``round(TEST_FRACTION * n_c)``.
    """
    _, labels = _raw()
    rng = np.random.default_rng(SPLIT_SEED)
    order = rng.permutation(labels.size)
    order = order[np.argsort(labels[order], kind="stable")]
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(labels.size) - class_start[labels[order]]
    n_test = np.round(TEST_FRACTION * counts).astype(np.int64)
    is_test = rank < n_test[labels[order]]
    test, train = np.sort(order[is_test]), np.sort(order[~is_test])
    test.flags.writeable = False
    train.flags.writeable = False
    return {"train": train, "test": test}


def load(split: str | None = None, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Digits as NHWC floats in ``[0, 1]`` and int64 labels.

    ``split=None`` returns all 1797 images in file order; ``"train"`` or
    ``"test"`` returns that part of the fixed split (see :func:`load_split`).
    Images have shape ``(n, 8, 8, 1)`` and values ``v / 16``.
    """
    images, labels = _raw()
    if split is not None:
        index = split_indices()
        if split not in index:
            raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
        images, labels = images[index[split]], labels[index[split]]
    dtype = np.dtype(dtype)
    x = (images.astype(dtype) / dtype.type(MAX_VALUE))[..., None]
    return x, labels.astype(np.int64)


def load_split(split: str = "train", dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified split (seed 0, 25 % test per class): ``load(split)``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return load(split, dtype=dtype)
