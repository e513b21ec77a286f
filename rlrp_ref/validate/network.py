"""A network as an HDF5 group: the schema of the conformance vectors, writer and loader.

The schema is meant to be read by other implementations with nothing but an
HDF5 library (``docs/validation.md`` is its reference). A network is one layer
group; container layers hold their children as sub-groups.

Every layer group has the attributes ``kind`` (the rlrp-ref / Keras kind in
snake case) and ``name``. Per kind:

==========================  ======================================================
kind                        contents
==========================  ======================================================
``sequential``              children ``000``, ``001``, ... run in that order
``residual``                sub-groups ``branch`` and (optional) ``skip``; attribute
                            ``activation`` = ``"relu"`` or ``"linear"``; output
                            ``activation(skip(u) + branch(u))``, identity skip when
                            ``skip`` is absent
``dense``                   datasets ``kernel`` ``(in, out)``, optional ``bias``
``conv2d``                  datasets ``kernel`` ``(kh, kw, cin, cout)``, optional
                            ``bias``; attributes ``strides`` ``(sh, sw)``,
                            ``padding`` (``"valid"``, ``"same"`` or
                            ``"explicit"``), ``pads`` ``((top, bottom), (left,
                            right))`` when explicit
``max_pooling2d``,          attributes ``pool_size``, ``strides``, ``padding``,
``average_pooling2d``       ``pads`` as for ``conv2d``
``zero_padding2d``          attribute ``pads`` ``((top, bottom), (left, right))``
``batch_normalization``     datasets ``gamma``, ``beta``, ``moving_mean``,
                            ``moving_variance``; attribute ``epsilon``
``global_average_pooling2d``, ``flatten``, ``relu``, ``sigmoid``, ``softplus``,
``identity``                no parameters
==========================  ======================================================

Window layers additionally carry ``resolved_pads``: the explicit padding for
the spatial size the layer sees in the vectors' inputs, so a reader need not
re-derive the TensorFlow ``"same"`` rule. Activations are NHWC, flatten is in C
order over ``(H, W, C)``.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .. import layers as L
from ..model import Residual, Sequential

#: Version of the network schema (changes only with an incompatible change).
NETWORK_SCHEMA_VERSION = 1

_PARAMLESS = {
    "global_average_pooling2d": L.GlobalAvgPool2D,
    "flatten": L.Flatten,
    "relu": L.ReLU,
    "sigmoid": L.Sigmoid,
    "softplus": L.Softplus,
    "identity": L.Identity,
}
_POOLS = {"max_pooling2d": L.MaxPool2D, "average_pooling2d": L.AvgPool2D}
KINDS = ("sequential", "residual", "dense", "conv2d", "zero_padding2d", "batch_normalization", *_POOLS, *_PARAMLESS)


def _dataset(group, name, value):
    group.create_dataset(name, data=np.asarray(value, dtype=np.float64), track_times=False)


def _padding_attrs(group, padding) -> None:
    if isinstance(padding, str):
        group.attrs["padding"] = padding.lower()
    else:
        group.attrs["padding"] = "explicit"
        group.attrs["pads"] = np.asarray(kernels.resolve_padding(padding, (1, 1), (1, 1), (1, 1)), dtype=np.int64)


def write_layer(group, layer, input_shape=None) -> tuple | None:
    """Write ``layer`` (and its children) into the empty HDF5 ``group``.

    ``input_shape`` (without batch axis) lets window layers record their
    ``resolved_pads``; the return value is the layer's output shape (or None
    when ``input_shape`` was not given).
    """
    group.attrs["kind"] = layer.kind
    group.attrs["name"] = layer.name
    out_shape = None
    if input_shape is not None:
        probe = np.zeros((1, *input_shape))
        out_shape = tuple(layer.forward(probe).shape[1:])
    if isinstance(layer, Sequential):
        shape = input_shape
        for index, child in enumerate(layer.layers):
            shape = write_layer(group.create_group(f"{index:03d}"), child, shape)
        return out_shape
    if isinstance(layer, Residual):
        group.attrs["activation"] = layer.activation or "linear"
        write_layer(group.create_group("branch"), layer.branch, input_shape)
        if layer.skip is not None:
            write_layer(group.create_group("skip"), layer.skip, input_shape)
        return out_shape
    kind = layer.kind
    if kind not in KINDS:
        raise ValueError(f"{layer.desc}: no HDF5 schema for kind {kind!r}; known kinds {list(KINDS)}")
    for pname, value in layer.params.items():
        _dataset(group, pname, value)
    if isinstance(layer, L.Conv2D):
        group.attrs["strides"] = np.asarray(layer.strides, dtype=np.int64)
        _padding_attrs(group, layer.padding)
    elif isinstance(layer, L._Pool2D):
        group.attrs["pool_size"] = np.asarray(layer.pool_size, dtype=np.int64)
        group.attrs["strides"] = np.asarray(layer.strides, dtype=np.int64)
        _padding_attrs(group, layer.padding)
    elif isinstance(layer, L.ZeroPad2D):
        group.attrs["pads"] = np.asarray(layer.padding, dtype=np.int64)
    elif isinstance(layer, L.BatchNorm):
        group.attrs["epsilon"] = float(layer.epsilon)
    if input_shape is not None and isinstance(layer, (L.Conv2D, L._Pool2D)):
        group.attrs["resolved_pads"] = np.asarray(layer.pads(input_shape[:2]), dtype=np.int64)
    return out_shape


def _attr_str(group, key) -> str:
    value = group.attrs[key]
    return value.decode() if isinstance(value, bytes) else str(value)


def _pair(group, key, where) -> tuple[int, int]:
    value = np.asarray(group.attrs[key]).astype(np.int64).ravel()
    if value.shape != (2,):
        raise ValueError(f"{where}: attribute {key} expected 2 integers, found {value.tolist()}")
    return int(value[0]), int(value[1])


def _padding(group, where):
    mode = _attr_str(group, "padding")
    if mode in ("valid", "same"):
        return mode
    if mode == "explicit":
        pads = np.asarray(group.attrs["pads"]).astype(np.int64)
        if pads.shape != (2, 2):
            raise ValueError(f"{where}: attribute pads expected shape (2, 2), found {pads.shape}")
        return (int(pads[0, 0]), int(pads[0, 1])), (int(pads[1, 0]), int(pads[1, 1]))
    raise ValueError(f"{where}: attribute padding expected 'valid', 'same' or 'explicit', found {mode!r}")


def read_layer(group):
    """Rebuild the rlrp-ref layer (or container) stored in ``group``."""
    where = f"network group {group.name}"
    try:
        kind, name = _attr_str(group, "kind"), _attr_str(group, "name")
    except KeyError:
        raise ValueError(f"{where}: expected attributes 'kind' and 'name'") from None
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown layer kind {kind!r}; known kinds {list(KINDS)}")

    def param(key, required=True):
        if key not in group:
            if required:
                raise ValueError(f"{where} ({kind}): expected dataset {key!r}, found {sorted(group.keys())}")
            return None
        return np.asarray(group[key][()], dtype=np.float64)

    try:
        if kind == "sequential":
            children = sorted(k for k in group.keys())
            if children != [f"{i:03d}" for i in range(len(children))]:
                raise ValueError(f"{where}: expected children named 000, 001, ..., found {children}")
            return Sequential([read_layer(group[k]) for k in children], name=name)
        if kind == "residual":
            if "branch" not in group:
                raise ValueError(f"{where}: residual expected a 'branch' sub-group")
            skip = read_layer(group["skip"]) if "skip" in group else None
            activation = _attr_str(group, "activation")
            return Residual(read_layer(group["branch"]), skip=skip, activation=None if activation == "linear" else activation, name=name)
        if kind == "dense":
            return L.Dense(param("kernel"), param("bias", required=False), name=name)
        if kind == "conv2d":
            return L.Conv2D(param("kernel"), param("bias", required=False), strides=_pair(group, "strides", where), padding=_padding(group, where), name=name)
        if kind in _POOLS:
            return _POOLS[kind](_pair(group, "pool_size", where), strides=_pair(group, "strides", where), padding=_padding(group, where), name=name)
        if kind == "zero_padding2d":
            pads = np.asarray(group.attrs["pads"]).astype(np.int64)
            return L.ZeroPad2D(((int(pads[0, 0]), int(pads[0, 1])), (int(pads[1, 0]), int(pads[1, 1]))), name=name)
        if kind == "batch_normalization":
            return L.BatchNorm(param("gamma"), param("beta"), param("moving_mean"), param("moving_variance"), epsilon=float(group.attrs["epsilon"]), name=name)
        return _PARAMLESS[kind](name=name)
    except KeyError as exc:
        raise ValueError(f"{where} ({kind}): missing attribute {exc.args[0]!r}") from None


def write_network(group, model, input_shape) -> None:
    """Write ``model`` as the network of a vectors file into ``group`` (see the module docstring)."""
    group.attrs["schema_version"] = NETWORK_SCHEMA_VERSION
    group.attrs["input_shape"] = np.asarray(input_shape, dtype=np.int64)
    write_layer(group.create_group("model"), model, tuple(input_shape))


def read_network(group):
    """The rlrp-ref model stored by :func:`write_network`; its input shape is ``group.attrs['input_shape']``."""
    version = int(group.attrs.get("schema_version", -1))
    if version != NETWORK_SCHEMA_VERSION:
        raise ValueError(f"network group {group.name}: expected schema_version {NETWORK_SCHEMA_VERSION}, found {version}")
    if "model" not in group:
        raise ValueError(f"network group {group.name}: expected a 'model' sub-group")
    return read_layer(group["model"])
