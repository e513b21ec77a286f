"""Max and average pooling, forward and vjp, on NHWC arrays.

Pooling with stride equal to the pool size and no padding (VGG's and most
CNNs' pooling) reads the input as ``(N, Ho, kh, Wo, kw, C)`` by a reshape; any
other pooling goes through the window offsets or the sliding-window views.
A max-pool window's winner is its first maximum in row-major offset order
(``k = i * kw + j``), as torch's CPU kernel keeps it; :func:`_first_max` is the
one routine that finds it, for the winners and for the vjp.
"""

from __future__ import annotations

import numpy as np

from . import tuning
from .padding import crop_nhwc, output_hw, pad_nhwc, padded_shape_of, windows
from .threads import parallel_rows


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


def _offset_rows(lo, hi, wo, strides):
    """``index(i, j)``: the padded-input pixels window offset ``(i, j)`` reads, one per output pixel of rows ``lo..hi``."""
    sh, sw = strides

    def index(i, j):
        return slice(None), slice(i + sh * lo, i + sh * (hi - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)

    return index


def _window_max(xp, rows, pool, out):
    """``out = max_{i,j} xp[rows(i, j)]``: a running maximum over the ``kh * kw`` window offsets, in row-major order.

    (A reduction over a strided window view is several times slower: its
    innermost axis is the 3-wide window, not the channels.)
    """
    kh, kw = pool
    np.copyto(out, xp[rows(0, 0)])
    for k in range(1, kh * kw):
        np.maximum(out, xp[rows(k // kw, k % kw)], out=out)
    return out


def _first_max(xp, rows, pool, best, unclaimed, hit):
    """Each window's first maximum, one window offset at a time: yields ``(k, index, hit)`` for ``k = 0 .. kh*kw - 1``.

    ``rows`` is an :func:`_offset_rows` of the output rows at hand; ``best``,
    ``unclaimed`` and ``hit`` are arrays of their output shape (``xp``'s dtype,
    bool, bool), overwritten. ``best`` gets the windows' maxima; at step ``k``,
    ``hit`` marks the windows whose winner is offset ``k`` (``index`` its input
    pixels): the first offset in row-major order that holds the maximum. Over
    all ``k`` each window has exactly one hit (a window of ``-inf`` included:
    its first pixel wins). ``hit`` is valid until the next step.
    """
    kh, kw = pool
    _window_max(xp, rows, pool, best)
    unclaimed.fill(True)
    for k in range(kh * kw):
        index = rows(k // kw, k % kw)
        np.equal(xp[index], best, out=hit)
        hit &= unclaimed
        unclaimed ^= hit
        yield k, index, hit


def maxpool_forward(x, pool, strides, pads):
    """``y[n,p,q,c] = max_{i,j} xp[n, p*sh+i, q*sw+j, c]``, padding with ``-inf``."""
    xp = pad_nhwc(x, pads, value=-np.inf, slot="padded")
    ho, wo = output_hw(xp.shape[1:3], pool, strides)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), dtype=x.dtype)

    def band(lo, hi):  # output rows lo..hi
        _window_max(xp, _offset_rows(lo, hi, wo, strides), pool, out[:, lo:hi])

    parallel_rows(band, ho, pool[0] * pool[1] * out.size)
    return out


def maxpool_winner(x, pool, strides, pads) -> np.ndarray:
    """Flat window index ``k = i * kw + j`` of each window's maximum (ties: the first in row-major order)."""
    xp = pad_nhwc(x, pads, value=-np.inf)
    ho, wo = output_hw(xp.shape[1:3], pool, strides)
    winner = np.zeros((x.shape[0], ho, wo, x.shape[3]), dtype=np.intp)

    def band(lo, hi):  # output rows lo..hi
        shape = (x.shape[0], hi - lo, wo, x.shape[3])
        part = winner[:, lo:hi]
        scratch = np.empty(shape, dtype=xp.dtype), np.empty(shape, dtype=bool), np.empty(shape, dtype=bool)
        for k, _, hit in _first_max(xp, _offset_rows(lo, hi, wo, strides), pool, *scratch):
            part[hit] = k

    parallel_rows(band, ho, 2 * pool[0] * pool[1] * winner.size)
    return winner


def maxpool_vjp(x, grad, pool, strides, pads) -> np.ndarray:
    """Route each output gradient to its window's winner (:func:`maxpool_winner`): chunks of output rows, threaded.

    Each chunk finds its windows' first maxima (:func:`_first_max`) and puts
    ``grad`` at each window offset's hits (ties: the first offset in row-major
    order). Chunks hold about :data:`~rlrp_ref.kernels.tuning.MAXPOOL_CHUNK_BYTES`
    of input.

    - Where the windows tile the input exactly (VGG's 2x2/2), each input pixel
      belongs to one window: the masked gradient is written in place, then
      ``+ 0`` turns ``-0.0`` into ``+0.0``; all chunks run at once.
    - Otherwise it is added into a zeroed padded gradient (``0 + (-0.0)`` is
      ``+0.0``). Windows of neighbouring output rows share input rows when
      ``kh > sh``, so the chunks run in two phases, the even ones and then the
      odd ones, each chunk at least ``kh / sh`` rows long: no two chunks
      running at once write the same input row.

    The chunks do not depend on the thread count, nor do the results.
    """
    (kh, kw), (sh, sw) = pool, strides
    tiled = _blocked(x, pool, strides, pads) is not None
    xp = pad_nhwc(x, pads, value=-np.inf, slot="padded")
    n, hp, wp, c = xp.shape
    ho, wo = output_hw((hp, wp), pool, strides)
    dtype = np.result_type(x, grad)
    out = np.empty(xp.shape, dtype=dtype) if tiled else np.zeros(xp.shape, dtype=dtype)
    step = max(-(-kh // sh), tuning.MAXPOOL_CHUNK_BYTES // max(1, n * sh * wp * c * xp.dtype.itemsize))
    chunks = -(-ho // step)

    def run(lo, hi, parity):  # chunks lo..hi (of one parity, unless the windows tile the input)
        best = np.empty((n, min(step, ho), wo, c), dtype=xp.dtype)
        unclaimed, hit = np.empty(best.shape, dtype=bool), np.empty(best.shape, dtype=bool)
        share = np.empty(best.shape, dtype=dtype)
        chunk_range = range(lo, hi) if tiled else range(lo + (lo + parity) % 2, hi, 2)
        for chunk in chunk_range:  # a loop over chunks of output rows
            r0, r1 = chunk * step, min((chunk + 1) * step, ho)
            rows = _offset_rows(r0, r1, wo, strides)
            part = best[:, : r1 - r0], unclaimed[:, : r1 - r0], hit[:, : r1 - r0]
            t = share[:, : r1 - r0]
            for _, index, h in _first_max(xp, rows, pool, *part):
                if tiled:
                    np.multiply(grad[:, r0:r1], h, out=out[index])
                else:
                    np.multiply(grad[:, r0:r1], h, out=t)
                    out[index] += t
            if tiled:
                written = out[:, sh * r0 : sh * r1]  # this chunk's input rows, each written once
                written += 0

    for parity in (None,) if tiled else (0, 1):
        parallel_rows(lambda lo, hi: run(lo, hi, parity), chunks, 2 * kh * kw * grad.size)
    return out if tiled else np.ascontiguousarray(crop_nhwc(out, pads))


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