"""Pixel flipping and region perturbation: MoRF and LeRF curves, AOPC.

Region perturbation (Samek, Binder, Montavon, Lapuschkin, Mueller, "Evaluating
the visualization of what a deep neural network has learned", IEEE TNNLS 2017;
pixel flipping is its ``patch=1`` case, Bach et al. 2015):

1. pool the heatmap over channels, ``r[h, w] = sum_c R[h, w, c]``, and sum it over
   non-overlapping ``ph x pw`` patches (edge patches may be smaller);
2. order the patches by that sum, most relevant first (MoRF) or least relevant
   first (LeRF); ties are broken by a seeded random permutation, so a constant
   heatmap is scored like a random order;
3. replace the first ``k`` patches by a baseline (``kind``) and record the
   target score ``f(x^(k))`` (the logit of the explained class, or its softmax
   probability), for ``k = k_0 = 0 < k_1 < ... < k_S``;
4. the area over the perturbation curve

   ``AOPC = 1 / (S + 1) * sum_{s=0}^{S} ( f(x^(0)) - f(x^(k_s)) )``,

   averaged over images. With ``S`` equal to the number of patches this is
   Samek et al.'s AOPC exactly; a smaller ``steps`` samples the curve at evenly
   spaced patch counts.

MoRF AOPC: higher is better (the score falls fast when the relevant regions go).
LeRF AOPC: lower is better (removing irrelevant regions should not hurt).
``ABPC = AOPC_MoRF - AOPC_LeRF`` (the area between the two curves, Schulz et
al., ICLR 2020) combines both: higher is better.

Every step perturbs the whole batch at once (patch ranks from one vectorized
sort, a boolean mask per step, one forward pass per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import as_batch, as_target, check_same_shape, spatial_map, target_scores

__all__ = ["KINDS", "PerturbationCurve", "perturbation_baseline", "region_perturbation", "perturbation_curves", "patch_order"]

#: Perturbation kinds: what a removed patch is replaced with.
KINDS = ("zero", "mean", "uniform", "blur")


@dataclass
class PerturbationCurve:
    """One perturbation experiment on a batch.

    ``fraction[s]``: share of patches perturbed at step ``s`` (``fraction[0] == 0``);
    ``scores[n, s]``: target score of image ``n`` at step ``s``;
    ``aopc_per_image[n] = mean_s (scores[n, 0] - scores[n, s])``; ``aopc`` its mean.
    """

    order: str
    fraction: np.ndarray
    scores: np.ndarray

    @property
    def aopc_per_image(self) -> np.ndarray:
        """``mean_s (f(x^(0)) - f(x^(k_s)))`` for every image, shape ``(N,)``."""
        return (self.scores[:, :1] - self.scores).mean(axis=1)

    @property
    def aopc(self) -> float:
        """The AOPC of the batch: :attr:`aopc_per_image` averaged over images."""
        return float(self.aopc_per_image.mean())

    @property
    def mean_curve(self) -> np.ndarray:
        """The score averaged over images at each step."""
        return self.scores.mean(axis=0)


def _as_nhwc(x):
    """View a batch as ``(N, H, W, C)``: images stay, ``(N, D)`` becomes ``(N, 1, D, 1)``."""
    if x.ndim == 4:
        return x
    if x.ndim == 2:
        return x.reshape(x.shape[0], 1, x.shape[1], 1)
    raise ValueError(f"x: expected images (N, H, W, C) or features (N, D), found shape {x.shape}")


def perturbation_baseline(x, kind: str = "zero", *, seed: int = 0, blur_sigma: float = 1.0, noise_range=None) -> np.ndarray:
    """The values a perturbed pixel takes, same shape as ``x`` (``(N, H, W, C)``).

    - ``"zero"``: 0;
    - ``"mean"``: each image's per-channel mean over its pixels;
    - ``"uniform"``: i.i.d. noise ``U(low, high)`` from ``numpy.random.default_rng(seed)``,
      ``(low, high) = noise_range`` or, by default, the batch's min and max;
    - ``"blur"``: the image smoothed by a Gaussian of standard deviation
      ``blur_sigma`` pixels over the spatial axes (``scipy.ndimage.gaussian_filter``,
      edges extended by the nearest pixel).
    """
    x = np.asarray(x)
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "mean":
        return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).copy()
    if kind == "uniform":
        low, high = (float(x.min()), float(x.max())) if noise_range is None else map(float, noise_range)
        if not low <= high:
            raise ValueError(f"noise_range: expected low <= high, found ({low}, {high})")
        return np.random.default_rng(seed).uniform(low, high, size=x.shape).astype(x.dtype)
    if kind == "blur":
        from scipy.ndimage import gaussian_filter

        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma: expected > 0, found {blur_sigma!r}")
        return gaussian_filter(x, sigma=(0, blur_sigma, blur_sigma, 0), mode="nearest")
    raise ValueError(f"perturbation kind: expected one of {', '.join(KINDS)}, found {kind!r}")


def _pair(patch):
    ph, pw = (patch, patch) if np.ndim(patch) == 0 else tuple(patch)
    ph, pw = int(ph), int(pw)
    if ph < 1 or pw < 1:
        raise ValueError(f"patch: expected sizes >= 1, found {patch!r}")
    return ph, pw


def patch_order(relevance_map, patch=1, order: str = "morf", seed: int = 0) -> np.ndarray:
    """Rank of every pixel's patch in the perturbation order, shape ``(N, H, W)``.

    ``relevance_map`` is ``(N, H, W)`` (already pooled over channels). Rank 0 is
    perturbed first. Patches are ``ph x pw`` tiles from the top-left corner.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order: expected 'morf' or 'lerf', found {order!r}")
    ph, pw = _pair(patch)
    r = np.asarray(relevance_map, dtype=np.float64)
    n, h, w = r.shape
    hp, wp = -(-h // ph), -(-w // pw)
    padded = np.zeros((n, hp * ph, wp * pw))
    padded[:, :h, :w] = r
    patch_relevance = padded.reshape(n, hp, ph, wp, pw).sum(axis=(2, 4)).reshape(n, hp * wp)
    tie_break = np.random.default_rng(seed).random(patch_relevance.shape)
    key = -patch_relevance if order == "morf" else patch_relevance
    # lexsort sorts by the last key first: primary key = relevance, then the random tie-break
    sequence = np.lexsort((tie_break, key), axis=-1)  # (N, P): patch indices, first perturbed first
    ranks = np.empty_like(sequence)
    np.put_along_axis(ranks, sequence, np.broadcast_to(np.arange(hp * wp), sequence.shape), axis=1)
    pixel_rank = ranks.reshape(n, hp, wp).repeat(ph, axis=1).repeat(pw, axis=2)
    return pixel_rank[:, :h, :w]


def _scores(forward_fn, x, target, score):
    logits = np.asarray(forward_fn(x), dtype=np.float64)
    if score == "probability":
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        logits = e / e.sum(axis=1, keepdims=True)
    return target_scores(logits, target)


def region_perturbation(
    forward_fn,
    x,
    relevance,
    target,
    *,
    order: str = "morf",
    patch=1,
    kind: str = "zero",
    steps: int | None = None,
    fraction: float = 1.0,
    score: str = "logit",
    seed: int = 0,
    blur_sigma: float = 1.0,
    noise_range=None,
) -> PerturbationCurve:
    """Perturbation curve of one ordering (see the module docstring for the formula).

    ``forward_fn(x) -> logits (N, classes)``; ``x`` images ``(N, H, W, C)`` or
    features ``(N, D)``; ``relevance`` of the shape of ``x``; ``target`` the
    explained class per image. ``steps``: number of curve points after the
    start (default: one per patch); ``fraction``: share of patches perturbed
    at the last step. ``seed`` drives the tie-break and the uniform noise.
    """
    x = as_batch(x)
    relevance = check_same_shape(relevance, x)
    target = as_target(target, x.shape[0])
    if score not in ("logit", "probability"):
        raise ValueError(f"score: expected 'logit' or 'probability', found {score!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected 0 < fraction <= 1, found {fraction!r}")
    images = _as_nhwc(x)
    ph, pw = _pair(patch)
    if x.ndim == 2:  # features: a patch is a run of consecutive features
        if ph != pw:
            raise ValueError(f"patch: expected one int for features (N, D), found {patch!r}")
        ph, pw = 1, ph
    pixel_rank = patch_order(spatial_map(_as_nhwc(relevance)), (ph, pw), order, seed)[..., None]
    baseline = perturbation_baseline(images, kind, seed=seed + 1, blur_sigma=blur_sigma, noise_range=noise_range)
    n_patches = int(pixel_rank.max()) + 1
    last = max(1, int(round(fraction * n_patches)))
    steps = last if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, found {steps!r}")
    counts = np.unique(np.round(np.linspace(0, last, steps + 1)).astype(np.int64))
    scores = np.empty((x.shape[0], counts.size))
    for s, k in enumerate(counts):
        perturbed = np.where(pixel_rank < k, baseline, images).reshape(x.shape)
        scores[:, s] = _scores(forward_fn, perturbed, target, score)
    return PerturbationCurve(order=order, fraction=counts / n_patches, scores=scores)


def perturbation_curves(forward_fn, x, relevance, target, **options) -> dict:
    """MoRF and LeRF curves with one set of options, and their summary.

    Returns ``{"morf": PerturbationCurve, "lerf": PerturbationCurve,
    "aopc_morf": float, "aopc_lerf": float, "abpc": float}`` with
    ``abpc = aopc_morf - aopc_lerf``.
    """
    morf = region_perturbation(forward_fn, x, relevance, target, order="morf", **options)
    lerf = region_perturbation(forward_fn, x, relevance, target, order="lerf", **options)
    return {"morf": morf, "lerf": lerf, "aopc_morf": morf.aopc, "aopc_lerf": lerf.aopc, "abpc": morf.aopc - lerf.aopc}
