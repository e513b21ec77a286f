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

In float32 (the fast mode) a 3x3 stride-1 convolution on a large enough map,
and its vjp, run as **Winograd F(2x2, 3x3)** instead (:func:`winograd_conv`):
16 GEMMs with 2.25x fewer multiply-adds than im2col, exact transforms, the same
rounding as im2col up to a small factor (tests/test_kernels.py). On large maps
with few channels it runs fused, band by band in cache (with threadpoolctl).
float64, the reference mode, keeps im2col unless :func:`conv_algorithm` says
otherwise.

NumPy's element-wise work is single-threaded while BLAS uses every core, so
the large element-wise passes (the im2col gather, the Winograd transforms,
col2im, padding, ReLU, BatchNorm, the per-sample sums of the ledger) are split
into bands on a small thread pool (:func:`parallel_rows`, :func:`elementwise`,
:func:`channelwise`); NumPy releases the GIL inside each ufunc, and the bands
write disjoint outputs, so the results are the same bits for any thread count.

Backward maps accumulate over the ``kh * kw`` kernel offsets: a loop of at most
a few dozen vectorized operations, never a loop over pixels, channels or batch
items.

Pooling with stride equal to the pool size and no padding (VGG's and most
CNNs' pooling) reads the input as ``(N, Ho, kh, Wo, kw, C)`` by a reshape; any
other pooling goes through the sliding-window views.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

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


def pad_nhwc(x: np.ndarray, pads: Pads, value: float = 0.0, slot: str | None = None) -> np.ndarray:
    """Pad the spatial axes of an NHWC array (returns ``x`` itself when no padding).

    ``slot`` names a :func:`_scratch` buffer to pad into, for a padded copy that
    is read once right away (a convolution's operand) and never returned.
    """
    (t, b), (l, r) = pads
    if t == b == l == r == 0:
        return x
    n, h, w, c = x.shape
    shape = (n, h + t + b, w + l + r, c)
    out = _scratch(shape, x.dtype, slot) if slot else np.empty(shape, dtype=x.dtype)
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


# ---------------------------------------------------------------------------
# threads for the element-wise passes
# ---------------------------------------------------------------------------
#
# BLAS runs every GEMM on all cores, but a NumPy ufunc or copy runs on one. The
# large element-wise passes of the convolutions (the im2col gather, the
# Winograd transforms) are therefore split into row bands that run on a small
# thread pool: NumPy releases the GIL inside each ufunc loop, so the bands run
# in parallel. Every band writes its own rows of the output; the results are
# the same, bit for bit, whatever the thread count.

#: Passes of less work than this (element operations: elements times the
#: operations on each) run on the calling thread alone. Handing a band to
#: another thread and waiting for it costs about 60 us on the 2-core KVM guest
#: the benchmarks ran on (waking an idle virtual CPU), as much as one
#: multiplication of 2M float32 values: below that, a second thread only slows a
#: pass down.
PARALLEL_MIN_WORK = 1 << 20
_pool_state = {"threads": None, "pool": None}


def set_num_threads(threads: int | None) -> None:
    """How many threads the element-wise passes use (None: ``RLRP_REF_NUM_THREADS``, else every usable core).

    BLAS threads are set separately (``OPENBLAS_NUM_THREADS``, threadpoolctl);
    the benchmarks set both to the same number.
    """
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"set_num_threads: expected a positive int or None, found {threads!r}")
    old = _pool_state["pool"]
    _pool_state.update(threads=None if threads is None else int(threads), pool=None, workers=None)
    if old is not None:
        old.shutdown(wait=True)


def num_threads() -> int:
    """The thread count of the element-wise passes (see :func:`set_num_threads`)."""
    if _pool_state["threads"] is None:
        env = os.environ.get("RLRP_REF_NUM_THREADS", "")
        try:
            _pool_state["threads"] = max(1, int(env)) if env.strip() else len(os.sched_getaffinity(0))
        except (ValueError, AttributeError):
            _pool_state["threads"] = os.cpu_count() or 1
    return _pool_state["threads"]


def _forget_pool_in_child():  # a forked child has none of the parent's threads
    _pool_state.update(pool=None, workers=None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def parallel_rows(fn, rows: int, work: int) -> None:
    """Run ``fn(lo, hi)`` over bands of ``range(rows)`` that together cover it, on :func:`num_threads` threads.

    ``work`` is the size of the pass in element operations; below
    :data:`PARALLEL_MIN_WORK` (or with one thread, or one row) ``fn(0, rows)``
    runs on the calling thread. ``fn`` must write disjoint outputs for disjoint bands.
    """
    threads = min(num_threads(), rows)
    if threads <= 1 or work < PARALLEL_MIN_WORK:
        fn(0, rows)
        return
    pool = _pool_state["pool"]
    if pool is None or _pool_state.get("workers") != threads - 1:
        if pool is not None:
            pool.shutdown(wait=False)
        pool = _pool_state["pool"] = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="rlrp_ref")
        _pool_state["workers"] = threads - 1
    bounds = [rows * k // threads for k in range(threads + 1)]
    futures = [pool.submit(fn, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    try:
        fn(bounds[0], bounds[1])
    finally:
        for future in futures:
            future.result()


def _view_2d(arr: np.ndarray, shape, what: str) -> np.ndarray:
    """``arr.reshape(shape)``, which must be a view: the threaded passes write through it."""
    flat = arr.reshape(shape)
    if arr.size and not np.shares_memory(flat, arr):
        raise ValueError(f"{what}: expected an array that reshapes to {shape} without a copy, found strides {arr.strides}")
    return flat


def _per_sample_view(arr: np.ndarray, n: int, what: str) -> np.ndarray:
    """``arr`` as ``(N, L)`` without a copy (an ``(N,)`` or scalar value as ``(N, 1)``, broadcast whole)."""
    arr = np.asarray(arr)
    if (arr.ndim <= 1 and arr.size in (1, n)) or arr.shape == (n,) + (1,) * (arr.ndim - 1):
        return np.broadcast_to(arr.reshape(-1, 1), (n, 1)) if arr.size == 1 else arr.reshape(n, 1)
    return _view_2d(arr, (n, -1), what)


def elementwise(fn, out: np.ndarray, *operands, ops: int = 1) -> np.ndarray:
    """``fn(out_part, *operand_parts)`` on bands of columns of the ``(N, -1)`` views, on the :func:`parallel_rows` threads.

    ``out`` and every full-size operand must have ``out``'s size and reshape to
    ``(N, -1)`` without a copy (C-contiguous, say); an operand with one value
    per sample (shape ``(N,)``, ``(N, 1, ...)``) or a scalar is passed whole, as
    ``(N, 1)``. ``fn`` writes ``out_part`` (a ufunc with ``out=``); ``ops`` is
    about how many operations it makes on each element (see
    :data:`PARALLEL_MIN_WORK`). Returns ``out``.
    """
    n = out.shape[0] if out.ndim else 1
    flat_out = _view_2d(out, (n, -1), "elementwise")
    flats = [(_per_sample_view(op, n, "elementwise"), np.size(op) == out.size and np.size(op) > n) for op in operands]
    length = flat_out.shape[1]

    def band(lo, hi):
        fn(flat_out[:, lo:hi], *[flat[:, lo:hi] if split else flat for flat, split in flats])

    parallel_rows(band, length, ops * out.size)
    return out


def channelwise(fn, out: np.ndarray, *operands, ops: int = 1) -> np.ndarray:
    """``fn(out_part, *operand_parts)`` on bands of rows of the ``(-1, C)`` views (``C``: the last axis), threaded.

    ``out`` and every full-size operand must reshape to ``(-1, C)`` without a
    copy; an operand of shape ``(C,)`` (a per-channel value: a bias, a
    BatchNorm scale) is passed whole; ``ops`` as for :func:`elementwise`. Returns ``out``.
    """
    channels = out.shape[-1] if out.ndim else 1
    flat_out = _view_2d(out, (-1, channels), "channelwise")
    flats = []
    for op in operands:
        op = np.asarray(op)
        if op.size == out.size and op.ndim > 1:
            flats.append((op.reshape(-1, channels), True))
        elif op.shape in ((channels,), (1,), ()):
            flats.append((op, False))
        else:
            raise ValueError(f"channelwise: expected operands of shape {out.shape} or ({channels},), found {op.shape}")

    def band(lo, hi):
        fn(flat_out[lo:hi], *[flat[lo:hi] if split else flat for flat, split in flats])

    parallel_rows(band, flat_out.shape[0], ops * out.size)
    return out


#: :func:`per_sample_sum` adds float32 values in blocks of this many elements.
SUM_BLOCK = 1 << 15


def per_sample_sum(arr: np.ndarray, absolute: bool = False, weights: np.ndarray | None = None) -> np.ndarray:
    """``sum_j f(arr[n, j])`` for each sample ``n`` (every axis but the first summed), as float64 ``(N,)``.

    ``f`` is the identity, ``abs`` (``absolute=True``: the L1 norm) or the
    product with ``weights``, an array of ``arr``'s shape (a dot product). The
    values are added in blocks of :data:`SUM_BLOCK` elements: within a block by
    NumPy's pairwise summation in the array's own dtype (a float32 block sum is
    off by at most about ``log2(SUM_BLOCK) * 6e-8`` of its L1 norm, and needs no
    float64 copy of the block), across blocks in float64. Blocks run on the
    :func:`parallel_rows` threads; the result does not depend on their number.
    """
    if absolute:
        return _block_sums(arr, want_sum=False)[1]
    if weights is None:
        return _block_sums(arr, want_l1=False)[0]
    return _block_sums(arr, weights, np.multiply, want_l1=False)[0]


def per_sample_sums(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sum, L1 norm)`` of each sample in one pass over memory (the sums of :func:`per_sample_sum`)."""
    return _block_sums(arr)


def multiply_and_sum(arr: np.ndarray, factor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``arr *= factor`` in place, and the per-sample sum and L1 norm of the product, in one pass over memory.

    The sums are those of :func:`per_sample_sum` (same blocks, same order).
    ``factor`` has ``arr``'s shape. Returns ``(sum, l1)``, float64 ``(N,)`` each.
    """
    return _block_sums(arr, factor, np.multiply, out=arr)


def add_and_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a + b, its per-sample sum, its L1 norm)``, the sum a new array, in one pass over memory."""
    out = np.empty(np.broadcast_shapes(a.shape, b.shape), dtype=np.result_type(a, b))
    total, l1 = _block_sums(np.broadcast_to(a, out.shape), np.broadcast_to(b, out.shape), np.add, out=out)
    return out, total, l1


def _block_sums(arr, other=None, op=None, out=None, want_sum=True, want_l1=True):
    """The block loop behind the per-sample sums: ``(sum or None, l1 or None)`` of ``arr`` or of ``op(arr, other)``.

    With ``op``, each block of ``op(arr, other)`` is written into ``out`` (a
    C-contiguous array of ``arr``'s shape, possibly ``arr`` itself) or, without
    ``out``, into a block-sized temporary, and summed while it is in cache.
    """
    n = arr.shape[0]
    flat = arr.reshape(n, -1)
    factor = None if other is None else np.asarray(other).reshape(n, -1)
    target = None if out is None else _view_2d(out, (n, -1), "per-sample sums")
    dtype = np.result_type(flat, factor) if factor is not None else flat.dtype
    if dtype.kind != "f":
        dtype = np.dtype(np.float64)
    length = flat.shape[1]
    blocks = max(1, -(-length // SUM_BLOCK))
    sums = np.zeros((n, blocks), dtype=np.float64) if want_sum else None
    l1 = np.zeros((n, blocks), dtype=np.float64) if want_l1 else None

    def band(lo, hi):
        scratch = np.empty((n, min(SUM_BLOCK, length)), dtype=dtype)
        for block in range(lo, hi):  # a loop over memory blocks, each a vectorized sum
            start, stop = block * SUM_BLOCK, min((block + 1) * SUM_BLOCK, length)
            part, tmp = flat[:, start:stop], scratch[:, : stop - start]
            if op is not None:
                part = op(part, factor[:, start:stop], out=tmp if target is None else target[:, start:stop])
            if want_sum:
                sums[:, block] = np.add.reduce(part, axis=1, dtype=dtype)
            if want_l1:
                l1[:, block] = np.add.reduce(np.abs(part, out=tmp), axis=1, dtype=dtype)

    if length:
        parallel_rows(band, blocks, (want_sum + 2 * want_l1 + (op is not None)) * flat.size)
    return (None if sums is None else sums.sum(axis=1)), (None if l1 is None else l1.sum(axis=1))


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
    """Keep the scratch buffers of :func:`_scratch` (and the Winograd kernels) for one whole pass, then free them.

    Model-level entry points (``forward``, ``trace``, ``vjp``, ``explain``) run
    inside it; nested uses share the outer one, so each buffer is allocated once
    per pass and released when the outermost pass ends (no memory is held
    between calls). The transformed kernels of :func:`winograd_kernel` are kept
    for the same pass: a convolution's forward and its vjp share one.
    """
    _workspace.depth = getattr(_workspace, "depth", 0) + 1
    if _workspace.depth == 1:
        _workspace.buffers, _workspace.kernels = {}, {}
    try:
        yield
    finally:
        _workspace.depth -= 1
        if _workspace.depth == 0:
            _workspace.buffers = {}
            _workspace.kernels = {}


def _scratch(shape, dtype, slot: str = "im2col") -> np.ndarray:
    """An uninitialized array of ``shape`` in a per-thread buffer ``slot``, reused by every convolution.

    The im2col matrix is the largest temporary (9x its input), the Winograd
    tiles the next largest (4x); allocating them afresh for every layer makes
    the OS hand out and zero new pages each time (glibc returns every block
    above 32 MB to the OS), which cost VGG16's batch-8 forward pass almost half
    its time. Each slot grows to the largest array seen; its content is only
    read by the step right after it is filled, and every slot is freed when the
    outermost :func:`workspace` ends (outside one, a fresh array is returned).
    """
    if getattr(_workspace, "depth", 0) == 0:
        return np.empty(shape, dtype=dtype)
    buffers = _workspace.buffers
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = buffers.get(slot)
    if buffer is None or buffer.nbytes < nbytes:
        buffers[slot] = buffer = None  # free the smaller buffer before allocating the larger one
        buffers[slot] = buffer = np.empty(nbytes, dtype=np.uint8)
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
    source = win.transpose(0, 1, 2, 4, 5, 3)

    def gather(lo, hi):  # one gather, written straight into the GEMM's operand (faster than a copy per offset)
        np.copyto(cols[:, lo:hi], source[:, lo:hi])

    parallel_rows(gather, ho, cols.size)
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
    rows = [slice(i, i + sh * (ho - 1) + 1, sh) for i in range(kh)]
    columns = [slice(j, j + sw * (wo - 1) + 1, sw) for j in range(kw)]
    if c < COL2IM_CHANNELS_FIRST_BELOW:
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


# ---------------------------------------------------------------------------
# Winograd F(2x2, 3x3)
# ---------------------------------------------------------------------------
#
# A 3x3 stride-1 convolution computes each 2x2 block of outputs from a 4x4
# tile of its input (tiles overlap by 2). Winograd's minimal filtering
# algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural
# Networks", CVPR 2016) writes it as
#
#     Y = A^T [ (G g G^T) * (B^T d B) ] A           (* element-wise, 4x4)
#
#     B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
#     G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
#     A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
#
# Summed over input channels, the element-wise product becomes 16 GEMMs
# ``V[s] (tiles, C) @ U[s] (C, K)``, one per tile position ``s``: 16 x C x K
# multiply-adds per 4 outputs instead of 9 x C x K per output, 2.25x fewer.
# The transforms only add and subtract (B, A) or halve (G), exactly in binary
# floating point; the results differ from the im2col route by rounding alone
# (tests/test_kernels.py bounds it). Reversing the 3 taps of g permutes the rows
# of G (points 0 and infinity swap: ``G J = P G``), so the vjp (the convolution
# with the flipped, channel-swapped kernel) reuses the forward's ``U``.

#: Which convolution algorithm 3x3 stride-1 convolutions use: ``"auto"``
#: (Winograd in float32, the fast mode, where it pays; im2col in float64, the
#: reference mode), ``"winograd"`` (wherever it applies, any dtype) or
#: ``"im2col"`` (never Winograd). Set it with :func:`conv_algorithm`.
CONV_ALGORITHM = "auto"
#: ``"auto"`` takes Winograd when both channel counts are at least this (an RGB
#: input's 3 channels make 16 tiny GEMMs, slower than one im2col GEMM) ...
WINOGRAD_MIN_CHANNELS = 16
#: ... and at most this share of the tiled output is padding (a 7x7 map is
#: tiled as 8x8: 31% wasted work) ...
WINOGRAD_MAX_WASTE = 0.15
#: ... and each of its 16 GEMMs ``(tiles, C) @ (C, K)`` has at least this many
#: multiply-adds (``tiles * C * K``): smaller ones run far below the BLAS peak,
#: and the transforms cost more than the multiplications saved. Measured at
#: batch 1 on 2 cores (OpenBLAS): VGG16's 224x224 to 28x28 layers gain 20-40%;
#: ResNet50's 56x56x64, 28x28x128 and 14x14x256 layers and VGG16's 14x14x512 do
#: not, and whole ResNet50 explanations ran 10% faster with im2col there.
WINOGRAD_MIN_GEMM = 1 << 24
_WINOGRAD_FLIP = (3, 1, 2, 0)  # P: the tile position of each point after the 3 taps are reversed


def conv_algorithm(name: str):
    """A context manager that runs its block with :data:`CONV_ALGORITHM` set to ``name``.

    ``name`` is ``"auto"``, ``"winograd"`` or ``"im2col"``; anything else is a
    ValueError right away, before the block.
    """
    if name not in ("auto", "winograd", "im2col"):
        raise ValueError(f"conv_algorithm: expected 'auto', 'winograd' or 'im2col', found {name!r}")
    return _conv_algorithm(name)


@contextlib.contextmanager
def _conv_algorithm(name: str):
    global CONV_ALGORITHM
    previous, CONV_ALGORITHM = CONV_ALGORITHM, name
    try:
        yield
    finally:
        CONV_ALGORITHM = previous


def _winograd_applies(kernel_shape, strides, out_hw, dtype, batch: int = 1) -> bool:
    """Whether a convolution (or a vjp, as the convolution it is) runs as Winograd F(2x2, 3x3)."""
    kh, kw, cin, cout = kernel_shape
    if CONV_ALGORITHM == "im2col" or (kh, kw) != (3, 3) or tuple(strides) != (1, 1):
        return False
    if CONV_ALGORITHM == "winograd":
        return True
    ho, wo = out_hw
    tiles = batch * (-(-ho // 2)) * (-(-wo // 2))
    return (np.dtype(dtype) == np.float32 and min(cin, cout) >= WINOGRAD_MIN_CHANNELS
            and 4 * tiles <= (1 + WINOGRAD_MAX_WASTE) * batch * ho * wo and tiles * cin * cout >= WINOGRAD_MIN_GEMM)


def winograd_kernel(kernel: np.ndarray) -> np.ndarray:
    """``U = G g G^T`` for each (input, output) channel pair: ``(3, 3, C, K)`` -> ``(16, C, K)``, position ``4a + b``.

    Within a :func:`workspace` the result is kept for the rest of the pass, or
    until the kernel array itself is freed (a weak reference), so a layer's
    forward and vjp transform its kernel once.
    """
    cache = _workspace.kernels if getattr(_workspace, "depth", 0) else None
    if cache is not None:
        hit = cache.get(id(kernel))
        if hit is not None and hit[0]() is kernel:
            return hit[1]
    half = kernel.dtype.type(0.5)

    def apply_g(taps, out):  # out[a] = sum_i G[a, i] taps[i]
        out[0] = taps[0]
        np.add(taps[0], taps[2], out=out[1])
        np.subtract(out[1], taps[1], out=out[2])
        out[1] += taps[1]
        out[1:3] *= half
        out[3] = taps[2]

    rows = _scratch((4, 3) + kernel.shape[2:], kernel.dtype, "winograd_kernel")
    u = np.empty((4, 4) + kernel.shape[2:], dtype=kernel.dtype)

    def transform(lo, hi):  # input channels lo..hi
        apply_g(kernel[:, :, lo:hi], rows[:, :, lo:hi])  # G g: along the kernel's rows
        apply_g(rows[:, :, lo:hi].swapaxes(0, 1), u[:, :, lo:hi].swapaxes(0, 1))  # (G g) G^T: along its columns

    parallel_rows(transform, kernel.shape[2], 3 * u.size)
    u = u.reshape((16,) + kernel.shape[2:])
    if cache is not None:
        # a weak reference: a rule's modified kernel (z+, gamma) is not kept alive by the cache, and the
        # transforms of kernels freed since are dropped at the next insertion (no callback: no cycle)
        for key in [key for key, (ref, _) in cache.items() if ref() is None]:
            del cache[key]
        cache[id(kernel)] = (weakref.ref(kernel), u)
    return u


#: The Winograd transforms run a few tile rows at a time, so that the
#: intermediate of their two passes (rows, then columns) holds about this many
#: bytes and is read back from cache rather than memory (0: whole bands).
WINOGRAD_CHUNK_BYTES = 1 << 21
#: :func:`winograd_conv` takes the fused route when its transformed tiles
#: (``16 * tiles * max(C, K)`` values) would hold at least this many bytes (more
#: than the caches), its GEMMs have at most :data:`WINOGRAD_FUSED_MAX_CHANNELS`
#: channels on either side, and threadpoolctl is installed (the ``fast`` extra)
#: to hold BLAS to one thread per band (0: never). Such layers move more memory
#: than they multiply (a GEMM ``(tiles, C) @ (C, K)`` does about
#: ``C K / (2 (C + K))`` flops per byte, 16-32 at 64-128 channels). Measured on 2
#: cores, in-process A/B runs: whole VGG16 explanations ran about 8% faster at
#: batch 1 (the 224x224x64 layer) and 15-20% faster at batch 8; taking the
#: 256- and 512-channel layers too made batch 8 slower again.
WINOGRAD_FUSED_MIN_BYTES = 32 << 20
WINOGRAD_FUSED_MAX_CHANNELS = 128


def _chunk_rows(bytes_per_row: int, rows: int) -> int:
    """Tile rows per chunk: :data:`WINOGRAD_CHUNK_BYTES` of intermediate, at least 1."""
    if WINOGRAD_CHUNK_BYTES <= 0:
        return rows
    return max(1, min(rows, WINOGRAD_CHUNK_BYTES // max(bytes_per_row, 1)))


def _apply_bt(d, out):
    """``out[a] = sum_k B^T[a, k] d[k]``: tile rows (or columns) 0..3 -> the 4 transformed ones."""
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[1], d[3], out=out[3])


def _input_tiles(xp, p0, p1, tw, rows, v):
    """``B^T d B`` of tile rows ``p0..p1`` of ``xp`` into ``v`` ``(4, 4, N, p1 - p0, tw, C)``: rows, then columns.

    ``rows`` is an intermediate of at least ``(4, N, p1 - p0, Wp, C)``.
    """
    r = rows[:, :, : p1 - p0]
    _apply_bt([xp[:, 2 * p0 + k : 2 * p1 + k - 1 : 2] for k in range(4)], r)
    for a in range(4):
        _apply_bt([r[a][:, :, k : k + 2 * tw - 1 : 2] for k in range(4)], v[a])


def _output_tiles(m, half_rows, y):
    """``A^T m A`` of a band ``m`` ``(4, 4, N, rows, tw, K)`` into ``y`` ``(N, rows, 2, tw, 2, K)``: rows, then columns.

    ``half_rows`` is an intermediate of at least ``(2, 4, N, rows, tw, K)``.
    """
    t = half_rows[:, :, :, : m.shape[3]]
    np.add(m[0], m[1], out=t[0])
    t[0] += m[2]
    np.subtract(m[1], m[2], out=t[1])
    t[1] -= m[3]
    for a in range(2):
        out = y[:, :, a]
        np.add(t[a, 0], t[a, 1], out=out[:, :, :, 0])
        out[:, :, :, 0] += t[a, 2]
        np.subtract(t[a, 1], t[a, 2], out=out[:, :, :, 1])
        out[:, :, :, 1] -= t[a, 3]


def _tile_gemms(v, u, flip, m):
    """The 16 GEMMs ``m[s] = v[s] @ U[s]`` (``v``: ``(16, tiles, C)``); flipped: the permuted position, transposed."""
    for a in range(4):
        for b in range(4):
            s = 4 * a + b
            if flip:
                np.matmul(v[s], u[4 * _WINOGRAD_FLIP[a] + _WINOGRAD_FLIP[b]].T, out=m[s])
            else:
                np.matmul(v[s], u[s], out=m[s])


_blas_state = {"controller": None, "known": False}


def _blas_controller():
    """threadpoolctl's controller of the loaded BLAS libraries, or None when threadpoolctl is not installed."""
    if not _blas_state["known"]:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            controller = None
        else:
            controller = ThreadpoolController().select(user_api="blas")
        _blas_state.update(controller=controller, known=True)
    return _blas_state["controller"]


def winograd_fused_applies(n, th, tw, c, k_out, itemsize) -> bool:
    """Whether :func:`winograd_conv` takes the fused route (see :data:`WINOGRAD_FUSED_MIN_BYTES`)."""
    if WINOGRAD_FUSED_MIN_BYTES <= 0 or max(c, k_out) > WINOGRAD_FUSED_MAX_CHANNELS or _blas_controller() is None:
        return False
    return 16 * n * th * tw * max(c, k_out) * itemsize >= WINOGRAD_FUSED_MIN_BYTES


def winograd_conv(xp: np.ndarray, u: np.ndarray, flip: bool = False, bias=None) -> np.ndarray:
    """A "valid" 3x3 stride-1 correlation of the padded input ``xp`` by Winograd F(2x2, 3x3).

    ``u`` is :func:`winograd_kernel` of a kernel ``(3, 3, C, K)``. With
    ``flip=False`` the result is the convolution ``(N, Hp - 2, Wp - 2, K)`` (plus
    ``bias``); with ``flip=True`` it is the correlation with that kernel flipped
    in space and its channel axes swapped (input ``K`` channels, output ``C``):
    the vjp of the convolution once the gradient is padded.

    Two routes compute the same operations on each value: the **layered** one
    transforms every tile, runs 16 GEMMs over all tiles (BLAS on every core)
    and transforms back; the **fused** one (:func:`winograd_fused_applies`)
    gives each thread a band of tile rows and runs all three steps a few tile
    rows at a time, so that the transformed tiles never leave the cache.
    """
    n, hp, wp, c = xp.shape
    ho, wo = hp - 2, wp - 2
    th, tw = -(-ho // 2), -(-wo // 2)
    if 2 * th + 2 > hp or 2 * tw + 2 > wp:  # an odd output size: one more row/column of zeros
        xp = pad_nhwc(xp, ((0, 2 * th + 2 - hp), (0, 2 * tw + 2 - wp)), slot="padded_odd")
    dtype = np.result_type(xp, u)
    k_out = u.shape[1] if flip else u.shape[2]
    y = np.empty((n, th, 2, tw, 2, k_out), dtype=dtype)
    if winograd_fused_applies(n, th, tw, c, k_out, dtype.itemsize):
        _winograd_fused(xp, u, flip, bias, y)
    else:
        _winograd_layered(xp, u, flip, bias, y)
    y = y.reshape(n, 2 * th, 2 * tw, k_out)
    if 2 * th != ho or 2 * tw != wo:
        y = np.ascontiguousarray(y[:, :ho, :wo])
    return y


def _winograd_layered(xp, u, flip, bias, y):
    """:func:`winograd_conv` one step at a time over all tiles: transforms on the element-wise threads, GEMMs on BLAS's."""
    n, th, _, tw, _, k_out = y.shape
    c, dtype = xp.shape[3], y.dtype
    # input transform, a few tile rows at a time so that its intermediate stays in cache
    v = _scratch((4, 4, n, th, tw, c), dtype, "winograd_in")
    step_in = _chunk_rows(4 * n * xp.shape[2] * c * dtype.itemsize, th)

    def input_transform(lo, hi):
        rows = np.empty((4, n, min(step_in, hi - lo), xp.shape[2], c), dtype=dtype)
        for p0 in range(lo, hi, step_in):  # a loop over chunks of tile rows
            p1 = min(p0 + step_in, hi)
            _input_tiles(xp, p0, p1, tw, rows, v[:, :, :, p0:p1])

    parallel_rows(input_transform, th, 3 * v.size // 2)
    m = _scratch((16, n * th * tw, k_out), dtype, "winograd_out")
    _tile_gemms(v.reshape(16, n * th * tw, c), u, flip, m)
    m = m.reshape(4, 4, n, th, tw, k_out)
    if bias is not None:
        m[1, 1] += bias  # A^T e_1 = (1, 1): added once here, it reaches all four outputs of a tile
    step_out = _chunk_rows(8 * n * tw * k_out * dtype.itemsize, th)

    def output_transform(lo, hi):
        half_rows = np.empty((2, 4, n, min(step_out, hi - lo), tw, k_out), dtype=dtype)
        for p0 in range(lo, hi, step_out):  # a loop over chunks of tile rows
            p1 = min(p0 + step_out, hi)
            _output_tiles(m[:, :, :, p0:p1], half_rows, y[:, p0:p1])

    parallel_rows(output_transform, th, m.size)


def _winograd_fused(xp, u, flip, bias, y):
    """:func:`winograd_conv` band by band: each thread transforms, multiplies and transforms back its own tile rows.

    Each band's GEMMs are small and run on its own thread, so BLAS is held to
    one thread meanwhile (threadpoolctl) when there is more than one band:
    two bands each asking BLAS for every core made it several times slower.
    That limit is process-wide for its duration: a GEMM another thread of the
    program runs meanwhile gets one BLAS thread too (slower, never different).
    """
    n, th, _, tw, _, k_out = y.shape
    c, dtype = xp.shape[3], y.dtype
    step = _chunk_rows(16 * n * tw * max(c, k_out) * dtype.itemsize, th)

    def band(lo, hi):
        rows = np.empty((4, n, min(step, hi - lo), xp.shape[2], c), dtype=dtype)
        v = np.empty((16, n * min(step, hi - lo) * tw, c), dtype=dtype)
        m = np.empty((16, n * min(step, hi - lo) * tw, k_out), dtype=dtype)
        half_rows = np.empty((2, 4, n, min(step, hi - lo), tw, k_out), dtype=dtype)
        for p0 in range(lo, hi, step):  # a loop over chunks of tile rows
            p1 = min(p0 + step, hi)
            tiles = n * (p1 - p0) * tw
            _input_tiles(xp, p0, p1, tw, rows, v[:, :tiles].reshape(4, 4, n, p1 - p0, tw, c))
            _tile_gemms(v[:, :tiles], u, flip, m[:, :tiles])
            mc = m[:, :tiles].reshape(4, 4, n, p1 - p0, tw, k_out)
            if bias is not None:
                mc[1, 1] += bias
            _output_tiles(mc, half_rows, y[:, p0:p1])

    if min(num_threads(), th) > 1:
        with _blas_controller().limit(limits=1):
            parallel_rows(band, th, PARALLEL_MIN_WORK)
    else:
        band(0, th)


# ---------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------


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
    xp = pad_nhwc(x, pads, value=-np.inf, slot="padded")
    (kh, kw) = pool
    ho, wo = output_hw(xp.shape[1:3], pool, strides)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), dtype=x.dtype)

    def band(lo, hi):
        # one running maximum over the kh * kw window offsets, on output rows lo..hi (a reduction over a
        # strided window view is several times slower: its innermost axis is the 3-wide window, not the channels)
        rows = _offset_rows(lo, hi, wo, strides)
        np.copyto(out[:, lo:hi], xp[rows(0, 0)])
        for k in range(1, kh * kw):
            np.maximum(out[:, lo:hi], xp[rows(k // kw, k % kw)], out=out[:, lo:hi])

    parallel_rows(band, ho, kh * kw * out.size)
    return out


def _offset_rows(lo, hi, wo, strides):
    """``index(i, j)``: what :func:`_offset_slice` reads, for output rows ``lo..hi`` only."""
    sh, sw = strides

    def index(i, j):
        return slice(None), slice(i + sh * lo, i + sh * (hi - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)

    return index


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


#: :func:`maxpool_vjp` works on this many bytes of input at a time (per thread).
MAXPOOL_CHUNK_BYTES = 1 << 20


def maxpool_vjp(x, grad, pool, strides, pads) -> np.ndarray:
    """Route each output gradient to its window's winner (:func:`maxpool_winner`): chunks of output rows, threaded.

    Each chunk finds its windows' maxima, then each window offset's
    first-maximum mask, and puts ``grad`` there (ties: the first offset in
    row-major order).

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
    step = max(-(-kh // sh), MAXPOOL_CHUNK_BYTES // max(1, n * sh * wp * c * xp.dtype.itemsize))
    chunks = -(-ho // step)

    def run(lo, hi, parity):  # chunks lo..hi (of one parity, unless the windows tile the input)
        best = np.empty((n, min(step, ho), wo, c), dtype=xp.dtype)
        unclaimed, hit = np.empty(best.shape, dtype=bool), np.empty(best.shape, dtype=bool)
        share = np.empty(best.shape, dtype=dtype)
        chunk_range = range(lo, hi) if tiled else range(lo + (lo + parity) % 2, hi, 2)
        for chunk in chunk_range:  # a loop over chunks of output rows
            r0, r1 = chunk * step, min((chunk + 1) * step, ho)
            rows = _offset_rows(r0, r1, wo, strides)
            b, free, h, t = best[:, : r1 - r0], unclaimed[:, : r1 - r0], hit[:, : r1 - r0], share[:, : r1 - r0]
            np.copyto(b, xp[rows(0, 0)])
            for k in range(1, kh * kw):
                np.maximum(b, xp[rows(k // kw, k % kw)], out=b)
            free.fill(True)
            for k in range(kh * kw):  # the first offset (row-major) that holds the maximum wins
                index = rows(k // kw, k % kw)
                np.equal(xp[index], b, out=h)
                h &= free
                free ^= h
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
