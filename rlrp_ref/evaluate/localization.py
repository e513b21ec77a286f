"""Ground-truth localization: relevance mass accuracy and relevance rank accuracy.

Definitions of Arras, Osman, Samek, "CLEVR-XAI: A benchmark dataset for the
ground truth evaluation of neural network explanations", Information Fusion 81
(2022), computed on a pixel heatmap ``r[h, w]`` pooled over channels and a
ground-truth mask ``GT`` (the pixels of the object):

- relevance mass accuracy ``= R_within / R_total`` with
  ``R_within = sum_{p in GT} r_p`` and ``R_total = sum_p r_p``:
  the share of the heatmap's mass that falls on the object;
- relevance rank accuracy ``= |P_top-K ∩ GT| / K`` with ``K = |GT|`` and
  ``P_top-K`` the ``K`` pixels of highest ``r``: the share of the ``K`` most
  relevant pixels that lie on the object.

Both are in ``[0, 1]``; higher is better; a heatmap equal to the mask scores 1
on both. Pooling over channels (as in the paper's evaluation code):

- ``"sum,pos"`` (default): ``max(sum_c R_c, 0)``, only positive evidence counts;
- ``"sum,abs"``: ``|sum_c R_c|``;
- ``"l2-norm,sq"``: ``sum_c R_c^2``.

Undefined cases give NaN, never a silent number: mass accuracy when
``R_total == 0`` (an all-zero or all-negative heatmap under ``"sum,pos"``),
both metrics when the mask is empty. Rank ties are broken by a seeded random
order, so a flat heatmap scores the chance level ``|GT| / (H W)`` on average.
"""

from __future__ import annotations

import numpy as np

from ._common import spatial_map

__all__ = ["POOLINGS", "pool_channels", "relevance_mass_accuracy", "relevance_rank_accuracy"]

POOLINGS = ("sum,pos", "sum,abs", "l2-norm,sq")


def pool_channels(relevance, pooling: str = "sum,pos") -> np.ndarray:
    """Pixel heatmap ``(N, H, W)`` from relevance ``(N, H, W, C)`` (or ``(N, H, W)``)."""
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim not in (3, 4):
        raise ValueError(f"relevance: expected (N, H, W, C) or (N, H, W), found shape {r.shape}")
    if pooling == "sum,pos":
        return np.maximum(spatial_map(r), 0.0)
    if pooling == "sum,abs":
        return np.abs(spatial_map(r))
    if pooling == "l2-norm,sq":
        r = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
        return (r * r).sum(axis=-1) if r.ndim == 4 else r * r
    raise ValueError(f"pooling: expected one of {', '.join(POOLINGS)}, found {pooling!r}")


def _mask(mask, shape) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.shape != shape:
        raise ValueError(f"mask: expected shape {shape} (N, H, W), found {np.shape(mask)}")
    return m.astype(bool)


def relevance_mass_accuracy(relevance, mask, pooling: str = "sum,pos") -> np.ndarray:
    """``R_within / R_total`` per image, shape ``(N,)`` (NaN where undefined)."""
    r = pool_channels(relevance, pooling)
    m = _mask(mask, r.shape)
    within = (r * m).sum(axis=(1, 2))
    total = r.sum(axis=(1, 2))
    defined = (total > 0) & m.any(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, within / np.where(defined, total, 1.0), np.nan)


def relevance_rank_accuracy(relevance, mask, pooling: str = "sum,pos", seed: int = 0) -> np.ndarray:
    """``|top-K ∩ GT| / K`` with ``K = |GT|`` per image, shape ``(N,)`` (NaN for an empty mask)."""
    r = pool_channels(relevance, pooling)
    m = _mask(mask, r.shape)
    n = r.shape[0]
    flat_r = r.reshape(n, -1)
    flat_m = m.reshape(n, -1)
    k = flat_m.sum(axis=1)
    tie_break = np.random.default_rng(seed).random(flat_r.shape)
    sequence = np.lexsort((tie_break, -flat_r), axis=-1)  # most relevant first
    mask_in_order = np.take_along_axis(flat_m, sequence, axis=1)
    in_top_k = np.arange(flat_r.shape[1])[None, :] < k[:, None]
    hits = (mask_in_order & in_top_k).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k > 0, hits / np.maximum(k, 1), np.nan)
