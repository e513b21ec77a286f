"""The vectorized kernels that convolution and pooling share.

Everything here works on NHWC arrays. A 2-D sliding window over a padded input
``xp`` of shape ``(N, Hp, Wp, C)`` is read through
:func:`numpy.lib.stride_tricks.sliding_window_view` (no copy); the one copy a
convolution makes is the im2col matrix that feeds a single GEMM.

Index conventions (used by every layer and every rule):

- window offsets ``(i, j)`` run over ``range(kh) x range(kw)`` in row-major
  order; flat window index ``k = i * kw + j``;
- output pixel ``(p, q)`` reads padded input pixel
  ``(p * sh + i, q * sw + j)``.

Backward maps (col2im, pooling vjps) accumulate over the ``kh * kw`` kernel
offsets: a loop of at most a few dozen vectorized slice-adds, never a loop over
pixels, channels or batch items.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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


def pad_nhwc(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """Pad the spatial axes of an NHWC array (returns ``x`` itself when no padding)."""
    (t, b), (l, r) = pads
    if t == b == l == r == 0:
        return x
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), mode="constant", constant_values=value)


def crop_nhwc(xp: np.ndarray, pads: Pads) -> np.ndarray:
    """Inverse of :func:`pad_nhwc`: a view with the padding removed."""
    (t, b), (l, r) = pads
    return xp[:, t : xp.shape[1] - b, l : xp.shape[2] - r, :]


def windows(xp: np.ndarray, kernel_hw, strides) -> np.ndarray:
    """Read-only view ``(N, Ho, Wo, C, kh, kw)`` of every window of a padded input."""
    kh, kw = kernel_hw
    sh, sw = strides
    view = sliding_window_view(xp, (kh, kw), axis=(1, 2))
    return view[:, ::sh, ::sw]


def im2col(xp: np.ndarray, kernel_hw, strides) -> np.ndarray:
    """The im2col matrix ``(N * Ho * Wo, kh * kw * C)``, columns in ``(i, j, c)`` order.

    That order matches a Keras kernel ``(kh, kw, cin, cout)`` reshaped to
    ``(kh * kw * cin, cout)``, so a convolution is ``im2col(xp) @ kernel2d``.
    """
    n, c = xp.shape[0], xp.shape[3]
    kh, kw = kernel_hw
    win = windows(xp, kernel_hw, strides)
    ho, wo = win.shape[1], win.shape[2]
    cols = np.empty((n, ho, wo, kh, kw, c), dtype=xp.dtype)
    # one gather, written straight into the GEMM's operand
    np.copyto(cols, win.transpose(0, 1, 2, 4, 5, 3))
    return cols.reshape(n * ho * wo, kh * kw * c)


def col2im(cols: np.ndarray, padded_shape, kernel_hw, strides) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add ``(N, Ho, Wo, kh, kw, C)`` into the padded input.

    ``out[:, p*sh + i, q*sw + j, :] += cols[:, p, q, i, j, :]``, accumulated
    with one vectorized slice-add per kernel offset ``(i, j)``.
    """
    n, ho, wo, kh, kw, c = cols.shape
    sh, sw = strides
    out = np.zeros(padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] += cols[:, :, :, i, j, :]
    return out


def conv2d_forward(x, kernel, bias, strides, pads) -> np.ndarray:
    """``y[n,p,q,o] = sum_{i,j,c} xp[n, p*sh+i, q*sw+j, c] * kernel[i,j,c,o] + bias[o]``: im2col + one GEMM."""
    kh, kw, cin, cout = kernel.shape
    xp = pad_nhwc(x, pads)
    ho, wo = output_hw(xp.shape[1:3], (kh, kw), strides)
    cols = im2col(xp, (kh, kw), strides)
    y = cols @ kernel.reshape(kh * kw * cin, cout)
    if bias is not None:
        y += bias
    return y.reshape(x.shape[0], ho, wo, cout)


def conv2d_vjp(grad, kernel, input_shape, strides, pads) -> np.ndarray:
    """Input gradient of a convolution: one GEMM ``grad @ kernel2d.T`` then :func:`col2im`."""
    kh, kw, cin, cout = kernel.shape
    n, ho, wo, _ = grad.shape
    (t, b), (l, r) = pads
    padded_shape = (n, input_shape[1] + t + b, input_shape[2] + l + r, cin)
    cols = grad.reshape(n * ho * wo, cout) @ kernel.reshape(kh * kw * cin, cout).T
    xp_grad = col2im(cols.reshape(n, ho, wo, kh, kw, cin), padded_shape, (kh, kw), strides)
    return np.ascontiguousarray(crop_nhwc(xp_grad, pads))


def scatter_windows(values_per_offset, padded_shape, kernel_hw, strides, dtype) -> np.ndarray:
    """Scatter-add per-offset values back to the padded input.

    ``values_per_offset(i, j)`` returns the ``(N, Ho, Wo, C)`` contribution of
    window offset ``(i, j)``; they are summed into their input positions.
    Pooling vjps use it, with one call per offset.
    """
    kh, kw = kernel_hw
    sh, sw = strides
    out = np.zeros(padded_shape, dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            v = values_per_offset(i, j)
            ho, wo = v.shape[1], v.shape[2]
            out[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] += v
    return out


def maxpool_forward(x, pool, strides, pads):
    """``y[n,p,q,c] = max_{i,j} xp[n, p*sh+i, q*sw+j, c]``, padding with ``-inf``."""
    xp = pad_nhwc(x, pads, value=-np.inf)
    return windows(xp, pool, strides).max(axis=(-2, -1))


def maxpool_winner(x, pool, strides, pads) -> np.ndarray:
    """Flat window index ``k = i * kw + j`` of each window's maximum (ties: the first in row-major order)."""
    xp = pad_nhwc(x, pads, value=-np.inf)
    win = windows(xp, pool, strides)
    flat = win.reshape(win.shape[:4] + (pool[0] * pool[1],))
    return flat.argmax(axis=-1)


def maxpool_vjp(x, grad, pool, strides, pads) -> np.ndarray:
    """Route each output gradient to its window's winner (:func:`maxpool_winner`)."""
    winner = maxpool_winner(x, pool, strides, pads)
    (t, b), (l, r) = pads
    padded_shape = (x.shape[0], x.shape[1] + t + b, x.shape[2] + l + r, x.shape[3])
    kw = pool[1]
    out = scatter_windows(lambda i, j: np.where(winner == i * kw + j, grad, 0), padded_shape, pool, strides, grad.dtype)
    return np.ascontiguousarray(crop_nhwc(out, pads))


def avgpool_counts(input_hw, pool, strides, pads, dtype) -> np.ndarray:
    """Number of real (non-padding) inputs in each window, shape ``(1, Ho, Wo, 1)``.

    Keras/TensorFlow average pooling with ``"same"`` padding divides by this
    count, not by ``kh * kw``; with ``"valid"`` padding it equals ``kh * kw``.
    """
    ones = np.ones((1,) + tuple(input_hw) + (1,), dtype=dtype)
    return windows(pad_nhwc(ones, pads), pool, strides).sum(axis=(-2, -1))


def avgpool_forward(x, pool, strides, pads):
    """``y = sum_{window} xp / count`` (count excludes padding, as Keras does)."""
    xp = pad_nhwc(x, pads)
    sums = windows(xp, pool, strides).sum(axis=(-2, -1))
    return sums / avgpool_counts(x.shape[1:3], pool, strides, pads, x.dtype)


def avgpool_vjp(x, grad, pool, strides, pads) -> np.ndarray:
    """Spread ``grad / count`` evenly over each window."""
    share = grad / avgpool_counts(x.shape[1:3], pool, strides, pads, grad.dtype)
    (t, b), (l, r) = pads
    padded_shape = (x.shape[0], x.shape[1] + t + b, x.shape[2] + l + r, x.shape[3])
    out = scatter_windows(lambda i, j: share, padded_shape, pool, strides, grad.dtype)
    return np.ascontiguousarray(crop_nhwc(out, pads))
