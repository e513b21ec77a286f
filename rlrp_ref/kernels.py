"""The vectorized kernels that convolution and pooling share.

Everything here works on NHWC arrays. A 2-D sliding window over a padded input
``xp`` of shape ``(N, Hp, Wp, C)`` is read through
:func:`numpy.lib.stride_tricks.sliding_window_view` (no copy).

Index conventions (used by every layer and every rule):

- window offsets ``(i, j)`` run over ``range(kh) x range(kw)`` in row-major
  order; flat window index ``k = i * kw + j``;
- output pixel ``(p, q)`` reads padded input pixel
  ``(p * sh + i, q * sw + j)``.

A convolution is one GEMM: on the (strided) input itself for a 1x1 kernel,
otherwise on the im2col matrix ``(N * Ho * Wo, kh * kw * C)``, one gather
copy of the windows. Its vjp is one GEMM too, by one of two routes:

- **scatter** (any stride or padding): ``cols = grad @ kernel2d.T``, then
  :func:`col2im` adds the ``kh * kw`` column blocks back into the padded input;
- **gather** (stride 1, when it is cheaper): the vjp of a stride-1 convolution
  is the convolution of the gradient, padded by ``kh - 1 - top`` etc., with the
  kernel flipped in space and its channel axes swapped. Its im2col gather
  copies ``kh * kw * Cout`` values per pixel where the scatter route writes and
  re-reads ``kh * kw * Cin``; the flipped kernel is a copy of the kernel. So it
  is taken when ``Cout <= Cin`` and the map has enough pixels to pay for that
  copy (:data:`GATHER_MIN_PIXELS_PER_FILTER`).

NumPy's element-wise work is single-threaded while BLAS uses every core, so
both routes are chosen to keep the copies few: one large GEMM per layer, no
per-offset products.

Backward maps accumulate over the ``kh * kw`` kernel offsets: a loop of at most
a few dozen vectorized operations, never a loop over pixels, channels or batch
items.

Pooling with stride equal to the pool size and no padding (VGG's and most
CNNs' pooling) reads the input as ``(N, Ho, kh, Wo, kw, C)`` by a reshape; any
other pooling goes through the sliding-window views.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Pads = tuple[tuple[int, int], tuple[int, int]]

#: The gather route of a stride-1 convolution's vjp copies the flipped kernel
#: (``kh * kw * Cin * Cout`` values) on every call; it is taken when the
#: gradient has at least this many pixels (``N * Ho * Wo``) per output channel,
#: i.e. when that copy is small next to the GEMM. VGG16 at 224x224, batch 1: the
#: 224, 112 and 56 maps take it (where ``Cout <= Cin``), 28 and 14 scatter.
GATHER_MIN_PIXELS_PER_FILTER = 4
#: :func:`col2im` accumulates channels-first below this many channels.
COL2IM_CHANNELS_FIRST_BELOW = 8


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
# windows, im2col, col2im
# ---------------------------------------------------------------------------


def windows(xp: np.ndarray, kernel_hw, strides) -> np.ndarray:
    """Read-only view ``(N, Ho, Wo, C, kh, kw)`` of every window of a padded input."""
    kh, kw = kernel_hw
    sh, sw = strides
    view = sliding_window_view(xp, (kh, kw), axis=(1, 2))
    return view[:, ::sh, ::sw]


_workspace = threading.local()


@contextlib.contextmanager
def workspace():
    """Keep the scratch buffer of :func:`_scratch` alive for one whole pass, then free it.

    Model-level entry points (``forward``, ``trace``, ``vjp``, ``explain``) run
    inside it; nested uses share the outer one, so the buffer is allocated once
    per pass and released when the outermost pass ends (no memory is held
    between calls).
    """
    _workspace.depth = getattr(_workspace, "depth", 0) + 1
    try:
        yield
    finally:
        _workspace.depth -= 1
        if _workspace.depth == 0:
            _workspace.buffer = None


def _scratch(shape, dtype) -> np.ndarray:
    """An uninitialized array of ``shape`` in a per-thread buffer reused by every convolution.

    The im2col matrix is the largest temporary (9x its input); allocating it
    afresh for every layer makes the OS hand out and zero new pages each time
    (glibc returns every block above 32 MB to the OS), which cost VGG16's batch-8
    forward pass almost half its time. The buffer grows to the largest matrix
    seen; it is only ever read by the GEMM right after it is filled, and it is
    freed when the outermost :func:`workspace` ends.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = getattr(_workspace, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        _workspace.buffer = buffer = None  # free the smaller buffer before allocating the larger one
        _workspace.buffer = buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def im2col(xp: np.ndarray, kernel_hw, strides, reuse: bool = False) -> np.ndarray:
    """The im2col matrix ``(N * Ho * Wo, kh * kw * C)``, columns in ``(i, j, c)`` order.

    That order matches a Keras kernel ``(kh, kw, cin, cout)`` reshaped to
    ``(kh * kw * cin, cout)``, so a convolution is ``im2col(xp) @ kernel2d``.
    ``reuse=True`` writes it into this thread's scratch buffer (:func:`_scratch`):
    the result is then only valid until the next ``reuse`` call.
    """
    n, c = xp.shape[0], xp.shape[3]
    kh, kw = kernel_hw
    win = windows(xp, kernel_hw, strides)
    ho, wo = win.shape[1], win.shape[2]
    shape = (n, ho, wo, kh, kw, c)
    cols = _scratch(shape, xp.dtype) if reuse else np.empty(shape, dtype=xp.dtype)
    # one gather, written straight into the GEMM's operand (faster than a copy per offset)
    np.copyto(cols, win.transpose(0, 1, 2, 4, 5, 3))
    return cols.reshape(n * ho * wo, kh * kw * c)


def col2im(cols: np.ndarray, padded_shape, kernel_hw, strides) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add ``(N, Ho, Wo, kh, kw, C)`` into the padded input.

    ``out[:, p*sh + i, q*sw + j, :] += cols[:, p, q, i, j, :]``, accumulated
    with one vectorized slice-add per kernel offset ``(i, j)``. With fewer than
    :data:`COL2IM_CHANNELS_FIRST_BELOW` channels (an RGB image) the sums run on a
    channels-first view, whose innermost axis is a whole row of the map rather
    than 3 channels; the result is then an NHWC view of that array.
    """
    n, ho, wo, kh, kw, c = cols.shape
    sh, sw = strides
    if c < COL2IM_CHANNELS_FIRST_BELOW:
        out = np.zeros((padded_shape[0], padded_shape[3], padded_shape[1], padded_shape[2]), dtype=cols.dtype)
        source = cols.transpose(0, 5, 3, 4, 1, 2)  # (N, C, kh, kw, Ho, Wo), a view
        for i in range(kh):
            for j in range(kw):
                out[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] += source[:, :, i, j]
        return out.transpose(0, 2, 3, 1)
    out = np.zeros(padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] += cols[:, :, :, i, j, :]
    return out


# ---------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------


def conv2d_forward(x, kernel, bias, strides, pads) -> np.ndarray:
    """``y[n,p,q,o] = sum_{i,j,c} xp[n, p*sh+i, q*sw+j, c] * kernel[i,j,c,o] + bias[o]``: one GEMM."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    n = x.shape[0]
    xp = pad_nhwc(x, pads)
    ho, wo = output_hw(xp.shape[1:3], (kh, kw), strides)
    if kh == kw == 1:
        cols = xp[:, ::sh, ::sw].reshape(n * ho * wo, cin)  # no copy unless strided
    else:
        cols = im2col(xp, (kh, kw), strides, reuse=True)
    y = np.matmul(cols, kernel.reshape(kh * kw * cin, cout)).reshape(n, ho, wo, cout)
    if bias is not None:
        y += bias
    return y


def _gather_route(grad_shape, kernel_shape, strides, pads) -> bool:
    """Whether a convolution's vjp runs as the transposed convolution (see the module docstring)."""
    kh, kw, cin, cout = kernel_shape
    (t, b), (l, r) = pads
    if tuple(strides) != (1, 1) or kh * kw == 1 or max(t, b) > kh - 1 or max(l, r) > kw - 1:
        return False
    n, ho, wo, _ = grad_shape
    return cout <= cin and n * ho * wo >= GATHER_MIN_PIXELS_PER_FILTER * cout


def conv2d_vjp(grad, kernel, input_shape, strides, pads) -> np.ndarray:
    """Input gradient of a convolution: one GEMM, then a scatter (:func:`col2im`) or, for stride 1, a gather."""
    kh, kw, cin, cout = kernel.shape
    n, ho, wo, _ = grad.shape
    (t, b), (l, r) = pads
    dtype = np.result_type(grad, kernel)
    padded_shape = padded_shape_of((n, input_shape[1], input_shape[2], cin), pads)
    if kh == kw == 1 and tuple(strides) == (1, 1) and pads == ((0, 0), (0, 0)):
        return np.matmul(grad.reshape(n * ho * wo, cout), kernel.reshape(cin, cout).T).reshape(input_shape[:3] + (cin,))
    if _gather_route(grad.shape, kernel.shape, strides, pads):
        # dx = correlate(pad(grad), kernel flipped in (i, j), channels swapped)
        flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)
        grad_padded = pad_nhwc(grad, ((kh - 1 - t, kh - 1 - b), (kw - 1 - l, kw - 1 - r)))
        dx = np.matmul(im2col(grad_padded, (kh, kw), (1, 1), reuse=True), flipped)
        return dx.reshape(n, input_shape[1], input_shape[2], cin)
    cols = np.matmul(grad.reshape(n * ho * wo, cout), kernel.reshape(kh * kw * cin, cout).T)
    xp_grad = col2im(cols.reshape(n, ho, wo, kh, kw, cin), padded_shape, (kh, kw), strides)
    return np.ascontiguousarray(crop_nhwc(xp_grad, pads), dtype=dtype)


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


def _offset_slice(i, j, out_hw, strides):
    """Index of the padded-input pixels that window offset ``(i, j)`` reads, one per output pixel."""
    (ho, wo), (sh, sw) = out_hw, strides
    return slice(None), slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)


def _first_max_masks(x, pool, strides, pads):
    """Padded input, and per window offset ``k = i * kw + j`` its index and where it is the window's winner.

    Yields ``(xp, k, index, hit)``; the winner of a window is its first maximum
    in row-major offset order, so each window has exactly one hit over all ``k``.
    """
    xp = pad_nhwc(x, pads, value=-np.inf)
    best = maxpool_forward(x, pool, strides, pads)
    kh, kw = pool
    unclaimed = None  # windows whose winner is still to be found
    for k in range(kh * kw):
        index = _offset_slice(k // kw, k % kw, best.shape[1:3], strides)
        hit = xp[index] == best
        if unclaimed is not None:
            hit &= unclaimed
        if k < kh * kw - 1:
            if unclaimed is None:
                unclaimed = ~hit
            else:
                unclaimed ^= hit
        yield xp, k, index, hit


def maxpool_winner(x, pool, strides, pads) -> np.ndarray:
    """Flat window index ``k = i * kw + j`` of each window's maximum (ties: the first in row-major order)."""
    winner = None
    for xp, k, index, hit in _first_max_masks(x, pool, strides, pads):
        if winner is None:
            winner = np.zeros(hit.shape, dtype=np.intp)
        winner[hit] = k
    return winner


def maxpool_vjp(x, grad, pool, strides, pads) -> np.ndarray:
    """Route each output gradient to its window's winner (:func:`maxpool_winner`), one pass per window offset."""
    (kh, kw), (sh, sw) = pool, strides
    disjoint = sh >= kh and sw >= kw  # each input pixel is read by at most one window: write, do not add
    out = None
    for xp, k, index, hit in _first_max_masks(x, pool, strides, pads):
        if out is None:
            out = np.zeros(xp.shape, dtype=np.result_type(x, grad))
        if disjoint:
            np.multiply(grad, hit, out=out[index])
        else:
            out[index] += grad * hit
    out += 0  # a negative gradient times "not the winner" is -0.0: make it +0.0
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
