"""Process-level settings that make the engine fast on Linux: how much freed memory glibc keeps.

An explanation allocates and frees a few hundred megabytes per call (the
trace, each layer's relevance, the folded kernels). By default glibc hands
freed memory back to the OS as soon as more than a few tens of megabytes sit
free at the top of the heap, so the next allocation asks the kernel for fresh
pages, and the kernel zeroes every one on first touch. On the 2-core KVM guest
of docs/performance.md those page faults took about a fifth of a batch-1 R-LRP
explanation (VGG16 0.44 -> 0.35 s, ResNet50 0.24 -> 0.19 s once they were gone).

:func:`keep_freed_memory` asks glibc (``mallopt``) to serve every block up to
32 MB from its heap and to keep up to 1 GiB of freed memory for reuse;
``import rlrp_ref`` calls it unless

- ``RLRP_REF_KEEP_FREED_MEMORY=0`` is set, or
- the user tunes glibc's allocator already (any of ``MALLOC_TRIM_THRESHOLD_``,
  ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` is set),
- or the C library is not glibc (then nothing changes).

What it costs: the process's resident memory stays near its peak after an
explanation instead of shrinking (up to 1 GiB more), and this holds for the
whole process, not just for rlrp-ref. :func:`release_memory` gives the freed
memory back at once. Results never depend on any of this.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: glibc's ``mallopt`` parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (glibc's largest allowed value on 64-bit systems).
MMAP_THRESHOLD_BYTES = 32 << 20
#: Freed memory kept for reuse before glibc gives it back to the OS.
KEEP_FREED_BYTES = 1 << 30
#: Environment variables through which a user tunes glibc's allocator; if any is set, rlrp-ref leaves it alone.
MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
#: What ``import rlrp_ref`` did: True when it called :func:`keep_freed_memory` and glibc accepted it.
KEPT_AT_IMPORT = False


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


def _keep_freed_memory_at_import() -> bool:
    """``import rlrp_ref``'s call of :func:`keep_freed_memory`, unless the user opted out or tunes glibc already."""
    global KEPT_AT_IMPORT
    if os.environ.get("RLRP_REF_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(name in os.environ for name in MALLOC_ENV):
        return False
    KEPT_AT_IMPORT = keep_freed_memory()
    return KEPT_AT_IMPORT


__all__ = ["KEEP_FREED_BYTES", "KEPT_AT_IMPORT", "MALLOC_ENV", "keep_freed_memory", "release_memory"]
