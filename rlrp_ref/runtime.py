"""Process-level settings that make the engine fast on Linux, made only when asked: :func:`tune`.

``import rlrp_ref`` changes nothing in the host process. :func:`tune` (which
the ``rlrp-ref`` command and the benchmarks call) makes two settings and
returns what it did; results never depend on either.

1. **OpenBLAS's idle spin.** OpenBLAS's idle worker threads spin for 2**28
   cycles (about 0.1 s) after every GEMM before they sleep, holding the cores
   that the threaded element-wise passes (:func:`rlrp_ref.kernels.parallel_rows`)
   run on between GEMMs. ``OPENBLAS_THREAD_TIMEOUT=16`` (2**16 cycles) lets
   them sleep sooner, but OpenBLAS reads it once, when NumPy loads it. So
   :func:`tune` sets it only while NumPy is not yet imported, and otherwise
   says that it could not. ``import rlrp_ref`` itself loads NumPy, so in
   practice set it in the environment before Python starts
   (``OPENBLAS_THREAD_TIMEOUT=16 rlrp-ref ...``; the benchmark scripts set it
   for themselves before importing NumPy); a value already set is kept.
2. **Freed memory kept for reuse (glibc).** An explanation allocates and frees
   a few hundred megabytes per call (the trace, each layer's relevance, the
   folded kernels). By default glibc hands freed memory back to the OS as soon
   as more than a few tens of megabytes sit free at the top of the heap, so the
   next allocation asks the kernel for fresh pages, and the kernel zeroes every
   one on first touch. On the 2-core KVM guest of docs/performance.md those
   page faults took about a fifth of a batch-1 R-LRP explanation (VGG16
   0.44 -> 0.35 s, ResNet50 0.24 -> 0.19 s once they were gone).
   :func:`keep_freed_memory` asks glibc (``mallopt``) to serve every block up
   to 32 MB from its heap and to keep up to 1 GiB of freed memory for reuse;
   :func:`tune` calls it unless ``RLRP_REF_KEEP_FREED_MEMORY=0`` is set, or the
   user tunes glibc's allocator already (any of :data:`MALLOC_ENV` is set), or
   the C library is not glibc (then nothing changes). What it costs: the
   process's resident memory stays near its peak after an explanation instead
   of shrinking (up to 1 GiB more), for the whole process, not just for
   rlrp-ref. :func:`release_memory` gives the freed memory back at once.

Neither setting needs threadpoolctl: the first is an environment variable, the
second a call into the C library (ctypes).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import NamedTuple

#: glibc's ``mallopt`` parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (glibc's largest allowed value on 64-bit systems).
MMAP_THRESHOLD_BYTES = 32 << 20
#: Freed memory kept for reuse before glibc gives it back to the OS.
KEEP_FREED_BYTES = 1 << 30
#: Environment variables through which a user tunes glibc's allocator; if any is set, rlrp-ref leaves it alone.
MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
#: The value :func:`tune` gives ``OPENBLAS_THREAD_TIMEOUT`` (2**16 cycles of spinning before an idle thread sleeps).
OPENBLAS_THREAD_TIMEOUT = "16"


def _glibc():
    """The process's glibc (ctypes), or None on another C library."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory(limit_bytes: int = KEEP_FREED_BYTES) -> bool:
    """Let glibc keep up to ``limit_bytes`` of freed memory, and serve blocks up to 32 MB from its heap.

    Returns True when glibc accepted both settings, False on another C library
    (nothing is changed then). Process-wide: see the module docstring.
    """
    if not isinstance(limit_bytes, int) or not 0 <= limit_bytes < 2**31:
        raise ValueError(f"keep_freed_memory: expected an int number of bytes in [0, 2**31), found {limit_bytes!r}")
    libc = _glibc()
    if libc is None:
        return False
    return libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and libc.mallopt(M_TRIM_THRESHOLD, limit_bytes) == 1


def release_memory() -> bool:
    """Give the freed memory glibc keeps back to the OS now (``malloc_trim(0)``); False if there was none or no glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


class Tuning(NamedTuple):
    """What :func:`tune` did."""

    #: ``OPENBLAS_THREAD_TIMEOUT`` as it is now in ``os.environ`` (None: not set).
    openblas_thread_timeout: str | None
    #: True when :func:`tune` set it (NumPy was not loaded yet and the variable was not set).
    set_openblas_thread_timeout: bool
    #: True when :func:`tune` had glibc keep freed memory (:func:`keep_freed_memory` accepted).
    keeps_freed_memory: bool
    #: One sentence per setting that was not made, saying why.
    notes: tuple[str, ...]


#: What the last :func:`tune` call did (None: never called in this process).
LAST_TUNE: Tuning | None = None


def tune(openblas_thread_timeout: bool = True, freed_memory: bool = True) -> Tuning:
    """Make this process's settings for speed (module docstring), where they can still be made; returns what was done.

    ``openblas_thread_timeout``: set ``OPENBLAS_THREAD_TIMEOUT=16`` if NumPy is
    not imported yet and the variable is unset (a user's value is kept; once
    NumPy has loaded OpenBLAS, setting it would have no effect, so it is not
    set and a note says so). ``freed_memory``: call :func:`keep_freed_memory`
    unless ``RLRP_REF_KEEP_FREED_MEMORY=0`` or a glibc ``MALLOC_*`` variable is
    set. Process-wide; call it once, early, from an application (never from a
    library). Safe to call again.
    """
    global LAST_TUNE
    notes = []
    set_timeout = False
    current = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if openblas_thread_timeout:
        if current is not None:
            notes.append(f"OPENBLAS_THREAD_TIMEOUT={current} was already set: kept")
        elif "numpy" in sys.modules:
            notes.append("OPENBLAS_THREAD_TIMEOUT not set: NumPy (and OpenBLAS) is already loaded, so it would have no "
                         "effect; set OPENBLAS_THREAD_TIMEOUT=16 in the environment before starting Python")
        else:
            os.environ["OPENBLAS_THREAD_TIMEOUT"] = current = OPENBLAS_THREAD_TIMEOUT
            set_timeout = True
    kept = False
    if freed_memory:
        if os.environ.get("RLRP_REF_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
            notes.append("glibc's freed memory not kept: RLRP_REF_KEEP_FREED_MEMORY is off")
        elif any(name in os.environ for name in MALLOC_ENV):
            notes.append("glibc's freed memory not kept: the environment tunes glibc's allocator already")
        else:
            kept = keep_freed_memory()
            if not kept:
                notes.append("glibc's freed memory not kept: the C library is not glibc")
    LAST_TUNE = Tuning(current, set_timeout, kept, tuple(notes))
    return LAST_TUNE


__all__ = ["KEEP_FREED_BYTES", "LAST_TUNE", "MALLOC_ENV", "OPENBLAS_THREAD_TIMEOUT", "Tuning", "keep_freed_memory",
           "release_memory", "tune"]
