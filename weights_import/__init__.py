"""Load weights from HDF5 files into rlrp_ref models.

``load(path, model)`` detects the layout (:func:`detect_layout`), reads it into
plain arrays keyed by layer name, and assigns them with exact shape checks:

- ``"keras_h5"``: Keras application weight files and ``save_weights`` ``.h5``
  files (root attribute ``layer_names``), ``notop`` files included;
- ``"keras_h5_model"``: a legacy full-model ``model.save("f.h5")`` (the same
  structure under ``model_weights/``);
- ``"keras3_weights"``: Keras 3 ``.weights.h5`` (``layers/<auto-name>/vars/<i>``);
- ``"torch_state_dict"``: a torch state dict stored one dataset per key
  (``features.0.weight``, ...), as written by ``python -m weights_import.torch_to_h5``.

:func:`assign_state_dict` fills a model straight from an in-memory torch state dict.
Every failure is a :class:`WeightsError` (a ``ValueError``) with a one-line
message naming the file, the layer, what was expected and what was found, and
the model is left untouched (nothing half-assigned). The file is read only
through :mod:`weights_import._h5`, which turns every h5py/libhdf5 error into
such a message and refuses links, virtual, external or never-written datasets
and malformed attributes before anything is read; only arrays whose shapes
the model predicts are allocated.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from . import _h5
from . import keras as _keras
from . import torch as _torch
from ._assign import assign, match
from .errors import WeightsError
from .torch import assign_state_dict

__all__ = ["WeightsError", "LAYOUTS", "detect_layout", "load", "read", "inspect", "assign_state_dict", "format_inspection"]

LAYOUTS = ("keras_h5", "keras_h5_model", "keras3_weights", "torch_state_dict")


def _open(path):
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"{path}: expected an HDF5 weights file, found no such file")
    if os.path.isdir(path):
        raise WeightsError(f"{path}: expected an HDF5 weights file, found a directory")
    with _h5.guard(path, "file"):
        signed = h5py.is_hdf5(path)
    if not signed:
        raise WeightsError(f"{path}: expected an HDF5 weights file, found a file without the HDF5 signature")
    try:
        return h5py.File(path, "r")
    except _h5._HDF5_ERRORS as err:
        raise WeightsError(f"{path}: expected a readable HDF5 file, found it truncated or corrupt ({_h5.one_line(err)})") from None


@contextlib.contextmanager
def _reading(path):
    """Open ``path`` for reading; any h5py/libhdf5 error while it is open becomes a one-line WeightsError."""
    origin = os.fspath(path)
    with _h5.guard(origin, "file"):
        h5file = _open(path)
        with h5file:
            yield h5file


def _layout_of(h5file, origin: str) -> str:
    if _h5.has_attr(h5file, "layer_names", origin, "/"):
        return "keras_h5"
    model_weights = _h5.child(h5file, "model_weights", origin, "")
    if hasattr(model_weights, "keys") and _h5.has_attr(model_weights, "layer_names", origin, "model_weights"):
        return "keras_h5_model"
    if hasattr(_h5.child(h5file, "layers", origin, ""), "keys"):
        return "keras3_weights"
    if _h5.has_attr(h5file, "format", origin, "/") and _h5.attr_string(h5file, "format", origin, "/") == "torch_state_dict":
        return "torch_state_dict"
    keys = _h5.members(h5file, origin, "/")
    if keys and all(_torch.split_key(k)[1] in _torch.TENSOR_SUFFIXES and not hasattr(_h5.child(h5file, k, origin, ""), "keys")
                    for k in keys):
        return "torch_state_dict"
    raise WeightsError(
        f"{origin}: expected a known weights layout (root attribute layer_names, group model_weights/ or layers/, "
        f"or state-dict datasets such as 'features.0.weight'), found top-level keys {keys[:6]}"
    )


def detect_layout(path) -> str:
    """One of :data:`LAYOUTS`, or :class:`WeightsError`."""
    with _reading(path) as h5file:
        return _layout_of(h5file, os.fspath(path))


def _entries(h5file, layout: str, model, origin: str) -> dict:
    if layout == "keras_h5":
        return _keras.h5_entries(h5file, origin)
    if layout == "keras_h5_model":
        return _keras.h5_entries(_h5.child(h5file, "model_weights", origin, "", "group"), origin, "/model_weights")
    if layout == "keras3_weights":
        return _keras.keras3_entries(h5file, model, origin)
    return _torch.entries_from_sources(model, _torch.h5_sources(h5file, origin), origin)


def load(path, model) -> None:
    """Fill every parameter of ``model`` from the weights file ``path`` (all or nothing).

    Each array is read once, straight into the dtype of the parameter it
    replaces; at the peak the process holds the model's old parameters plus one
    copy of the new ones.
    """
    origin = os.fspath(path)
    with _reading(path) as h5file:
        assign(model, _entries(h5file, _layout_of(h5file, origin), model, origin), origin)


def read(path, max_bytes: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Every stored array as ``{layer key: {weight name: array}}`` in the file's own layout (no conversion).

    Keys are Keras layer names (``keras_h5*``), auto-names (``keras3_weights``,
    followed by the stored layer name in parentheses when the file has it)
    or torch module paths (``torch_state_dict``); weight names as stored
    (``kernel:0``, ``0``, ``weight``, ...).

    Without a model to predict the shapes, the arrays declared in the file may
    take at most ``max_bytes`` in all (default: the file's size, which arrays
    stored uncompressed never exceed); a larger declaration, such as a
    compressed file, raises :class:`WeightsError` naming the total before
    anything is read.
    """
    origin = os.fspath(path)
    with _reading(path) as h5file:
        stored = _stored_items(h5file, _layout_of(h5file, origin), origin)
        limit = os.path.getsize(origin) if max_bytes is None else int(max_bytes)
        total = sum(math.prod(src.shape) * np.dtype(src.dtype).itemsize for items in stored.values() for _, src in items)
        if total > limit:
            raise WeightsError(f"{origin}: expected arrays of at most {limit} bytes in all "
                               f"({'the file size' if max_bytes is None else 'max_bytes'}), found {total} bytes declared "
                               f"(pass read(path, max_bytes=...) to allow more)")
        _h5.check_disjoint([span for items in stored.values() for _, src in items for span in src.extents], origin)
        return {key: {name: src.read(src.dtype) for name, src in items} for key, items in stored.items()}


def _stored_items(h5file, layout: str, origin: str) -> dict:
    """``{layer key: [(weight name, Source)]}`` as stored, without reading any array."""
    if layout in ("keras_h5", "keras_h5_model"):
        if layout == "keras_h5":
            entries = _keras.h5_entries(h5file, origin)
        else:
            entries = _keras.h5_entries(_h5.child(h5file, "model_weights", origin, "", "group"), origin, "/model_weights")
        return {name: [(src.key.rsplit("/", 1)[-1], src) for _, src in items] for name, items in entries.items()}
    if layout == "keras3_weights":
        return {(f"{auto} ({name})" if name else auto): [(str(i), s) for i, s in enumerate(sources)]
                for auto, name, sources in _keras.keras3_groups(h5file, origin)}
    out: dict[str, list] = {}
    for key, src in _torch.h5_sources(h5file, origin).items():
        module, tensor = _torch.split_key(key)
        if tensor not in _torch.SKIPPED_SUFFIXES:
            out.setdefault(module, []).append((tensor, src))
    return out


def _class_counts(stored: dict, layout: str) -> list[int]:
    """Candidate class counts: output sizes of 2-D weights that no other 2-D weight takes as input."""
    outs, ins = [], set()
    for items in stored.values():
        for _, src in items:
            if len(src.shape) == 2:
                n_in, n_out = src.shape[::-1] if layout == "torch_state_dict" else src.shape
                outs.append(n_out)
                ins.add(n_in)
    return sorted({n for n in outs if n not in ins}) or [1000]


def _fits(h5file, layout: str, stored: dict, origin: str, candidates) -> list[dict]:
    """The descriptions of the ``candidates`` whose parameter names and shapes the file matches exactly (see :func:`inspect`)."""
    class_counts = _class_counts(stored, layout)
    if layout == "keras3_weights":
        stored_names = {name for _, name, _ in _keras.keras3_groups(h5file, origin)}
    else:
        stored_names = set(stored)
    fits, tried = [], set()
    for group in candidates(class_counts):
        for description, make_model in group:  # the first of a group that matches is taken
            key = tuple(description.items())
            if key in tried:
                continue
            tried.add(key)
            try:
                model = make_model()
                match(model, _entries(h5file, layout, model, origin), origin)
            except ValueError:
                continue
            names = {layer.name for layer in model.iter_layers() if layer.params}
            fits.append({**description, "by_name": names == stored_names})
            break
    if any(fit["by_name"] for fit in fits):
        # a Keras 3 file that names its layers fits the builder with those names; others fit by shapes alone
        fits = [fit for fit in fits if fit["by_name"]]
    for fit in fits:
        del fit["by_name"]
    return fits


def inspect(path, fits: bool = True, candidates=None) -> dict:
    """What a weights file holds, without loading it.

    Returns ``{"path", "layout", "layers": [(key, [(weight name, shape, dtype)])],
    "num_arrays", "num_params", "fits"}``. ``fits`` lists the ``candidates``
    whose parameter names and shapes the file matches exactly, found by matching
    against zero-memory placeholder models (no weights are read or allocated);
    it is None when nothing was matched (``fits=False`` or no ``candidates``).

    ``candidates(class_counts)`` yields groups of ``(description, make_model)``:
    ``description`` a dict (what ``fits`` lists), ``make_model()`` a placeholder
    model; the first of a group that matches is taken, and ``class_counts``
    are the output sizes of the file's last 2-D weights. This package does not
    know the model zoo: :func:`rlrp_ref.models.inspect` passes the registered
    builders (:func:`rlrp_ref.models.fit_candidates`), as the ``rlrp-ref
    inspect`` command does.
    """
    origin = os.fspath(path)
    with _reading(path) as h5file:
        layout = _layout_of(h5file, origin)
        stored = _stored_items(h5file, layout, origin)
        layers = [(key, [(name, tuple(src.shape), str(np.dtype(src.dtype))) for name, src in items])
                  for key, items in stored.items()]
        info = {
            "path": origin,
            "layout": layout,
            "layers": layers,
            "num_arrays": sum(len(items) for _, items in layers),
            "num_params": int(sum(int(np.prod(shape)) for _, items in layers for _, shape, _ in items)),
            "fits": _fits(h5file, layout, stored, origin, candidates) if fits and candidates is not None else None,
        }
    return info


def format_inspection(info: dict, max_layers: int | None = None) -> str:
    """A human-readable summary of :func:`inspect`'s result."""
    lines = [f"file: {info['path']}", f"layout: {info['layout']}",
             f"layers with weights: {len(info['layers'])}, arrays: {info['num_arrays']}, parameters: {info['num_params']:,}"]
    shown = info["layers"] if max_layers is None else info["layers"][:max_layers]
    for key, items in shown:
        lines.append(f"  {key}: " + ", ".join(f"{name} {shape} {dtype}" for name, shape, dtype in items))
    if len(shown) < len(info["layers"]):
        lines.append(f"  ... {len(info['layers']) - len(shown)} more layers (--all to list them)")
    if info["fits"]:  # None: nothing was matched
        for fit in info["fits"]:
            top = f"include_top=True, num_classes={fit['num_classes']}" if fit["include_top"] else "include_top=False"
            lines.append(f"fits: rlrp_ref.models.build({fit['builder']!r}, variant={fit['variant']!r}, {top}, "
                         f"input_shape={fit['input_shape']})")
    elif info["fits"] is not None:
        lines.append("fits: no registered builder (parameter names or shapes differ from every builder's)")
    return "\n".join(lines)
