"""Write outputs all or nothing: no half-written file or folder on an error."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def check_out_dir(out) -> Path:
    """An output folder may exist (as a folder); its parent must. ValueError/FileNotFoundError otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out}: expected a folder, found a file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {out}: parent folder {parent} does not exist")
    return out


@contextlib.contextmanager
def staged_dir(out_dir):
    """Yield a temporary folder beside ``out_dir``; on success move its files into ``out_dir``.

    On any exception the temporary folder is removed and ``out_dir`` is neither
    created nor changed. Files already in ``out_dir`` with the same names are
    replaced; others are left alone.
    """
    out = check_out_dir(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        for root, dirs, files in os.walk(tmp):
            rel = Path(root).relative_to(tmp)
            (out / rel).mkdir(parents=True, exist_ok=True)
            for f in files:
                os.replace(Path(root) / f, out / rel / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success only."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"output file {target}: folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
