"""torchvision state dicts: key mapping and layout conversion to rlrp_ref's Keras layout.

A state-dict key ``<module path>.<tensor>`` names the rlrp_ref layer called
``<module path>`` (the torchvision builders use the module paths as layer
names). Conversions, all done here and nowhere else:

- ``Conv2d.weight`` ``(cout, cin, kh, kw)`` -> ``kernel`` ``(kh, kw, cin, cout)``;
  ``bias`` -> ``bias``;
- ``Linear.weight`` ``(out, in)`` -> ``kernel`` ``(in, out)``; for a Linear
  right after a flatten of a ``(C, H, W)`` map, the input axis is also
  permuted from torch's ``(C, H, W)`` flatten order to rlrp_ref's NHWC
  ``(H, W, C)`` order: ``kernel[(h*W + w)*C + c, o] = weight[o, c*H*W + h*W + w]``
  (only ``C`` is needed: it is the channel count of the last convolution or
  BatchNorm before the flatten);
- ``BatchNorm2d`` ``weight, bias, running_mean, running_var`` -> ``gamma,
  beta, moving_mean, moving_variance``; ``num_batches_tracked`` is skipped.

The state dict in HDF5 (``layout "torch_state_dict"``) stores the tensors
exactly as torch has them, one dataset per key; the conversion happens at load
time because the flatten permutation needs the model.
"""

from __future__ import annotations

import numpy as np

from ._assign import IDENTITY, Transform, array_source, assign, dataset_source
from .errors import WeightsError

SKIPPED_SUFFIXES = ("num_batches_tracked",)
PARAM_NAMES = {
    "conv2d": {"weight": "kernel", "bias": "bias"},
    "dense": {"weight": "kernel", "bias": "bias"},
    "batch_normalization": {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"},
}
#: Every tensor name a state dict of these layers can hold.
TENSOR_SUFFIXES = ("weight", "bias", "running_mean", "running_var") + SKIPPED_SUFFIXES


#: Rows of the output-channel axis copied per step in :func:`_first_axis_last`.
TILE_ROWS = 128


def _first_axis_last(arr: np.ndarray, inner: tuple[int, ...]) -> np.ndarray:
    """``arr.transpose(inner + (0,))`` as a new C-contiguous array.

    Every torch-to-Keras conversion moves the output-channel axis (torch's
    first) to the end. One big strided copy of a 400 MB classifier weight
    thrashes the cache (about 3x slower), so the copy goes in tiles of
    ``TILE_ROWS`` output channels, each tile one vectorized transpose.
    """
    out = np.empty(tuple(arr.shape[a] for a in inner) + (arr.shape[0],), dtype=arr.dtype)
    axes = inner + (0,)
    for start in range(0, arr.shape[0], TILE_ROWS):
        out[..., start:start + TILE_ROWS] = arr[start:start + TILE_ROWS].transpose(axes)
    return out


def _channels_last(name: str, ndim: int) -> Transform:
    """Move axis 0 (torch's output channels) last and reverse the others: conv ``(o, i, h, w) -> (h, w, i, o)``, Linear ``(o, i) -> (i, o)``."""
    inner = tuple(range(ndim - 1, 0, -1)) if ndim == 2 else (2, 3, 1)

    def out_shape(shape):
        return tuple(shape[a] for a in inner) + (shape[0],) if len(shape) == ndim else tuple(shape)

    def apply(arr):
        return _first_axis_last(arr, inner) if arr.ndim == ndim else arr

    return Transform(name, out_shape, apply)


CONV_WEIGHT = _channels_last("torch (cout, cin, kh, kw) -> (kh, kw, cin, cout)", 4)
LINEAR_WEIGHT = _channels_last("torch (out, in) -> (in, out)", 2)


def flatten_linear_weight(channels: int) -> Transform:
    """Linear ``(out, C*S)`` in torch's (C, H, W) flatten order -> kernel ``(S*C, out)`` in (H, W, C) order."""

    def out_shape(shape):
        return (shape[1], shape[0]) if len(shape) == 2 else tuple(shape)

    def apply(arr):
        if arr.ndim != 2 or arr.shape[1] % channels:
            return arr.T  # the shape check in match() has already rejected this case
        out_features, in_features = arr.shape
        by_channel = arr.reshape(out_features, channels, in_features // channels)  # (out, C, S)
        return _first_axis_last(by_channel, (2, 1)).reshape(in_features, out_features)  # (S, C, out)

    return Transform(f"torch (out, C*H*W) -> (H*W*C, out) with C={channels}", out_shape, apply)


def flatten_channels(model) -> dict[str, int]:
    """``{dense name: C}`` for each Dense right after a Flatten, C the channels entering the Flatten."""
    from rlrp_ref.layers import BatchNorm, Conv2D, Dense, Flatten

    out, channels, previous = {}, None, None
    for layer in model.iter_layers():
        if isinstance(layer, Dense) and isinstance(previous, Flatten) and channels is not None:
            out[layer.name] = channels
        if isinstance(layer, Conv2D):
            channels = layer.filters
        elif isinstance(layer, BatchNorm):
            channels = layer.channels
        elif isinstance(layer, Dense):
            channels = None
        previous = layer
    return out


def split_key(key: str) -> tuple[str, str]:
    """``"layer1.0.conv1.weight" -> ("layer1.0.conv1", "weight")``: module path and tensor name."""
    module, _, tensor = key.rpartition(".")
    return module, tensor


def entries_from_sources(model, sources: dict, origin: str) -> dict:
    """``{key: Source}`` in torch layout -> ``{layer: [(param, Source with conversion)]}`` for :func:`_assign.match`."""
    layers = {layer.name: layer for layer in model.iter_layers()}
    flat = flatten_channels(model)
    entries: dict[str, list] = {}
    for key, src in sources.items():
        module, tensor = split_key(key)
        if tensor in SKIPPED_SUFFIXES:
            continue
        layer = layers.get(module)
        if layer is None:
            entries.setdefault(module, []).append((tensor, src))  # reported as an extra layer by match()
            continue
        names = PARAM_NAMES.get(layer.kind, {})
        if tensor not in names:
            raise WeightsError(
                f"{origin}: layer '{module}' ({layer.kind}): expected tensors {sorted(names)}, found {key!r} {src.shape}"
            )
        pname = names[tensor]
        transform = IDENTITY
        if pname == "kernel" and layer.kind == "conv2d":
            transform = CONV_WEIGHT
        elif pname == "kernel" and layer.kind == "dense":
            transform = flatten_linear_weight(flat[module]) if module in flat else LINEAR_WEIGHT
        src.transform = transform
        entries.setdefault(module, []).append((pname, src))
    return entries


def assign_state_dict(model, state_dict, origin: str = "state dict") -> None:
    """Fill a torchvision-variant model from a torch state dict (``{key: array or CPU tensor}``).

    Tensors are converted as the module docstring says; ``num_batches_tracked``
    is skipped. All or nothing: any missing, extra, misshapen, non-float or
    non-finite tensor raises :class:`WeightsError` and the model is untouched.
    """
    if not hasattr(state_dict, "items"):
        raise WeightsError(f"{origin}: expected a mapping of state-dict keys to arrays, found {type(state_dict).__name__}")
    sources = {}
    for key, value in state_dict.items():
        if split_key(str(key))[1] in SKIPPED_SUFFIXES:
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        sources[str(key)] = array_source(str(key), value)
    assign(model, entries_from_sources(model, sources, origin), origin)


def h5_sources(h5file, origin: str) -> dict:
    """``{state-dict key: Source}`` for every dataset of an HDF5 state dict (group paths joined by '.').

    The walk follows hard links only, each object linked once (see
    :mod:`weights_import._h5`), at most ``MAX_DEPTH`` groups deep.
    """
    from . import _h5

    sources = {}

    def walk(group, path, depth):
        if depth > _h5.MAX_DEPTH:
            raise WeightsError(f"{origin}: group {path!r}: expected at most {_h5.MAX_DEPTH} nested groups, found deeper nesting")
        for name in _h5.members(group, origin, path or "/"):
            obj = _h5.child(group, name, origin, path)
            key = f"{path}/{name}" if path else name
            if hasattr(obj, "keys"):
                walk(obj, key, depth + 1)
            else:
                sources[key.replace("/", ".")] = dataset_source(obj, key.replace("/", "."), origin)
            if len(sources) > _h5.MAX_NAMES:
                raise WeightsError(f"{origin}: expected at most {_h5.MAX_NAMES} state-dict tensors, found more")

    walk(h5file, "", 0)
    return sources
