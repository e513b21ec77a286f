"""Per-sample sums (and L1 norms) over every axis but the first, alone or fused with a product or a sum."""

from __future__ import annotations

import numpy as np

from . import tuning
from .threads import _view_2d, parallel_rows


def per_sample_sum(arr: np.ndarray, absolute: bool = False, weights: np.ndarray | None = None) -> np.ndarray:
    """``sum_j f(arr[n, j])`` for each sample ``n`` (every axis but the first summed), as float64 ``(N,)``.

    ``f`` is the identity, ``abs`` (``absolute=True``: the L1 norm) or the
    product with ``weights``, an array of ``arr``'s shape (a dot product). The
    values are added in blocks of :data:`~rlrp_ref.kernels.tuning.SUM_BLOCK` elements: within a block by
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
    blocks = max(1, -(-length // tuning.SUM_BLOCK))
    sums = np.zeros((n, blocks), dtype=np.float64) if want_sum else None
    l1 = np.zeros((n, blocks), dtype=np.float64) if want_l1 else None

    def band(lo, hi):
        scratch = np.empty((n, min(tuning.SUM_BLOCK, length)), dtype=dtype)
        for block in range(lo, hi):  # a loop over memory blocks, each a vectorized sum
            start, stop = block * tuning.SUM_BLOCK, min((block + 1) * tuning.SUM_BLOCK, length)
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
