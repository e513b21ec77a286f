"""Shared helpers of the metric modules: input checks, channel pooling, explainer adapters."""

from __future__ import annotations

from typing import Callable

import numpy as np

#: ``explain_fn(x, target) -> relevance``: ``x`` of shape ``(N, ...)``, ``target``
#: an int array ``(N,)``, relevance of the shape of ``x``.
ExplainFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: ``forward_fn(x) -> logits`` of shape ``(N, classes)``.
ForwardFn = Callable[[np.ndarray], np.ndarray]


def as_batch(x, what: str = "x") -> np.ndarray:
    """``x`` as a float array with a batch axis first (rank >= 2)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"{what}: expected a float array, found dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{what}: expected a batch (N, ...) of rank >= 2, found shape {x.shape}")
    return x


def as_target(target, n: int) -> np.ndarray:
    """``target`` (an int or ``n`` ints) as an int64 array of shape ``(n,)``."""
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise ValueError(f"target: expected integer class indices, found dtype {t.dtype}")
    t = np.broadcast_to(t.astype(np.int64), (n,)) if t.ndim == 0 else t.astype(np.int64)
    if t.shape != (n,):
        raise ValueError(f"target: expected shape ({n},), found {t.shape}")
    return np.ascontiguousarray(t)


def check_same_shape(relevance, x, what: str = "relevance") -> np.ndarray:
    relevance = np.asarray(relevance)
    if relevance.shape != np.shape(x):
        raise ValueError(f"{what}: expected the input's shape {np.shape(x)}, found {relevance.shape}")
    return relevance


def spatial_map(relevance) -> np.ndarray:
    """Relevance summed over channels: ``(N, H, W, C) -> (N, H, W)``; ``(N, D)`` is kept.

    Non-finite values are replaced by 0 for ordering purposes (they are counted
    by :func:`rlrp_ref.evaluate.robustness.nonfinite_share`, never hidden).
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 4:
        r = r.sum(axis=-1)
    elif r.ndim not in (2, 3):
        raise ValueError(f"relevance: expected (N, H, W, C), (N, H, W) or (N, D), found shape {r.shape}")
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


def method_explainer(method: str, **params) -> Callable[[object, np.ndarray, np.ndarray], np.ndarray]:
    """``(model, x, target) -> relevance`` through :func:`rlrp_ref.explain` with a fixed method."""

    def explain_model(model, x, target):
        from ..explain import explain

        return np.asarray(explain(model, x, target=target, method=method, **params).relevance)

    explain_model.__name__ = f"explain_{method}"
    return explain_model


def bind_model(explain_model, model) -> ExplainFn:
    """``explain_fn(x, target)`` for one model from ``explain_model(model, x, target)``."""

    def explain_fn(x, target):
        return explain_model(model, x, target)

    return explain_fn


def target_scores(logits, target) -> np.ndarray:
    """``logits[n, target[n]]`` for every ``n``."""
    logits = np.asarray(logits)
    return np.take_along_axis(logits, np.asarray(target)[:, None], axis=1)[:, 0]
