"""Where a builder's parameters come from: :class:`ParamInit`.

Builders create every parameter through ``init(role, shape)`` so that
:func:`rlrp_ref.models.build` decides what the arrays hold and in which dtype,
without the builder knowing whether weights will be loaded afterwards.
"""

from __future__ import annotations

import math

import numpy as np

#: The roles a builder asks for; every parameter of every rlrp_ref layer is one of them.
ROLES = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")
_ONES = ("gamma", "moving_variance")


class ParamInit:
    """``init(role, shape) -> array`` for one model build.

    ``mode="random"``: kernels He-normal, ``N(0, 2 / fan_in)`` with
    ``fan_in = prod(shape[:-1])`` (the input size of a Dense kernel, ``kh * kw * cin``
    of a conv kernel), drawn in creation order from ``numpy.random.default_rng(seed)``;
    biases, ``beta`` and ``moving_mean`` zeros; ``gamma`` and ``moving_variance``
    ones (a BatchNorm that is the identity up to ``epsilon``).

    ``mode="shape"``: read-only zero-stride placeholders (zeros, ones for
    ``gamma``/``moving_variance``) that take no memory. They give a model its
    structure and parameter shapes, for weights to be loaded into it or for
    comparing shapes against a file.
    """

    def __init__(self, mode: str = "random", dtype="float32", seed: int = 0):
        if mode not in ("random", "shape"):
            raise ValueError(f"ParamInit: mode expected 'random' or 'shape', found {mode!r}")
        self.mode = mode
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"ParamInit: dtype expected a float dtype such as 'float32' or 'float64', found {dtype!r}")
        self.rng = np.random.default_rng(seed)

    def __call__(self, role: str, shape) -> np.ndarray:
        shape = tuple(int(n) for n in shape)
        if role not in ROLES:
            raise ValueError(f"ParamInit: role expected one of {ROLES}, found {role!r}")
        fill = 1.0 if role in _ONES else 0.0
        if self.mode == "shape":
            return np.broadcast_to(np.asarray(fill, dtype=self.dtype), shape)
        if role == "kernel":
            fan_in = math.prod(shape[:-1])
            std = math.sqrt(2.0 / fan_in)
            native = self.dtype if self.dtype in (np.float32, np.float64) else np.float64
            out = self.rng.standard_normal(shape, dtype=native)
            out *= native.type(std)
            return out.astype(self.dtype, copy=False)
        return np.full(shape, fill, dtype=self.dtype)
