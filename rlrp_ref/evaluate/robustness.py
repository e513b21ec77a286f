"""Robustness of an explanation: to input noise, and numerical.

Input noise. For an explanation ``Phi(x)`` (the relevance, flattened) and
``n`` perturbations ``delta_j`` drawn i.i.d. uniformly from the L-infinity
ball of radius ``r`` (``delta_j ~ U([-r, r]^d)``, seeded), both estimated by
Monte Carlo with the same samples and the same target class as at ``x``:

- max-sensitivity (Yeh, Hsieh, Suggala, Inouye, Ravikumar, "On the (in)fidelity
  and sensitivity of explanations", NeurIPS 2019):
  ``SENS_max(x) = max_j ||Phi(x + delta_j) - Phi(x)||_2``.
  Methods differ in scale (an R-LRP heatmap has L1 mass ``|f_c(x)|``, a
  gradient map does not), so the comparable number is the relative one,
  ``SENS_max(x) / ||Phi(x)||_2``, reported beside the absolute one.
- local Lipschitz estimate (Alvarez-Melis, Jaakkola, "On the robustness of
  interpretability methods", ICML 2018 WHI workshop):
  ``L(x) = max_j ||Phi(x + delta_j) - Phi(x)||_2 / ||delta_j||_2``.
  Like the absolute sensitivity it is in the explanation's units.

Lower is more robust for all three. A constant explainer scores 0; the
identity explainer ``Phi(x) = x`` has ``L(x) = 1`` exactly and
``SENS_max(x) = max_j ||delta_j||_2``, about ``r sqrt(d / 3)`` for large ``d``.
With ``clip=(low, high)`` the perturbed input is clipped to the data range and
``delta_j`` is the difference actually applied.

Numerical robustness (the failure R-LRP is designed against, RLRP_SPEC.md C1):

- the share of inputs whose relevance has any non-finite value (NaN or inf);
- the blow-up ratio ``max_i |R_i| / |f_c(x)|`` per input, with ``f_c(x)`` the
  explained logit. R-LRP guarantees ``<= 1`` (the spec's bound); a rule that
  divides by a small value can exceed it by orders of magnitude. When the
  explanation starts from another output relevance (e.g. a one-hot vector),
  the reference is that start's L1 mass ``||R^(L)||_1`` instead, which is what
  R-LRP's bound is stated against (``|f_c(x)|`` is the default start's mass).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import as_batch, as_target

__all__ = [
    "NoiseRobustness",
    "input_noise_robustness",
    "max_sensitivity",
    "local_lipschitz",
    "nonfinite_mask",
    "nonfinite_share",
    "blowup_ratio",
    "numerical_robustness",
]


@dataclass
class NoiseRobustness:
    """Per-image results ``(N,)``: ``sensitivity`` (absolute SENS_max),
    ``relative_sensitivity`` (divided by ``||Phi(x)||_2``), ``lipschitz``."""

    radius: float
    n_samples: int
    sensitivity: np.ndarray
    relative_sensitivity: np.ndarray
    lipschitz: np.ndarray


def _flat_norm(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.sqrt((a.reshape(a.shape[0], -1) ** 2).sum(axis=1))


def input_noise_robustness(
    explain_fn,
    x,
    target,
    *,
    radius: float,
    n_samples: int = 10,
    seed: int = 0,
    clip=None,
    original=None,
    progress=None,
) -> NoiseRobustness:
    """Max-sensitivity and local Lipschitz estimate from one set of samples.

    ``explain_fn(x, target) -> relevance``; ``original``: ``Phi(x)`` if already
    computed; ``progress``: called with no argument after each sample. Each
    sample explains the whole batch in one call. A non-finite explanation
    gives ``inf``.
    """
    x = as_batch(x)
    target = as_target(target, x.shape[0])
    if not radius > 0:
        raise ValueError(f"radius: expected > 0, found {radius!r}")
    if int(n_samples) < 1:
        raise ValueError(f"n_samples: expected >= 1, found {n_samples!r}")
    if original is None:
        original = explain_fn(x, target)
    original = np.asarray(original, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    sensitivity = np.zeros(n)
    lipschitz = np.zeros(n)
    for _ in range(int(n_samples)):
        perturbed = x + rng.uniform(-radius, radius, size=x.shape).astype(x.dtype)
        if clip is not None:
            perturbed = np.clip(perturbed, clip[0], clip[1])
        step = _flat_norm(perturbed - x)
        change = _flat_norm(np.asarray(explain_fn(perturbed, target), dtype=np.float64) - original)
        change = np.where(np.isfinite(change), change, np.inf)
        sensitivity = np.maximum(sensitivity, change)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(step > 0, change / np.where(step > 0, step, 1.0), 0.0)
        lipschitz = np.maximum(lipschitz, ratio)
        if progress is not None:
            progress()
    scale = _flat_norm(np.nan_to_num(original, nan=0.0, posinf=0.0, neginf=0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(scale > 0, sensitivity / np.where(scale > 0, scale, 1.0), np.where(sensitivity > 0, np.inf, 0.0))
    return NoiseRobustness(float(radius), int(n_samples), sensitivity, relative, lipschitz)


def max_sensitivity(explain_fn, x, target, *, radius: float, n_samples: int = 10, seed: int = 0, relative: bool = False, **options) -> np.ndarray:
    """``SENS_max`` per image (``relative=True``: divided by ``||Phi(x)||_2``)."""
    result = input_noise_robustness(explain_fn, x, target, radius=radius, n_samples=n_samples, seed=seed, **options)
    return result.relative_sensitivity if relative else result.sensitivity


def local_lipschitz(explain_fn, x, target, *, radius: float, n_samples: int = 10, seed: int = 0, **options) -> np.ndarray:
    """Monte Carlo local Lipschitz estimate ``L(x)`` per image."""
    return input_noise_robustness(explain_fn, x, target, radius=radius, n_samples=n_samples, seed=seed, **options).lipschitz


def nonfinite_mask(relevance) -> np.ndarray:
    """``(N,)`` True for each input whose relevance has a NaN or an inf."""
    r = np.asarray(relevance)
    return ~np.isfinite(r.reshape(r.shape[0], -1)).all(axis=1)


def nonfinite_share(relevance) -> float:
    """Share of inputs whose relevance has any non-finite value."""
    return float(nonfinite_mask(relevance).mean())


def blowup_ratio(relevance, reference) -> np.ndarray:
    """``max_i |R_i| / |reference|`` per input, ``(N,)``; ``reference`` is the explained
    logit ``f_c(x)`` (or the start's L1 mass, see the module docstring).

    ``inf`` for a non-finite relevance, and for a nonzero relevance at a zero
    reference; 0 for an all-zero relevance.
    """
    r = np.abs(np.asarray(relevance, dtype=np.float64))
    r = r.reshape(r.shape[0], -1)
    peak = np.where(nonfinite_mask(r), np.inf, np.nan_to_num(r, nan=0.0).max(axis=1))
    logit = np.abs(np.asarray(reference, dtype=np.float64))
    if logit.shape != peak.shape:
        raise ValueError(f"reference: expected shape {peak.shape}, found {logit.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(peak == 0, 0.0, np.where(logit > 0, peak / np.where(logit > 0, logit, 1.0), np.inf))


def numerical_robustness(relevance, reference) -> dict:
    """Summary over a batch: ``nonfinite_share``, ``nonfinite_count``, and the
    blow-up ratio's ``ratio_median`` and ``ratio_max`` over the inputs with
    finite relevance (NaN when there is none), ``ratio_over_1`` the share of
    those above 1 + 1e-9 (R-LRP's bound, beyond rounding)."""
    bad = nonfinite_mask(relevance)
    ratio = blowup_ratio(relevance, reference)[~bad]
    return {
        "n": int(bad.size),
        "nonfinite_count": int(bad.sum()),
        "nonfinite_share": float(bad.mean()) if bad.size else float("nan"),
        "ratio_median": float(np.median(ratio)) if ratio.size else float("nan"),
        "ratio_max": float(ratio.max()) if ratio.size else float("nan"),
        "ratio_over_1": float((ratio > 1 + 1e-9).mean()) if ratio.size else float("nan"),
    }
