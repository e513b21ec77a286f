"""Scratch buffers that live for one pass (a forward, a trace, a vjp, an explanation)."""

from __future__ import annotations

import contextlib
import threading

import numpy as np

_workspace = threading.local()


@contextlib.contextmanager
def workspace():
    """Keep the scratch buffers of :func:`buffer` (and the Winograd kernels) for one whole pass, then free them.

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


def buffer(shape, dtype, slot: str = "im2col") -> np.ndarray:
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
    held = buffers.get(slot)
    if held is None or held.nbytes < nbytes:
        buffers[slot] = held = None  # free the smaller buffer before allocating the larger one
        buffers[slot] = held = np.empty(nbytes, dtype=np.uint8)
    return held[:nbytes].view(dtype).reshape(shape)
