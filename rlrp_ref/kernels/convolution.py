"""Convolutions as GEMMs: im2col and col2im, the choice of route, the forward and its vjp.

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
  copy (:data:`~rlrp_ref.kernels.tuning.GATHER_MIN_PIXELS_PER_FILTER`).

In float32 (the fast mode) a 3x3 stride-1 convolution on a large enough map,
and its vjp, run as Winograd F(2x2, 3x3) instead (:mod:`rlrp_ref.kernels.winograd`).
float64, the reference mode, keeps im2col unless :func:`conv_algorithm` says
otherwise. Backward maps accumulate over the ``kh * kw`` kernel offsets: a loop
of at most a few dozen vectorized operations, never a loop over pixels,
channels or batch items.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from . import scratch, tuning
from .padding import crop_nhwc, output_hw, pad_nhwc, padded_shape_of, windows
from .threads import channelwise, parallel_rows
from .winograd import winograd_conv, winograd_kernel

#: The algorithm of this thread (and this asyncio task): a context variable, so a
#: ``with conv_algorithm(...)`` block in one thread never changes another's.
_ALGORITHM = contextvars.ContextVar("rlrp_ref_conv_algorithm", default="auto")
ALGORITHMS = ("auto", "winograd", "im2col")


def conv_algorithm(name: str):
    """A context manager that runs its block with 3x3 stride-1 convolutions computed by ``name``.

    ``name`` is ``"auto"`` (Winograd in float32, the fast mode, where it pays;
    im2col in float64, the reference mode), ``"winograd"`` (wherever it
    applies, any dtype) or ``"im2col"`` (never Winograd); anything else is a
    ValueError right away, before the block. The choice holds for the calling
    thread only (a context variable): other threads, and threads started
    inside the block, keep their own (``"auto"`` unless they set one).
    """
    if name not in ALGORITHMS:
        raise ValueError(f"conv_algorithm: expected 'auto', 'winograd' or 'im2col', found {name!r}")
    return _conv_algorithm(name)


@contextlib.contextmanager
def _conv_algorithm(name: str):
    token = _ALGORITHM.set(name)
    try:
        yield
    finally:
        _ALGORITHM.reset(token)


def current_conv_algorithm() -> str:
    """The algorithm :func:`conv_algorithm` set for the calling thread: ``"auto"``, ``"winograd"`` or ``"im2col"``."""
    return _ALGORITHM.get()


def im2col(xp: np.ndarray, kernel_hw, strides, reuse: bool = False) -> np.ndarray:
    """The im2col matrix ``(N * Ho * Wo, kh * kw * C)``, columns in ``(i, j, c)`` order.

    That order matches a Keras kernel ``(kh, kw, cin, cout)`` reshaped to
    ``(kh * kw * cin, cout)``, so a convolution is ``im2col(xp) @ kernel2d``.
    ``reuse=True`` writes it into this thread's scratch buffer (:func:`~rlrp_ref.kernels.scratch.buffer`):
    the result is then only valid until the next ``reuse`` call.
    """
    n, c = xp.shape[0], xp.shape[3]
    kh, kw = kernel_hw
    win = windows(xp, kernel_hw, strides)
    ho, wo = win.shape[1], win.shape[2]
    shape = (n, ho, wo, kh, kw, c)
    cols = scratch.buffer(shape, xp.dtype) if reuse else np.empty(shape, dtype=xp.dtype)
    source = win.transpose(0, 1, 2, 4, 5, 3)

    def gather(lo, hi):  # one gather, written straight into the GEMM's operand (faster than a copy per offset)
        np.copyto(cols[:, lo:hi], source[:, lo:hi])

    parallel_rows(gather, ho, cols.size)
    return cols.reshape(n * ho * wo, kh * kw * c)


def col2im(cols: np.ndarray, padded_shape, kernel_hw, strides) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add ``(N, Ho, Wo, kh, kw, C)`` into the padded input.

    ``out[:, p*sh + i, q*sw + j, :] += cols[:, p, q, i, j, :]``, accumulated
    with one vectorized slice-add per kernel offset ``(i, j)``. With fewer than
    :data:`~rlrp_ref.kernels.tuning.COL2IM_CHANNELS_FIRST_BELOW` channels (an RGB image) the sums run on a
    channels-first view, whose innermost axis is a whole row of the map rather
    than 3 channels; the result is then an NHWC view of that array.
    """
    n, ho, wo, kh, kw, c = cols.shape
    sh, sw = strides
    rows = [slice(i, i + sh * (ho - 1) + 1, sh) for i in range(kh)]
    columns = [slice(j, j + sw * (wo - 1) + 1, sw) for j in range(kw)]
    if c < tuning.COL2IM_CHANNELS_FIRST_BELOW:
        out = np.zeros((padded_shape[0], padded_shape[3], padded_shape[1], padded_shape[2]), dtype=cols.dtype)
        source = cols.transpose(0, 5, 3, 4, 1, 2)  # (N, C, kh, kw, Ho, Wo), a view

        def add_planes(lo, hi):  # channels lo..hi: the threads write disjoint channels
            for i in range(kh):
                for j in range(kw):
                    out[:, lo:hi, rows[i], columns[j]] += source[:, lo:hi, i, j]

        parallel_rows(add_planes, c, cols.size)
        return out.transpose(0, 2, 3, 1)
    out = np.zeros(padded_shape, dtype=cols.dtype)

    def add_channels(lo, hi):
        for i in range(kh):
            for j in range(kw):
                out[:, rows[i], columns[j], lo:hi] += cols[:, :, :, i, j, lo:hi]

    parallel_rows(add_channels, c, cols.size)
    return out


def _winograd_applies(kernel_shape, strides, out_hw, dtype, batch: int = 1) -> bool:
    """Whether a convolution (or a vjp, as the convolution it is) runs as Winograd F(2x2, 3x3)."""
    kh, kw, cin, cout = kernel_shape
    algorithm = _ALGORITHM.get()
    if algorithm == "im2col" or (kh, kw) != (3, 3) or tuple(strides) != (1, 1):
        return False
    if algorithm == "winograd":
        return True
    ho, wo = out_hw
    tiles = batch * (-(-ho // 2)) * (-(-wo // 2))
    return (np.dtype(dtype) == np.float32 and min(cin, cout) >= tuning.WINOGRAD_MIN_CHANNELS
            and 4 * tiles <= (1 + tuning.WINOGRAD_MAX_WASTE) * batch * ho * wo
            and tiles * cin * cout >= tuning.WINOGRAD_MIN_GEMM)


def conv2d_forward(x, kernel, bias, strides, pads) -> np.ndarray:
    """``y[n,p,q,o] = sum_{i,j,c} xp[n, p*sh+i, q*sw+j, c] * kernel[i,j,c,o] + bias[o]``: one GEMM."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    n = x.shape[0]
    xp = pad_nhwc(x, pads, slot="padded")  # only read by the GEMM's operand below
    ho, wo = output_hw(xp.shape[1:3], (kh, kw), strides)
    if _winograd_applies(kernel.shape, strides, (ho, wo), np.result_type(x, kernel), n):
        return winograd_conv(xp, winograd_kernel(kernel), bias=bias)
    if kh == kw == 1:
        cols = xp[:, ::sh, ::sw].reshape(n * ho * wo, cin)  # no copy unless strided
    else:
        cols = im2col(xp, (kh, kw), strides, reuse=True)
    y = np.matmul(cols, kernel.reshape(kh * kw * cin, cout)).reshape(n, ho, wo, cout)
    if bias is not None:
        channelwise(lambda out, b: np.add(out, b, out=out), y, bias)
    return y


def _gather_route(grad_shape, kernel_shape, strides, pads) -> bool:
    """Whether a convolution's vjp runs as the transposed convolution (see the module docstring)."""
    kh, kw, cin, cout = kernel_shape
    (t, b), (l, r) = pads
    if tuple(strides) != (1, 1) or kh * kw == 1 or max(t, b) > kh - 1 or max(l, r) > kw - 1:
        return False
    n, ho, wo, _ = grad_shape
    return cout <= cin and n * ho * wo >= tuning.GATHER_MIN_PIXELS_PER_FILTER * cout


def conv2d_vjp(grad, kernel, input_shape, strides, pads) -> np.ndarray:
    """Input gradient of a convolution: one GEMM, then a scatter (:func:`col2im`) or, for stride 1, a gather."""
    kh, kw, cin, cout = kernel.shape
    n, ho, wo, _ = grad.shape
    (t, b), (l, r) = pads
    dtype = np.result_type(grad, kernel)
    padded_shape = padded_shape_of((n, input_shape[1], input_shape[2], cin), pads)
    if kh == kw == 1 and tuple(strides) == (1, 1) and pads == ((0, 0), (0, 0)):
        return np.matmul(grad.reshape(n * ho * wo, cout), kernel.reshape(cin, cout).T).reshape(input_shape[:3] + (cin,))
    if max(t, b, l, r) <= 2 and _winograd_applies((kh, kw, cout, cin), strides, input_shape[1:3], dtype, n):
        grad_padded = pad_nhwc(grad, ((2 - t, 2 - b), (2 - l, 2 - r)), slot="padded")
        return winograd_conv(grad_padded, winograd_kernel(kernel), flip=True)
    if _gather_route(grad.shape, kernel.shape, strides, pads):
        # dx = correlate(pad(grad), kernel flipped in (i, j), channels swapped)
        flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)
        grad_padded = pad_nhwc(grad, ((kh - 1 - t, kh - 1 - b), (kw - 1 - l, kw - 1 - r)), slot="padded")
        dx = np.matmul(im2col(grad_padded, (kh, kw), (1, 1), reuse=True), flipped)
        return dx.reshape(n, input_shape[1], input_shape[2], cin)
    cols = np.matmul(grad.reshape(n * ho * wo, cout), kernel.reshape(kh * kw * cin, cout).T)
    xp_grad = col2im(cols.reshape(n, ho, wo, kh, kw, cin), padded_shape, (kh, kw), strides)
    return np.ascontiguousarray(crop_nhwc(xp_grad, pads), dtype=dtype)
