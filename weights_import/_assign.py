"""Match stored arrays to a model's layers, check everything, then assign all at once.

Readers describe what a file holds as ``{layer key: [(hint, Source), ...]}``
without reading any array: a :class:`Source` knows its stored shape and dtype
and how to read itself. :func:`match` pairs each source with a layer parameter
and checks names and shapes; :func:`assign` then reads the arrays one at a time
straight into the dtype of the parameter they replace, checks they are finite,
validates each layer with its new parameters, and only then swaps them in. Any
problem raises :class:`WeightsError` before the model changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import WeightsError


@dataclass(frozen=True)
class Transform:
    """A layout change applied after reading (e.g. torch ``(cout, cin, kh, kw)`` to ``(kh, kw, cin, cout)``)."""

    name: str
    out_shape: Callable[[tuple], tuple]
    apply: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda shape: tuple(shape), lambda arr: arr)


@dataclass
class Source:
    """One stored array: where it is (``key``), its stored shape and dtype, how to read it."""

    key: str
    shape: tuple
    dtype: np.dtype
    read: Callable[[np.dtype], np.ndarray]
    transform: Transform = field(default=IDENTITY)
    #: ``((start, end, what), ...)``: the file bytes of its values and header (none for in-memory arrays).
    extents: tuple = ()

    @property
    def out_shape(self) -> tuple:
        return tuple(self.transform.out_shape(tuple(self.shape)))


def dataset_source(dataset, key: str, origin: str, transform: Transform = IDENTITY) -> Source:
    """A :class:`Source` reading an h5py dataset directly into the requested dtype.

    The dataset is vetted now (:func:`weights_import._h5.dataset_info`: no
    virtual, external, null-dataspace or non-numeric dataset) and its storage
    when it is read (:func:`weights_import._h5.read_dataset`), so nothing but
    an array of the declared shape, already checked against the model, is allocated.
    """
    from . import _h5

    shape, dtype = _h5.dataset_info(dataset, origin, key)
    return Source(key, shape, dtype, lambda dt: _h5.read_dataset(dataset, origin, key, dt), transform,
                  _h5.extents(dataset, origin, key))


def array_source(key: str, value, transform: Transform = IDENTITY) -> Source:
    """A :class:`Source` over an in-memory array (or anything ``numpy.asarray`` accepts).

    Reading copies, so the model never shares memory with the caller's arrays
    (a torch state dict's tensors keep changing while that model trains).
    """
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    return Source(key, tuple(arr.shape), arr.dtype, lambda dtype: np.array(arr, dtype=dtype, copy=True), transform)


def _fmt_shapes(pairs) -> str:
    return "[" + ", ".join(f"{k} {tuple(s)}" for k, s in pairs) + "]"


def _list(names, limit: int = 6) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def weighted_layers(model) -> list:
    """The model's leaf layers that have parameters, in execution order."""
    return [layer for layer in model.iter_layers() if layer.params]


def match(model, entries: dict, origin: str) -> list:
    """Pair every stored array with a parameter of ``model``; check names and shapes; read nothing.

    ``entries``: ``{layer name: [(hint, Source), ...]}`` where ``hint`` is the
    parameter name (``kernel``, ``gamma``, ...) when the file says it, else None
    (then the sources are taken in the layer's parameter order). Returns
    ``[(layer, {param: Source}), ...]`` in execution order.
    """
    layers = weighted_layers(model)
    by_name = {layer.name: layer for layer in layers}
    extra = [name for name, items in entries.items() if items and name not in by_name]
    if extra:
        name = extra[0]
        found = _fmt_shapes((src.key, src.shape) for _, src in entries[name])
        raise WeightsError(
            f"{origin}: layer '{name}': expected a layer with weights in model '{model.name}', found weights "
            f"{found} for a layer the model does not have (extra layers in the file: {_list(extra)})"
        )
    missing = [layer.name for layer in layers if not entries.get(layer.name)]
    if missing:
        layer = by_name[missing[0]]
        raise WeightsError(
            f"{origin}: layer '{layer.name}': expected weights {_fmt_shapes(layer.param_shapes().items())}, found "
            f"nothing for it in the file (missing layers: {_list(missing)})"
        )
    plan = []
    for layer in layers:
        expected = layer.param_shapes()
        items = entries[layer.name]
        hints = [hint for hint, _ in items]
        if all(h in expected for h in hints) and len(set(hints)) == len(hints):
            assigned = {h: src for h, src in items}
        else:
            assigned = dict(zip(expected, (src for _, src in items)))
            if len(items) > len(expected):
                assigned["(extra)"] = items[len(expected)][1]
        if set(assigned) != set(expected):
            found = _fmt_shapes((h if h in expected else src.key, src.out_shape) for h, src in items)
            raise WeightsError(
                f"{origin}: layer '{layer.name}' ({layer.kind}): expected parameters "
                f"{_fmt_shapes(expected.items())}, found {found}"
            )
        for pname, src in assigned.items():
            if np.dtype(src.dtype).kind != "f":
                raise WeightsError(
                    f"{origin}: layer '{layer.name}' {pname} ({src.key}): expected a float dtype, found {np.dtype(src.dtype)}"
                )
            if src.out_shape != tuple(expected[pname]):
                extra_note = "" if src.transform is IDENTITY else f" after {src.transform.name} of stored shape {src.shape}"
                raise WeightsError(
                    f"{origin}: layer '{layer.name}' {pname} ({src.key}): expected shape {tuple(expected[pname])}, "
                    f"found {src.out_shape}{extra_note}"
                )
        plan.append((layer, {p: assigned[p] for p in expected}))
    return plan


def _read(origin, layer, pname, src, dtype) -> np.ndarray:
    try:
        arr = src.read(dtype)
    except (OSError, RuntimeError, KeyError) as err:
        msg = " ".join(str(err).split())
        raise WeightsError(
            f"{origin}: layer '{layer.name}' {pname} ({src.key}): expected a readable array of shape {src.shape}, "
            f"found a read error (truncated or corrupt file?): {msg}"
        ) from None
    arr = src.transform.apply(arr)
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise WeightsError(
            f"{origin}: layer '{layer.name}' {pname} ({src.key}): expected finite values, found {bad} NaN or inf"
        )
    return arr


def assign(model, entries: dict, origin: str) -> None:
    """Fill ``model`` from ``entries`` (see :func:`match`): all parameters or none."""
    from ._h5 import check_disjoint

    plan = match(model, entries, origin)
    check_disjoint([span for _, sources in plan for src in sources.values() for span in src.extents], origin)
    staged = []
    for layer, sources in plan:
        current = layer.params
        arrays = {p: _read(origin, layer, p, src, current[p].dtype) for p, src in sources.items()}
        try:
            layer.with_params(**arrays)  # the layer's own consistency checks, on a copy
        except ValueError as err:
            raise WeightsError(f"{origin}: {' '.join(str(err).split())}") from None
        staged.append((layer, arrays))
    for layer, arrays in staged:
        for pname, arr in arrays.items():
            setattr(layer, pname, arr)
