"""Validation kit: conformance vectors and the comparison of another implementation with them.

- :func:`compare` (one relevance array pair -> :class:`Report`) and
  :func:`validate` (a whole "theirs" file against a vectors set ->
  :class:`SuiteReport`);
- :func:`write_vectors` (``rlrp-ref vectors --out DIR``), :func:`load_manifest`,
  :func:`read_case`, :func:`load_model` (a case's network rebuilt from its HDF5
  file alone); :data:`PACKAGED_DIR` is the copy shipped with the package.

The file formats are documented in ``docs/validation.md``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .compare import DEFAULT_ATOL, DEFAULT_RTOL, LawCheck, Report, SuiteReport, check_laws, compare
from .network import read_network, write_network
from .vectors import (
    CASES,
    FORMAT,
    DEFINITION_VERSION,
    DEFINITIONS,
    FORMAT_VERSION,
    METHODS,
    PACKAGED_DIR,
    CaseData,
    load_manifest,
    load_model,
    read_case,
    write_vectors,
)


def read_theirs(path) -> dict[str, dict[str, np.ndarray]]:
    """Read a "theirs" file: ``{case: {method: relevance}}`` from HDF5 datasets ``/<case>/<method>``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"relevance file {path} does not exist")
    try:
        fh = h5py.File(path, "r")
    except OSError:
        raise ValueError(f"relevance file {path}: not an HDF5 file") from None
    out: dict[str, dict[str, np.ndarray]] = {}
    with fh:
        for case, group in fh.items():
            if not isinstance(group, h5py.Group):
                raise ValueError(f"relevance file {path}: expected a group per case, found dataset /{case}")
            out[case] = {}
            for method, ds in group.items():
                if not isinstance(ds, h5py.Dataset):
                    raise ValueError(f"relevance file {path}: expected a dataset /{case}/{method}, found a group")
                if ds.dtype.kind != "f":
                    raise ValueError(f"relevance file {path}: /{case}/{method} expected float64, found dtype {ds.dtype}")
                out[case][method] = np.asarray(ds[()], dtype=np.float64)
    return out


def validate(vectors_dir, theirs, *, methods=None, cases=None) -> SuiteReport:
    """Compare every relevance of ``theirs`` (a file path or ``{case: {method: array}}``) with a vectors set.

    Every case of the set (or of ``cases``) must be present in ``theirs``;
    each case is compared for the methods it holds (or for ``methods``, which
    must then all be present). Tolerances and method parameters come from the
    manifest. Raises ``ValueError`` for a missing or unknown case or method, a
    shape mismatch or a vectors set of another format version.
    """
    folder = Path(vectors_dir)
    manifest = load_manifest(folder)
    source = str(theirs) if isinstance(theirs, (str, Path)) else "their relevance"
    their = read_theirs(theirs) if isinstance(theirs, (str, Path)) else theirs
    known_cases = [entry["name"] for entry in manifest["cases"]]
    wanted = known_cases if cases is None else list(cases)
    unknown = [c for c in list(their) + wanted if c not in known_cases]
    if unknown:
        raise ValueError(f"{source}: unknown case {unknown[0]!r}; the vectors have {known_cases}")
    reports = []
    for name in wanted:
        if name not in their:
            raise ValueError(f"{source}: missing case {name!r} (expected /{name}/<method> datasets)")
        data = read_case(folder, name, manifest)
        their_methods = their[name]
        bad = [m for m in their_methods if m not in manifest["methods"]]
        if bad:
            raise ValueError(f"{source}: /{name}/{bad[0]} is not a method of the vectors; methods {sorted(manifest['methods'])}")
        chosen = list(their_methods) if methods is None else list(methods)
        if not chosen:
            raise ValueError(f"{source}: case {name!r} holds no method")
        for method in chosen:
            if method not in manifest["methods"]:
                raise ValueError(f"unknown method {method!r}; the vectors have {sorted(manifest['methods'])}")
            if method not in their_methods:
                raise ValueError(f"{source}: missing /{name}/{method}")
            expected = data.relevance[method]
            got = their_methods[method]
            if got.shape != expected.shape:
                raise ValueError(f"{source}: /{name}/{method} expected shape {expected.shape}, found {got.shape}")
            spec = manifest["methods"][method]
            reports.append(compare(expected, got, method, rtol=spec["rtol"], atol=spec["atol"],
                                   target_logits=data.target_logits, bias_free=data.bias_free,
                                   k=manifest.get("topk"), case=name))
    return SuiteReport(reports, manifest["definition_version"])


__all__ = [
    "CASES", "CaseData", "DEFAULT_ATOL", "DEFAULT_RTOL", "DEFINITIONS", "DEFINITION_VERSION", "FORMAT", "FORMAT_VERSION", "LawCheck", "METHODS",
    "PACKAGED_DIR", "Report", "SuiteReport", "check_laws", "compare", "load_manifest", "load_model",
    "read_case", "read_network", "read_theirs", "validate", "write_network", "write_vectors",
]
