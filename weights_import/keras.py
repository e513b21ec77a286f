"""Keras HDF5 layouts: application weight files, legacy full-model ``.h5``, Keras 3 ``.weights.h5``.

Application weight files (``model.save_weights`` in Keras 2 and the files
``keras.applications`` downloads, ``notop`` ones included) have root
attributes ``layer_names`` and, per layer group, ``weight_names``
(``block1_conv1/kernel:0`` in Keras 2, ``block1_conv1/kernel`` in Keras 3);
each weight is the dataset at that relative path. A legacy full-model
``model.save("f.h5")`` keeps the same structure under ``model_weights/``.

Keras 3 ``model.save_weights("f.weights.h5")`` stores ``layers/<auto-name>/vars/<i>``
where the auto-names come from the layer class (``conv2d``, ``conv2d_1``, ...,
``conv2d_10``) numbered in the order of ``model.layers``, and ``vars/<i>`` in
the layer's weight order. Recent Keras 3 versions also write the layer's own
name as the ``name`` attribute of ``vars``: when every group has one and they
are the model's layers with weights (or a subset or superset of them, so that a
missing or extra layer is reported by name), they are used. Otherwise the groups of each class
are taken in numeric order (``conv2d_2`` before ``conv2d_10``, never
alphabetically) and paired with the model's layers of that kind in Keras's
``model.layers`` order (:func:`keras_functional_order`).
"""

from __future__ import annotations

import re

from . import _h5
from ._assign import dataset_source, weighted_layers
from .errors import WeightsError


def _hint(weight_name: str) -> str:
    base = weight_name.rsplit("/", 1)[-1]
    return base[:-2] if base.endswith(":0") else base


def h5_entries(group, origin: str, path: str = "") -> dict:
    """``{layer name: [(param hint, Source)]}`` for a group with ``layer_names`` (application file or ``model_weights``).

    ``path`` is the group's path in the file (``""`` for the root), for messages.
    """
    entries = {}
    for name in _h5.attr_strings(group, "layer_names", origin, path or "/") or []:
        layer_group = _h5.resolve(group, name, origin, path, "group")
        if layer_group is None:
            raise WeightsError(f"{origin}: layer '{name}': expected its group (listed in layer_names), found none")
        layer_path = f"{path}/{name}"
        items = []
        for weight_name in _h5.attr_strings(layer_group, "weight_names", origin, layer_path) or []:
            dataset = _h5.resolve(layer_group, weight_name, origin, layer_path, "dataset")
            if dataset is None:
                raise WeightsError(f"{origin}: layer '{name}': expected dataset '{weight_name}' (listed in weight_names), found none")
            items.append((_hint(weight_name), dataset_source(dataset, f"{layer_path}/{weight_name}", origin)))
        if items:
            entries[name] = items
    return entries


_AUTO_NAME = re.compile(r"^(.*?)(?:_(\d+))?$")


def split_auto_name(name: str) -> tuple[str, int]:
    """``"conv2d_10" -> ("conv2d", 10)``, ``"conv2d" -> ("conv2d", 0)``."""
    kind, number = _AUTO_NAME.match(name).groups()
    return kind, int(number) if number else 0


def keras3_groups(h5file, origin: str) -> list[tuple[str, str | None, list]]:
    """``[(auto-name, stored layer name or None, [Source, ...])]`` for each ``layers/<auto-name>`` with weights.

    Sorted by kind, then by the auto-name's number (``conv2d_2`` before ``conv2d_10``).
    """
    layers = _h5.child(h5file, "layers", origin, "", "group")
    out = []
    for auto_name in sorted(_h5.members(layers, origin, "layers"), key=split_auto_name):
        where = f"layers/{auto_name}"
        group = _h5.child(layers, auto_name, origin, "layers", "group")
        vars_group = _h5.child(group, "vars", origin, where, "group")
        if vars_group is None:
            continue
        names = _h5.members(vars_group, origin, f"{where}/vars")
        if not names:
            continue
        try:
            indices = sorted(names, key=int)
        except ValueError:
            raise WeightsError(f"{origin}: layer group '{where}': expected vars named 0, 1, ..., found {sorted(names)[:6]}") from None
        sources = [dataset_source(_h5.child(vars_group, i, origin, f"{where}/vars", "dataset"), f"{where}/vars/{i}", origin)
                   for i in indices]
        out.append((auto_name, _h5.attr_string(vars_group, "name", origin, f"{where}/vars"), sources))
    return out


def keras_functional_order(model) -> list:
    """The model's layers with weights in the order of the equivalent Keras functional model's ``model.layers``.

    Keras orders a functional model's layers by decreasing depth (the longest
    path to the output), ties broken by a depth-first traversal from the output
    that visits an ``Add``'s inputs in order, the shortcut first. Each
    :class:`~rlrp_ref.model.Residual` stands for Keras's ``Add`` followed by its
    ``Activation``. For a chain (VGG) this is the execution order; in a ResNet
    block the shortcut conv sits between the branch's ``_2_relu`` and ``_3_conv``.
    """
    from rlrp_ref.model import Residual, Sequential

    depth: dict[int, int] = {}

    def place(layer, consumer_depth: int) -> int:
        """Give ``layer``'s nodes their depths; return the depth of its first node."""
        if isinstance(layer, Sequential):
            d = consumer_depth
            for child in reversed(layer.layers):
                d = place(child, d)
            return d
        if isinstance(layer, Residual):
            add_depth = consumer_depth + (2 if layer.activation else 1)
            skip_in = place(layer.skip, add_depth) if layer.skip is not None else add_depth
            return max(skip_in, place(layer.branch, add_depth))
        depth[id(layer)] = consumer_depth + 1
        return consumer_depth + 1

    place(model, -1)
    execution = list(model.iter_layers())
    position = {id(layer): i for i, layer in enumerate(execution)}
    ordered = sorted(execution, key=lambda layer: (-depth[id(layer)], position[id(layer)]))
    return [layer for layer in ordered if layer.params]


def keras3_entries(h5file, model, origin: str) -> dict:
    """``{layer name: [(None, Source)]}`` for a Keras 3 ``.weights.h5`` file (see the module docstring)."""
    groups = keras3_groups(h5file, origin)
    model_names = {layer.name for layer in weighted_layers(model)}
    stored = [name for _, name, _ in groups]
    if all(stored) and len(set(stored)) == len(stored) and (set(stored) <= model_names or model_names <= set(stored)):
        # the file speaks the model's names: match by name, so a missing or extra layer is reported by name
        return {name: [(None, s) for s in sources] for _, name, sources in groups}
    by_kind: dict[str, list] = {}
    for auto_name, _, sources in groups:
        kind, number = split_auto_name(auto_name)
        by_kind.setdefault(kind, []).append((number, auto_name, sources))
    model_by_kind: dict[str, list] = {}
    for layer in keras_functional_order(model):
        model_by_kind.setdefault(layer.kind, []).append(layer)
    entries = {}
    for kind in sorted(set(by_kind) | set(model_by_kind)):
        stored_groups = sorted(by_kind.get(kind, []))
        layers = model_by_kind.get(kind, [])
        if len(stored_groups) != len(layers):
            found = [g[1] for g in stored_groups]
            raise WeightsError(
                f"{origin}: layers of kind '{kind}': expected {len(layers)} (as in model '{model.name}'), found "
                f"{len(stored_groups)} groups layers/{kind}* in the file ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''})"
            )
        for (_, _, sources), layer in zip(stored_groups, layers):
            entries[layer.name] = [(None, s) for s in sources]
    return entries
