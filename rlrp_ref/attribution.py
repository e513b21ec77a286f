"""Gradient-based baselines on the same ``vjp`` machinery as the relevance rules.

Each function takes the model, an input batch ``x`` (N, ...) and ``output_grad``
(N, classes): the vector ``v`` of the vector-Jacobian product, i.e. the
attribution at the output (a one-hot ``e_c`` for "the gradient of logit c").
Everything is vectorized over the batch; integrated gradients and SmoothGrad
loop only over their steps / noise samples, each a forward trace plus a vjp.

- gradient: ``d <v, f(x)> / dx``                       (Simonyan et al., 2014)
- gradient x input: ``x * d <v, f(x)> / dx``            (Shrikumar et al., 2016)
- integrated gradients: ``(x - x0) * (1/m) sum_{k=1..m} grad(x0 + k/m (x - x0))``
  (Sundararajan et al., ICML 2017), the right Riemann sum with ``m`` steps, as
  Zennit's ``IntegratedGradients`` (alphas ``1/m, 2/m, ..., 1``);
- SmoothGrad: ``(1/n) sum_k grad(x + noise_k)``, ``noise_k ~ N(0, (sigma (max x - min x))^2)``
  per sample (Smilkov et al., 2017: ``sigma`` is their noise level
  ``sigma / (x_max - x_min)``). Unlike Zennit, which makes its last sample
  noise-free, all ``n`` samples here are noisy, as in the paper.
"""

from __future__ import annotations

import numpy as np

from .model import Trace


def gradient(model, x, output_grad, trace: Trace | None = None) -> np.ndarray:
    """``d <output_grad, model(x)> / dx``; pass ``trace`` to reuse a forward pass already run."""
    return model.vjp(x, output_grad, trace=trace)


def gradient_x_input(model, x, output_grad, trace: Trace | None = None) -> np.ndarray:
    """``x * gradient``."""
    grad = gradient(model, x, output_grad, trace)
    grad *= x
    return grad


def integrated_gradients(model, x, output_grad, steps: int = 20, baseline=None) -> np.ndarray:
    """``(x - x0) * mean_{k=1..steps} grad(x0 + (k/steps) (x - x0))`` with ``x0 = baseline`` (default 0)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"integrated_gradients: steps expected an int >= 1, found {steps!r}")
    x0 = np.zeros_like(x) if baseline is None else np.asarray(baseline, dtype=x.dtype)
    try:
        x0 = np.broadcast_to(x0, x.shape)
    except ValueError:
        raise ValueError(f"integrated_gradients: baseline of shape {np.shape(baseline)} does not broadcast to the input {x.shape}") from None
    if not np.all(np.isfinite(x0)):
        raise ValueError("integrated_gradients: expected a finite baseline, found NaN or inf")
    delta = x - x0
    total = np.zeros_like(x)
    for k in range(1, steps + 1):
        point = x0 + x.dtype.type(k / steps) * delta
        total += gradient(model, point, output_grad)
    total *= delta
    total /= x.dtype.type(steps)
    return total


def smoothgrad(model, x, output_grad, n: int = 20, sigma: float = 0.1, seed: int | None = 0) -> np.ndarray:
    """``mean_k grad(x + noise_k)`` over ``n`` Gaussian perturbations of std ``sigma * (max x - min x)`` per sample."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"smoothgrad: n expected an int >= 1, found {n!r}")
    sigma = float(sigma)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"smoothgrad: sigma expected a finite value >= 0, found {sigma!r}")
    rng = np.random.default_rng(seed)
    axes = tuple(range(1, x.ndim))
    std = (sigma * (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True))).astype(x.dtype)
    total = np.zeros_like(x)
    for _ in range(n):
        noise = rng.standard_normal(x.shape).astype(x.dtype, copy=False)
        noise *= std
        noise += x
        total += gradient(model, noise, output_grad)
    total /= x.dtype.type(n)
    return total


#: method name -> (function, its parameters beyond model/x/output_grad)
GRADIENT_METHODS = {
    "gradient": gradient,
    "gradient_x_input": gradient_x_input,
    "integrated_gradients": integrated_gradients,
    "smoothgrad": smoothgrad,
}

__all__ = ["GRADIENT_METHODS", "gradient", "gradient_x_input", "integrated_gradients", "smoothgrad"]
