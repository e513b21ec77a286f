"""Padding, cropping and window views of NHWC arrays.

A 2-D sliding window over a padded input ``xp`` of shape ``(N, Hp, Wp, C)``
is read through :func:`numpy.lib.stride_tricks.sliding_window_view` (no copy).
Window offsets ``(i, j)`` run over ``range(kh) x range(kw)`` in row-major
order (flat window index ``k = i * kw + j``); output pixel ``(p, q)`` reads
padded input pixel ``(p * sh + i, q * sw + j)``.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import scratch
from .threads import parallel_rows

Pads = tuple[tuple[int, int], tuple[int, int]]


def as_pair(value, what: str = "value") -> tuple[int, int]:
    """Return ``(a, b)`` from an int or a pair of ints."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected an int or a pair of ints, found {value!r}") from None
    return int(a), int(b)


def resolve_padding(padding, in_hw, kernel_hw, strides) -> Pads:
    """Explicit ``((top, bottom), (left, right))`` padding for a 2-D window op.

    ``"valid"``: no padding. ``"same"``: the TensorFlow/Keras rule,
    ``out = ceil(in / s)``, ``total = max((out - 1) * s + k - in, 0)``,
    ``top = total // 2``, ``bottom = total - top`` (the odd extra row or column
    goes bottom/right). An explicit ``((t, b), (l, r))`` or ``(ph, pw)`` or an int
    is returned as is.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode == "same":
            pads = []
            for n, k, s in zip(in_hw, kernel_hw, strides):
                out = -(-n // s)
                total = max((out - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            return pads[0], pads[1]
        raise ValueError(f"padding: expected 'valid', 'same' or ((top, bottom), (left, right)), found {padding!r}")
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        return (p, p), (p, p)
    try:
        ph, pw = padding
    except (TypeError, ValueError):
        raise ValueError(f"padding: expected 'valid', 'same' or ((top, bottom), (left, right)), found {padding!r}") from None
    top_bottom, left_right = as_pair(ph, "padding"), as_pair(pw, "padding")
    if min(top_bottom + left_right) < 0:
        raise ValueError(f"padding: expected non-negative amounts, found {padding!r}")
    return top_bottom, left_right


def output_hw(padded_hw, kernel_hw, strides) -> tuple[int, int]:
    """Output size of a window op on an already padded input: ``(Hp - kh) // sh + 1``."""
    return tuple((n - k) // s + 1 for n, k, s in zip(padded_hw, kernel_hw, strides))


def pad_nhwc(x: np.ndarray, pads: Pads, value: float = 0.0, slot: str | None = None) -> np.ndarray:
    """Pad the spatial axes of an NHWC array (returns ``x`` itself when no padding).

    ``slot`` names a :func:`~rlrp_ref.kernels.scratch.buffer` to pad into, for a padded copy that
    is read once right away (a convolution's operand) and never returned.
    """
    (t, b), (l, r) = pads
    if t == b == l == r == 0:
        return x
    n, h, w, c = x.shape
    shape = (n, h + t + b, w + l + r, c)
    out = scratch.buffer(shape, x.dtype, slot) if slot else np.empty(shape, dtype=x.dtype)
    # fill only the border, then copy the interior once (bands of rows on the element-wise threads)
    out[:, :t] = value
    out[:, t + h :] = value
    out[:, t : t + h, :l] = value
    out[:, t : t + h, l + w :] = value

    def interior(lo, hi):
        out[:, t + lo : t + hi, l : l + w] = x[:, lo:hi]

    parallel_rows(interior, h, x.size)
    return out


def crop_nhwc(xp: np.ndarray, pads: Pads) -> np.ndarray:
    """Inverse of :func:`pad_nhwc`: a view with the padding removed."""
    (t, b), (l, r) = pads
    return xp[:, t : xp.shape[1] - b, l : xp.shape[2] - r, :]


def padded_shape_of(input_shape, pads: Pads) -> tuple[int, int, int, int]:
    """Shape ``(N, Hp, Wp, C)`` of an NHWC input of ``input_shape`` after :func:`pad_nhwc`."""
    (t, b), (l, r) = pads
    n, h, w, c = input_shape
    return n, h + t + b, w + l + r, c


def windows(xp: np.ndarray, kernel_hw, strides) -> np.ndarray:
    """Read-only view ``(N, Ho, Wo, C, kh, kw)`` of every window of a padded input."""
    kh, kw = kernel_hw
    sh, sw = strides
    view = sliding_window_view(xp, (kh, kw), axis=(1, 2))
    return view[:, ::sh, ::sw]
