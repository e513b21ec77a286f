"""Winograd F(2x2, 3x3): a 3x3 stride-1 convolution and its vjp with 2.25x fewer multiply-adds.

A 3x3 stride-1 convolution computes each 2x2 block of outputs from a 4x4
tile of its input (tiles overlap by 2). Winograd's minimal filtering
algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", CVPR 2016) writes it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A           (* element-wise, 4x4)

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

Summed over input channels, the element-wise product becomes 16 GEMMs
``V[s] (tiles, C) @ U[s] (C, K)``, one per tile position ``s``: 16 x C x K
multiply-adds per 4 outputs instead of 9 x C x K per output, 2.25x fewer.
The transforms only add and subtract (B, A) or halve (G), exactly in binary
floating point; the results differ from the im2col route by rounding alone
(tests/test_kernels.py bounds it). Reversing the 3 taps of g permutes the rows
of G (points 0 and infinity swap: ``G J = P G``), so the vjp (the convolution
with the flipped, channel-swapped kernel) reuses the forward's ``U``.

Which convolutions take it is chosen in :mod:`rlrp_ref.kernels.convolution`
(``_winograd_applies``, :func:`~rlrp_ref.kernels.conv_algorithm`). On large
maps with few channels it runs fused, band by band in cache (with
threadpoolctl): :func:`winograd_fused_applies`.
"""

from __future__ import annotations

import weakref

import numpy as np

from . import scratch, tuning
from .padding import pad_nhwc
from .threads import _blas_controller, num_threads, parallel_rows

_WINOGRAD_FLIP = (3, 1, 2, 0)  # P: the tile position of each point after the 3 taps are reversed


def winograd_kernel(kernel: np.ndarray) -> np.ndarray:
    """``U = G g G^T`` for each (input, output) channel pair: ``(3, 3, C, K)`` -> ``(16, C, K)``, position ``4a + b``.

    Within a :func:`~rlrp_ref.kernels.scratch.workspace` the result is kept for the rest of the pass, or
    until the kernel array itself is freed (a weak reference), so a layer's
    forward and vjp transform its kernel once.
    """
    cache = scratch._workspace.kernels if getattr(scratch._workspace, "depth", 0) else None
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

    rows = scratch.buffer((4, 3) + kernel.shape[2:], kernel.dtype, "winograd_kernel")
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

def _chunk_rows(bytes_per_row: int, rows: int) -> int:
    """Tile rows per chunk: :data:`~rlrp_ref.kernels.tuning.WINOGRAD_CHUNK_BYTES` of intermediate, at least 1."""
    if tuning.WINOGRAD_CHUNK_BYTES <= 0:
        return rows
    return max(1, min(rows, tuning.WINOGRAD_CHUNK_BYTES // max(bytes_per_row, 1)))


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



def winograd_fused_applies(n, th, tw, c, k_out, itemsize) -> bool:
    """Whether :func:`winograd_conv` takes the fused route (see :data:`~rlrp_ref.kernels.tuning.WINOGRAD_FUSED_MIN_BYTES`)."""
    if tuning.WINOGRAD_FUSED_MIN_BYTES <= 0 or max(c, k_out) > tuning.WINOGRAD_FUSED_MAX_CHANNELS:
        return False
    if _blas_controller() is None:
        return False
    return 16 * n * th * tw * max(c, k_out) * itemsize >= tuning.WINOGRAD_FUSED_MIN_BYTES


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
    v = scratch.buffer((4, 4, n, th, tw, c), dtype, "winograd_in")
    step_in = _chunk_rows(4 * n * xp.shape[2] * c * dtype.itemsize, th)

    def input_transform(lo, hi):
        rows = np.empty((4, n, min(step_in, hi - lo), xp.shape[2], c), dtype=dtype)
        for p0 in range(lo, hi, step_in):  # a loop over chunks of tile rows
            p1 = min(p0 + step_in, hi)
            _input_tiles(xp, p0, p1, tw, rows, v[:, :, :, p0:p1])

    parallel_rows(input_transform, th, 3 * v.size // 2)
    m = scratch.buffer((16, n * th * tw, k_out), dtype, "winograd_out")
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
            parallel_rows(band, th, tuning.PARALLEL_MIN_WORK)
    else:
        band(0, th)
