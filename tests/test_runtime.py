"""rlrp_ref.runtime: ``import rlrp_ref`` changes nothing in the process; ``tune()`` makes both speed settings.

Every check runs in a fresh interpreter (a subprocess), since both settings are process-wide.
"""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from rlrp_ref import runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
RUNTIME_PY = Path(runtime.__file__)
#: The children run from the directory holding this rlrp_ref, so that they import the same one.
ROOT = RUNTIME_PY.parents[1]
#: The variables that steer what tune() does: removed from the children's environment unless a test sets one.
STEERING = ("OPENBLAS_THREAD_TIMEOUT", "RLRP_REF_KEEP_FREED_MEMORY") + runtime.MALLOC_ENV

# How much of 320 MB of freed 8 MB blocks glibc hands back to the OS at once (MB), and after malloc_trim.
_RSS_PROBE = """
import os, sys
before = dict(os.environ)
import rlrp_ref
import numpy as np
{setup}

def rss():
    return int([line for line in open("/proc/self/status") if line.startswith("VmRSS")][0].split()[1]) // 1024

del [np.ones(1 << 20) for _ in range(2)][:]  # one 8 MB block freed: glibc's own threshold rises to it
blocks = [np.ones(1 << 20) for _ in range(40)]  # 320 MB in 8 MB blocks
full = rss()
del blocks
kept = full - rss()
print(before == dict(os.environ), kept, full - rss() if rlrp_ref.runtime.release_memory() else kept)
"""


def _run(code, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in STEERING}
    return subprocess.run([sys.executable, "-c", code], env={**env, **env_extra}, capture_output=True, text=True,
                          check=True, cwd=ROOT).stdout.split()


def _probe(setup="", **env_extra):
    """``(environment unchanged, MB released when freed, MB released after malloc_trim)`` in a fresh process."""
    same_env, released_at_free, released_after_trim = _run(_RSS_PROBE.format(setup=setup), **env_extra)
    return same_env == "True", int(released_at_free), int(released_after_trim)


def test_import_changes_no_environment_variable_and_no_allocator_setting():
    """``import rlrp_ref`` leaves os.environ as it was and glibc's trimming at its default (freed blocks go back)."""
    unchanged, released_at_free, _ = _probe()
    assert unchanged
    if GLIBC:  # with glibc's defaults, freed memory beyond a few tens of MB is returned right away
        assert released_at_free > 250, released_at_free
    out = _run("import os; before = dict(os.environ); import numpy, rlrp_ref; print(before == dict(os.environ), "
               "rlrp_ref.runtime.LAST_TUNE)")
    assert out == ["True", "None"]


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator settings exist only with glibc")
def test_tune_keeps_freed_memory_unless_told_not_to():
    """After tune(), freed blocks are kept for reuse; release_memory() gives them back; the opt-outs are honoured."""
    unchanged, released_at_free, released_after_trim = _probe("tuned = rlrp_ref.runtime.tune()")
    assert released_at_free < 40 and released_after_trim > 250, (released_at_free, released_after_trim)
    for opt_out in ({"RLRP_REF_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TOP_PAD_": "131072"}):
        _, released_at_free, _ = _probe("tuned = rlrp_ref.runtime.tune()", **opt_out)
        assert released_at_free > 250, (opt_out, released_at_free)
    code = ("import rlrp_ref; t = rlrp_ref.runtime.tune(); "
            "print(t.keeps_freed_memory, t is rlrp_ref.runtime.LAST_TUNE, len(t.notes))")
    assert _run(code) == ["True", "True", "1"]  # the one note: NumPy was loaded, the timeout could not be set
    assert _run(code, RLRP_REF_KEEP_FREED_MEMORY="off") == ["False", "True", "2"]


def test_tune_sets_the_openblas_timeout_only_before_numpy_loads():
    """Before NumPy: tune() sets OPENBLAS_THREAD_TIMEOUT=16 (a user's value is kept); after it: a note says it could not."""
    # runtime.py needs only the standard library, so a child can run it before NumPy is ever imported
    load = ("import importlib.util, os, sys; spec = importlib.util.spec_from_file_location('rt', {path!r}); "
            "rt = importlib.util.module_from_spec(spec); spec.loader.exec_module(rt); ").format(path=str(RUNTIME_PY))
    show = "print('numpy' in sys.modules, os.environ.get('OPENBLAS_THREAD_TIMEOUT'), t.set_openblas_thread_timeout)"
    assert _run(load + f"t = rt.tune(freed_memory=False); {show}") == ["False", "16", "True"]
    assert _run(load + f"t = rt.tune(freed_memory=False); {show}", OPENBLAS_THREAD_TIMEOUT="20") == ["False", "20", "False"]
    assert _run(load + f"t = rt.tune(openblas_thread_timeout=False, freed_memory=False); {show}") == ["False", "None", "False"]
    after = "import numpy; " + load + "t = rt.tune(freed_memory=False); " + show + "; print(len(t.notes), 'NumPy' in t.notes[0])"
    assert _run(after) == ["True", "None", "False", "1", "True"]


def test_keep_freed_memory_checks_its_argument():
    with pytest.raises(ValueError, match="expected an int number of bytes in \\[0, 2\\*\\*31\\), found 2147483648"):
        runtime.keep_freed_memory(2**31)
    if not GLIBC:
        assert runtime.keep_freed_memory() is False and runtime.release_memory() is False
