"""The vectorized kernels that convolution and pooling share.

Everything here works on NHWC arrays. A 2-D sliding window over a padded input
``xp`` of shape ``(N, Hp, Wp, C)`` is read through
:func:`numpy.lib.stride_tricks.sliding_window_view` (no copy).

Index conventions (used by every layer and every rule):

- window offsets ``(i, j)`` run over ``range(kh) x range(kw)`` in row-major
  order; flat window index ``k = i * kw + j``;
- output pixel ``(p, q)`` reads padded input pixel
  ``(p * sh + i, q * sw + j)``.

Every matrix product goes through :func:`gemm` (NumPy's ``matmul``, i.e. the
BLAS NumPy is built with). A convolution takes one of three routes, all
computing the same sums:

- 1x1 kernel: the (strided) input *is* the GEMM operand, one GEMM;
- stride 1, enough channels, large maps: **shifted GEMMs**. Flattened to
  ``(N * Hp * Wp, C)``, the padded input is read at offset ``i * Wp + j`` as a
  contiguous block of rows, one per kernel offset, and ``kh * kw`` GEMMs
  accumulate into an output laid out on the padded ``Hp x Wp`` grid; the
  ``Wp - Wo`` extra columns and ``Hp - Ho`` extra rows of each image are
  computed and cropped off. The input is never copied; the price is the extra
  grid positions and one add per offset, so this route is taken only on large
  maps, where the im2col copy would be largest (:data:`SHIFTED_MAX_EXTRA`);
- otherwise: **im2col**, one copy of the windows into a
  ``(N * Ho * Wo, kh * kw * C)`` matrix and one GEMM.

The vjps mirror them: the shifted route accumulates ``grad @ kernel[i, j].T``
into shifted blocks of the padded input gradient; the im2col route runs one
GEMM and scatters it back with :func:`col2im`. Backward maps accumulate over
the ``kh * kw`` kernel offsets: a loop of at most a few dozen vectorized
operations, never a loop over pixels, channels or batch items.

Pooling with stride equal to the pool size and no padding (VGG's and most
CNNs' pooling) reads the input as ``(N, Ho, kh, Wo, kw, C)`` by a reshape; any
other pooling goes through the sliding-window views.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Pads = tuple[tuple[int, int], tuple[int, int]]

#: The shifted-GEMM convolution computes ``Hp * Wp`` grid positions for ``Ho * Wo``
#: outputs; it is used when the extra fraction is at most this (3x3 "same"
#: convolutions on maps of about 100x100 and larger), im2col otherwise.
SHIFTED_MAX_EXTRA = 0.05
#: ... and when the GEMMs' channel dimension is at least this (a 3-channel image
#: makes a GEMM too thin to run at full speed; im2col stacks its offsets instead).
SHIFTED_MIN_CHANNELS = 16


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
    n, h, w, c = x.shape
    out = np.empty((n, h + t + b, w + l + r, c), dtype=x.dtype)
    # fill only the border, then copy the interior once
    out[:, :t] = value
    out[:, t + h :] = value
    out[:, t : t + h, :l] = value
    out[:, t : t + h, l + w :] = value
    out[:, t : t + h, l : l + w] = x
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


# ---------------------------------------------------------------------------
# the one GEMM
# ---------------------------------------------------------------------------


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, accumulate: bool = False,
         scratch: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for 2-D arrays, written into ``out`` if given; ``accumulate=True`` adds it to ``out``.

    One BLAS GEMM through ``numpy.matmul``, in the operands' common dtype
    (float32 stays float32). BLAS takes transposed views (``kernel.T``)
    without a copy. ``matmul`` cannot add into its output, so ``accumulate``
    writes the product into ``scratch`` (an array of ``out``'s shape, reused
    across calls) and adds it.
    """
    if out is None:
        return np.matmul(a, b)
    if not accumulate:
        return np.matmul(a, b, out=out)
    if scratch is None:
        scratch = np.empty_like(out)
    np.matmul(a, b, out=scratch)
    out += scratch
    return out


# ---------------------------------------------------------------------------
# windows, im2col, col2im
# ---------------------------------------------------------------------------


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
    # one gather, written straight into the GEMM's operand (faster than a copy per offset)
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


# ---------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------


def _shifted_route(padded_hw, out_hw, kernel_hw, strides, channels: int) -> bool:
    """Whether the shifted-GEMM route is the faster one (see the module docstring)."""
    if tuple(strides) != (1, 1) or kernel_hw[0] * kernel_hw[1] == 1 or channels < SHIFTED_MIN_CHANNELS:
        return False
    grid = padded_hw[0] * padded_hw[1]
    return grid <= (1 + SHIFTED_MAX_EXTRA) * out_hw[0] * out_hw[1]


def _shifted_blocks(padded_shape, kernel_hw):
    """Row offsets ``i * Wp + j`` of the kernel offsets, and the block length, on the flattened grid.

    Output grid position ``r`` (row of the flattened ``(N * Hp * Wp, .)`` grid)
    reads input row ``r + i * Wp + j``. The last ``(kh - 1) * Wp + kw - 1`` grid
    positions would read past the end and are never valid outputs, so every
    block has ``rows = N * Hp * Wp - (kh - 1) * Wp - (kw - 1)`` rows; for a valid
    output (``p < Ho``, ``q < Wo``) all reads stay inside its own image.
    """
    n, hp, wp = padded_shape[:3]
    kh, kw = kernel_hw
    rows = n * hp * wp - (kh - 1) * wp - (kw - 1)
    offsets = [(i, j, i * wp + j) for i in range(kh) for j in range(kw)]
    return offsets, rows


def conv2d_forward(x, kernel, bias, strides, pads) -> np.ndarray:
    """``y[n,p,q,o] = sum_{i,j,c} xp[n, p*sh+i, q*sw+j, c] * kernel[i,j,c,o] + bias[o]``."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    n = x.shape[0]
    dtype = np.result_type(x, kernel)
    xp = pad_nhwc(x.astype(dtype, copy=False), pads)
    ho, wo = output_hw(xp.shape[1:3], (kh, kw), strides)
    if kh == kw == 1:
        y = gemm(xp[:, ::sh, ::sw].reshape(n * ho * wo, cin), kernel.reshape(cin, cout)).reshape(n, ho, wo, cout)
    elif _shifted_route(xp.shape[1:3], (ho, wo), (kh, kw), strides, cin):
        xp = np.ascontiguousarray(xp)
        hp, wp = xp.shape[1:3]
        flat = xp.reshape(n * hp * wp, cin)
        grid = np.empty((n * hp * wp, cout), dtype=dtype)
        offsets, rows = _shifted_blocks(xp.shape, (kh, kw))
        scratch = np.empty((rows, cout), dtype=dtype)
        for i, j, offset in offsets:
            gemm(flat[offset : offset + rows], kernel[i, j], out=grid[:rows], accumulate=offset > 0, scratch=scratch)
        y = np.ascontiguousarray(grid.reshape(n, hp, wp, cout)[:, :ho, :wo])
    else:
        y = gemm(im2col(xp, (kh, kw), strides), kernel.reshape(kh * kw * cin, cout)).reshape(n, ho, wo, cout)
    if bias is not None:
        y += bias
    return y


def conv2d_vjp(grad, kernel, input_shape, strides, pads) -> np.ndarray:
    """Input gradient of a convolution (the adjoint of :func:`conv2d_forward`, same routes)."""
    kh, kw, cin, cout = kernel.shape
    n, ho, wo, _ = grad.shape
    dtype = np.result_type(grad, kernel)
    padded_shape = padded_shape_of((n, input_shape[1], input_shape[2], cin), pads)
    grad2d = grad.reshape(n * ho * wo, cout)
    if kh == kw == 1:
        dx = gemm(grad2d, kernel.reshape(cin, cout).T).reshape(n, ho, wo, cin)
        if padded_shape[1:3] == (ho, wo) and pads == ((0, 0), (0, 0)):
            return dx
        xp_grad = np.zeros(padded_shape, dtype=dtype)
        sh, sw = strides
        xp_grad[:, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw] = dx
    elif _shifted_route(padded_shape[1:3], (ho, wo), (kh, kw), strides, cin):
        # the gradient on the padded grid, zero at the positions that are not outputs
        grid = np.zeros(padded_shape[:3] + (cout,), dtype=dtype)
        grid[:, :ho, :wo] = grad
        grid = grid.reshape(-1, cout)
        xp_grad = np.zeros(padded_shape, dtype=dtype)
        flat = xp_grad.reshape(-1, cin)
        offsets, rows = _shifted_blocks(padded_shape, (kh, kw))
        scratch = np.empty((rows, cin), dtype=dtype)
        for i, j, offset in offsets:
            gemm(grid[:rows], kernel[i, j].T, out=flat[offset : offset + rows], accumulate=True, scratch=scratch)
    else:
        cols = gemm(grad2d, kernel.reshape(kh * kw * cin, cout).T)
        xp_grad = col2im(cols.reshape(n, ho, wo, kh, kw, cin), padded_shape, (kh, kw), strides)
    return np.ascontiguousarray(crop_nhwc(xp_grad, pads))


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------


def _blocked(x, pool, strides, pads):
    """``x`` as ``(N, Ho, kh, Wo, kw, C)`` (a reshape, no copy) when the windows tile it exactly, else None."""
    kh, kw = pool
    n, h, w, c = x.shape
    if tuple(strides) != (kh, kw) or pads != ((0, 0), (0, 0)) or h % kh or w % kw or not x.flags.c_contiguous:
        return None
    return x.reshape(n, h // kh, kh, w // kw, kw, c)


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
    blocks = _blocked(x, pool, strides, pads)
    if blocks is not None:
        return blocks.max(axis=(2, 4))
    xp = pad_nhwc(x, pads, value=-np.inf)
    return windows(xp, pool, strides).max(axis=(-2, -1))


def maxpool_winner(x, pool, strides, pads) -> np.ndarray:
    """Flat window index ``k = i * kw + j`` of each window's maximum (ties: the first in row-major order)."""
    blocks = _blocked(x, pool, strides, pads)
    if blocks is not None:
        n, ho, kh, wo, kw, c = blocks.shape
        best = blocks.max(axis=(2, 4))
        winner = np.full((n, ho, wo, c), kh * kw, dtype=np.intp)
        # visit offsets last to first, so the first maximum in row-major order is written last
        for k in reversed(range(kh * kw)):
            winner[blocks[:, :, k // kw, :, k % kw, :] == best] = k
        return winner
    xp = pad_nhwc(x, pads, value=-np.inf)
    win = windows(xp, pool, strides)
    flat = win.reshape(win.shape[:4] + (pool[0] * pool[1],))
    return flat.argmax(axis=-1)


def maxpool_vjp(x, grad, pool, strides, pads) -> np.ndarray:
    """Route each output gradient to its window's winner (:func:`maxpool_winner`)."""
    blocks = _blocked(x, pool, strides, pads)
    if blocks is not None:
        n, ho, kh, wo, kw, c = blocks.shape
        dtype = np.result_type(x, grad)
        best = blocks.max(axis=(2, 4))
        out = np.empty(blocks.shape, dtype=dtype)
        unclaimed = None  # windows whose winner is still to be found, in row-major offset order
        for k in range(kh * kw):
            i, j = divmod(k, kw)
            hit = blocks[:, :, i, :, j, :] == best
            if unclaimed is not None:
                hit &= unclaimed
            if k < kh * kw - 1:
                if unclaimed is None:
                    unclaimed = ~hit
                else:
                    unclaimed ^= hit
            np.multiply(grad, hit, out=out[:, :, i, :, j, :])
        out += 0  # a negative gradient times "not the winner" is -0.0; make it +0.0 as the general path does
        return out.reshape(x.shape)
    winner = maxpool_winner(x, pool, strides, pads)
    padded_shape = padded_shape_of(x.shape, pads)
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
    blocks = _blocked(x, pool, strides, pads)
    if blocks is not None:
        return blocks.mean(axis=(2, 4))
    xp = pad_nhwc(x, pads)
    sums = windows(xp, pool, strides).sum(axis=(-2, -1))
    return sums / avgpool_counts(x.shape[1:3], pool, strides, pads, x.dtype)


def avgpool_vjp(x, grad, pool, strides, pads) -> np.ndarray:
    """Spread ``grad / count`` evenly over each window."""
    blocks = _blocked(x, pool, strides, pads)
    if blocks is not None:
        n, ho, kh, wo, kw, c = blocks.shape
        share = grad / np.asarray(kh * kw, dtype=grad.dtype)
        out = np.empty(blocks.shape, dtype=share.dtype)
        out[...] = share[:, :, None, :, None, :]
        return out.reshape(x.shape)
    share = grad / avgpool_counts(x.shape[1:3], pool, strides, pads, grad.dtype)
    padded_shape = padded_shape_of(x.shape, pads)
    out = scatter_windows(lambda i, j: share, padded_shape, pool, strides, grad.dtype)
    return np.ascontiguousarray(crop_nhwc(out, pads))
