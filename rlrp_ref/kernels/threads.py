"""The small thread pool of the element-wise passes, and the hold on BLAS's threads.

BLAS runs every GEMM on all cores, but a NumPy ufunc or copy runs on one. The
large element-wise passes (the im2col gather, the Winograd transforms, col2im,
padding, ReLU, BatchNorm, the per-sample sums of the ledger) are therefore
split into bands on a small thread pool (:func:`parallel_rows`,
:func:`elementwise`, :func:`channelwise`): NumPy releases the GIL inside each
ufunc loop, so the bands run in parallel. Every band writes its own part of the
output; the results are the same, bit for bit, whatever the thread count.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import tuning

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
    :data:`~rlrp_ref.kernels.tuning.PARALLEL_MIN_WORK` (or with one thread, or one row) ``fn(0, rows)``
    runs on the calling thread. ``fn`` must write disjoint outputs for disjoint bands.
    """
    threads = min(num_threads(), rows)
    if threads <= 1 or work < tuning.PARALLEL_MIN_WORK:
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
    :data:`~rlrp_ref.kernels.tuning.PARALLEL_MIN_WORK`). Returns ``out``.
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
