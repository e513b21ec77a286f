"""Canonization: rewrite a model into an equivalent one that relevance rules can read.

:func:`fold_batchnorm` folds every inference BatchNorm into the Dense or Conv2D
right before it (as Zennit's ``SequentialMergeBatchNorm`` canonizer does):

``BN(x W + b) = x (W * s) + ((b - mu) * s + beta)`` with ``s = gamma / sqrt(var + eps)``,

the scale ``s`` applied to the kernel's output axis.
"""

from __future__ import annotations

import copy

import numpy as np

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
    folded.kernel = (linear.kernel * scale).astype(dtype, copy=False)
    folded.bias = (bias * scale + shift).astype(dtype, copy=False)
    return folded


def _fold(layer: Layer) -> Layer:
    if isinstance(layer, Sequential):
        out: list[Layer] = []
        for child in layer.layers:
            if isinstance(child, BatchNorm) and out and isinstance(out[-1], (Dense, Conv2D)):
                out[-1] = fold_into(out[-1], child)
            else:
                out.append(_fold(child))
        new = Sequential.__new__(Sequential)
        new.__dict__.update(layer.__dict__)
        new.layers = out
        return new
    if isinstance(layer, Residual):
        new = Residual.__new__(Residual)
        new.__dict__.update(layer.__dict__)
        new.branch = _fold(layer.branch)
        new.skip = _fold(layer.skip) if layer.skip is not None else None
        return new
    if isinstance(layer, Container):
        raise ValueError(f"fold_batchnorm: unknown container kind {type(layer).__name__}")
    return layer.copy()


def fold_batchnorm(model: Layer) -> Layer:
    """A new model with each BatchNorm folded into the Dense/Conv2D right before it.

    The input model is untouched. A BatchNorm that does not follow a Dense or
    Conv2D in the same Sequential is kept (see :func:`unfolded_batchnorms`).
    """
    return _fold(model)


def unfolded_batchnorms(model: Layer) -> list[str]:
    """Names of the BatchNorm layers still present in ``model``."""
    return [layer.name for layer in model.iter_layers() if isinstance(layer, BatchNorm)]
