"""Model-parameter randomization sanity check, cascading from the top layer.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim, "Sanity checks for saliency
maps", NeurIPS 2018. An explanation that depends on what the model learned
must change when the learned weights are destroyed.

Procedure: take the layers with parameters (Dense, Conv2D, BatchNorm) in
execution order ``l_1 .. l_L``. At step ``s = 1 .. L`` the layers
``l_L, l_{L-1}, .., l_{L-s+1}`` (the top ``s``) have random parameters: each
array is redrawn i.i.d. from ``N(0, std(original array)^2)`` with a seeded
generator (an all-constant array, e.g. zero biases, is kept), so every layer
keeps its scale and the logits stay in a comparable range. After each step the
same images are explained again for the same target classes.

Similarity per image between the original heatmap ``r`` and the randomized
one ``r'`` (both pooled over channels, ``r = sum_c R_c``): Spearman's rank
correlation

``rho = corr(rank(r), rank(r'))`` (Pearson correlation of the ranks, ties
given their average rank),

reported twice, as Adebayo et al. do: on the signed maps (``spearman``) and on
their absolute values (``spearman_abs``). The signed one sees a flip of sign;
the absolute one asks only whether the same pixels stay important. A sane
method falls towards 0 as more layers are randomized; an explanation that
stays correlated is insensitive to the model (e.g. an edge detector). NaN
where a map is constant (rank correlation undefined).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from ._common import as_batch, as_target

__all__ = ["RandomizationResult", "parameter_layers", "spearman_rows", "cascading_randomization"]


@dataclass
class RandomizationResult:
    """``layers[s]``: the layer randomized at step ``s`` (top first); ``spearman[s, n]``,
    ``spearman_abs[s, n]``: correlation of image ``n``'s heatmap after step ``s`` with the original."""

    layers: list[str]
    spearman: np.ndarray
    spearman_abs: np.ndarray
    nonfinite_steps: list[str] = field(default_factory=list)

    def mean(self, absolute: bool = False) -> np.ndarray:
        """Mean correlation over images per step (NaN-aware)."""
        values = self.spearman_abs if absolute else self.spearman
        with np.errstate(invalid="ignore"):
            return np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in values])


def parameter_layers(model) -> list:
    """Leaf layers of ``model`` that carry parameters, in execution order."""
    return [layer for layer in model.iter_layers() if layer.params]


def spearman_rows(a, b) -> np.ndarray:
    """Spearman rank correlation of ``a[n].ravel()`` with ``b[n].ravel()`` for every ``n``.

    NaN where either row is constant. Ties take their average rank.
    """
    a = np.asarray(a, dtype=np.float64).reshape(np.shape(a)[0], -1)
    b = np.asarray(b, dtype=np.float64).reshape(np.shape(b)[0], -1)
    if a.shape != b.shape:
        raise ValueError(f"spearman: expected two batches of one shape, found {a.shape} and {b.shape}")
    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


def _pooled(relevance):
    r = np.asarray(relevance, dtype=np.float64)
    return r.sum(axis=-1) if r.ndim == 4 else r


def _randomize(layer, rng) -> None:
    new = {}
    for pname, value in layer.params.items():
        std = float(np.std(value))
        new[pname] = rng.normal(0.0, std, size=value.shape).astype(value.dtype) if std > 0 else value
    if "moving_variance" in new:
        new["moving_variance"] = np.abs(new["moving_variance"])  # a variance must stay >= 0
    layer.set_params(**new)


def cascading_randomization(explain_model, model, x, target, *, seed: int = 0, original=None, progress=None) -> RandomizationResult:
    """Run the cascading randomization check (formula in the module docstring).

    ``explain_model(model, x, target) -> relevance`` explains with any method;
    ``model`` is left untouched (a deep copy is randomized). ``original``: the
    heatmap of the intact model if already computed. ``progress``: called with
    no argument after each step (for a progress bar).
    """
    x = as_batch(x)
    target = as_target(target, x.shape[0])
    if original is None:
        original = explain_model(model, x, target)
    base = np.nan_to_num(_pooled(original), nan=0.0, posinf=0.0, neginf=0.0)
    randomized = model.copy()
    layers = parameter_layers(randomized)
    if not layers:
        raise ValueError(f"model '{getattr(model, 'name', model)}': no layer with parameters to randomize")
    rng = np.random.default_rng(seed)
    names, signed, absolute, nonfinite = [], [], [], []
    for layer in reversed(layers):
        _randomize(layer, rng)
        relevance = _pooled(explain_model(randomized, x, target))
        if not np.all(np.isfinite(relevance)):
            nonfinite.append(layer.name)
            relevance = np.nan_to_num(relevance, nan=0.0, posinf=0.0, neginf=0.0)
        names.append(layer.name)
        signed.append(spearman_rows(base, relevance))
        absolute.append(spearman_rows(np.abs(base), np.abs(relevance)))
        if progress is not None:
            progress()
    return RandomizationResult(names, np.array(signed), np.array(absolute), nonfinite)
