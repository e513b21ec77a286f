"""Canonization: rewrite a model into an equivalent one that relevance rules can read.

:func:`fold_batchnorm` folds every inference BatchNorm into the Dense or Conv2D
right before it (as Zennit's ``SequentialMergeBatchNorm`` canonizer does):

``BN(x W + b) = x (W * s) + ((b - mu) * s + beta)`` with ``s = gamma / sqrt(var + eps)``,

the scale ``s`` applied to the kernel's output axis.
"""

from __future__ import annotations

import copy

import numpy as np

from . import kernels
from .layers import BatchNorm, Conv2D, Dense, Layer
from .model import Container, Residual, Sequential


def fold_into(linear: Layer, bn: BatchNorm) -> Layer:
    """A copy of ``linear`` (Dense or Conv2D) with ``bn`` folded in; it keeps the linear layer's name."""
    out_channels = linear.kernel.shape[-1]
    if bn.channels != out_channels:
        raise ValueError(f"{bn.desc}: expected {out_channels} channels to fold into {linear.desc}, found {bn.channels}")
    scale, shift = bn.scale_shift()
    dtype = np.result_type(linear.kernel, scale)
    bias = linear.bias if linear.bias is not None else np.zeros(out_channels, dtype=dtype)
    # a shallow copy: both parameters are replaced by new arrays right away, so copying the old ones is wasted work
    folded = copy.copy(linear)
    kernel = np.ascontiguousarray(linear.kernel)
    folded.kernel = kernels.channelwise(lambda out, w, s: np.multiply(w, s, out=out),
                                        np.empty(kernel.shape, dtype=dtype), kernel, scale.astype(dtype))
    folded.bias = (bias * scale + shift).astype(dtype, copy=False)
    return folded


def _fold(layer: Layer, copy_unchanged: bool) -> Layer:
    if isinstance(layer, Sequential):
        out: list[Layer] = []
        for child in layer.layers:
            if isinstance(child, BatchNorm) and out and isinstance(out[-1], (Dense, Conv2D)):
                out[-1] = fold_into(out[-1], child)
            else:
                out.append(_fold(child, copy_unchanged))
        new = Sequential.__new__(Sequential)
        new.__dict__.update(layer.__dict__)
        new.layers = out
        return new
    if isinstance(layer, Residual):
        new = Residual.__new__(Residual)
        new.__dict__.update(layer.__dict__)
        new.branch = _fold(layer.branch, copy_unchanged)
        new.skip = _fold(layer.skip, copy_unchanged) if layer.skip is not None else None
        return new
    if isinstance(layer, Container):
        raise ValueError(f"fold_batchnorm: unknown container kind {type(layer).__name__}")
    return layer.copy() if copy_unchanged else layer


def fold_batchnorm(model: Layer, copy_unchanged: bool = True) -> Layer:
    """A new model with each BatchNorm folded into the Dense/Conv2D right before it.

    The input model is untouched. A BatchNorm that does not follow a Dense or
    Conv2D in the same Sequential is kept (see :func:`unfolded_batchnorms`).
    ``copy_unchanged=False`` shares the layers that folding does not change
    with the input model instead of copying them (what :func:`rlrp_ref.explain`
    does for its private, read-only copy).
    """
    return _fold(model, copy_unchanged)


def unfolded_batchnorms(model: Layer) -> list[str]:
    """Names of the BatchNorm layers still present in ``model``."""
    return [layer.name for layer in model.iter_layers() if isinstance(layer, BatchNorm)]
