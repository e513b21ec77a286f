"""Containers: :class:`Sequential` and :class:`Residual`, themselves layers so they nest.

``model.forward(x)`` returns the output; ``model.trace(x)`` runs the same single
forward pass and records every layer's output, keyed by layer name in execution
order (a container's entry comes after its children's). Relevance passes read the
trace: the input of a layer is the output of the layer before it.
"""

from __future__ import annotations

import copy

import numpy as np

from . import kernels
from .layers import BatchNorm, Layer, ReLU


class Trace(dict):
    """Every activation of one forward pass: ``{layer name: output}`` in execution order.

    ``trace.input`` is the model input and ``trace.output`` the model output.
    """

    def __init__(self, x):
        super().__init__()
        self.input = x

    @property
    def output(self):
        """The model output: the last entry recorded."""
        return self[next(reversed(self))]


class Container(Layer):
    """Common machinery of layers made of layers."""

    def children(self) -> list[Layer]:  # pragma: no cover - abstract
        """The direct sub-layers, in the order :meth:`iter_all` visits them."""
        raise NotImplementedError

    @property
    def params(self):
        return {}

    def iter_layers(self):
        for child in self.children():
            yield from child.iter_layers()

    def iter_all(self):
        for child in self.children():
            yield from child.iter_all()
        yield self

    def get_layer(self, name: str) -> Layer:
        """The layer (leaf or container) called ``name``."""
        for layer in self.iter_all():
            if layer.name == name:
                return layer
        raise KeyError(f"model '{self.name}': no layer named {name!r}")

    @property
    def num_params(self) -> int:
        """Number of scalar parameters of every leaf layer."""
        return int(sum(layer.num_params for layer in self.iter_layers()))

    @property
    def dtype(self):
        """The dtype of the parameters (None for a model without parameters)."""
        for layer in self.iter_layers():
            for value in layer.params.values():
                return value.dtype
        return None

    def _check_unique_names(self) -> None:
        seen = set()
        for layer in self.iter_all():
            if layer.name in seen:
                raise ValueError(f"model '{self.name}': expected unique layer names, found {layer.name!r} twice")
            seen.add(layer.name)

    def astype(self, dtype) -> "Container":
        """A deep copy with every parameter cast to ``dtype`` (``np.float32`` is the fast mode)."""
        new = self.copy()
        for layer in new.iter_layers():
            for k, v in layer.params.items():
                setattr(layer, k, v.astype(dtype))
        return new

    def copy(self) -> "Container":
        return copy.deepcopy(self)

    def forward(self, x):
        """The model output for the batch ``x`` (no activation is kept; see :meth:`trace`)."""
        with kernels.workspace():
            return self._run(x, None)

    def trace(self, x) -> Trace:
        """Run one forward pass and return every activation (see :class:`Trace`)."""
        record = Trace(x)
        with kernels.workspace():
            self._trace_into(x, record)
        return record

    def _trace_into(self, x, record):
        return self._run(x, record)

    def vjp(self, x, grad, trace: Trace | None = None):
        """Gradient with respect to ``x``; pass ``trace`` to reuse a forward pass already run."""
        with kernels.workspace():
            record = trace if trace is not None else self.trace(x)
            return self._vjp_from(record, x, np.asarray(grad))


class Sequential(Container):
    """``layers[-1](...layers[1](layers[0](x)))``."""

    kind = "sequential"

    def __init__(self, layers, name=None):
        super().__init__(name)
        self.layers = list(layers)
        if not self.layers:
            raise ValueError(f"model '{self.name}': expected at least one layer, found none")
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise ValueError(f"model '{self.name}': expected Layer instances, found {type(layer).__name__}")
        self._check_unique_names()

    def children(self):
        return self.layers

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    def __repr__(self):
        inner = "\n".join("  " + line for layer in self.layers for line in repr(layer).splitlines())
        return f"Sequential(name={self.name!r}, [\n{inner}\n])"

    def _run(self, x, record):
        if record is None:
            return self._forward(x)
        for layer in self.layers:
            x = layer._trace_into(x, record)
        record[self.name] = x
        return x

    def _forward(self, x):
        """``forward`` without a trace: a ReLU or BatchNorm overwrites an output this pass made and nobody else holds.

        A BatchNorm followed by a ReLU then runs as one pass (nothing reads the
        BatchNorm's output but the ReLU).
        """
        first = x
        layers = self.layers
        index = 0
        while index < len(layers):
            layer = layers[index]
            owned = x is not first and not np.may_share_memory(x, first)
            if (owned and isinstance(layer, BatchNorm) and index + 1 < len(layers)
                    and type(layers[index + 1]) is ReLU):
                x = layer.forward_in_place(x, relu=True)
                index += 2
                continue
            x = layer.forward_in_place(x) if owned else layer.forward(x)
            index += 1
        return x

    def inputs_from(self, record: Trace, x):
        """The input of each child, read from a trace (``x`` is this container's input)."""
        return [x] + [record[layer.name] for layer in self.layers[:-1]]

    def _vjp_from(self, record, x, grad):
        for layer, layer_input in zip(reversed(self.layers), reversed(self.inputs_from(record, x))):
            grad = layer._vjp_from(record, layer_input, grad)
        return grad


class Residual(Container):
    """Residual block: ``activation(branch(u) + skip(u))``.

    ``skip=None`` is the identity; ``activation`` is ``"relu"`` or ``None``
    (linear). ``branch`` and ``skip`` are layers, usually :class:`Sequential`.
    The trace records the skip output (when there is a skip layer), the
    branch output, and the block output; ``sum_of(record, u)`` gives
    ``s + F`` before the activation.
    """

    kind = "residual"

    def __init__(self, branch, skip=None, activation="relu", name=None):
        super().__init__(name)
        if not isinstance(branch, Layer) or (skip is not None and not isinstance(skip, Layer)):
            raise ValueError(f"block '{self.name}': expected Layer instances for branch and skip")
        if activation not in ("relu", None, "linear"):
            raise ValueError(f"block '{self.name}': activation expected 'relu' or None, found {activation!r}")
        self.branch = branch
        self.skip = skip
        self.activation = None if activation == "linear" else activation
        self._check_unique_names()

    def children(self):
        return [self.skip, self.branch] if self.skip is not None else [self.branch]

    def __repr__(self):
        parts = [f"activation={self.activation!r}", "branch=" + repr(self.branch)]
        parts.append("skip=" + (repr(self.skip) if self.skip is not None else "identity"))
        inner = "\n".join("  " + line for p in parts for line in p.splitlines())
        return f"Residual(name={self.name!r},\n{inner}\n)"

    def _run(self, u, record):
        if record is None:
            s = self.skip.forward(u) if self.skip is not None else u
            f = self.branch.forward(u)
        else:
            s = self.skip._trace_into(u, record) if self.skip is not None else u
            f = self.branch._trace_into(u, record)
        if s.shape != f.shape:
            raise ValueError(f"block '{self.name}': expected skip and branch outputs of one shape, found skip {s.shape} and branch {f.shape}")
        relu = self.activation == "relu"

        def add(out, a, b):  # y = s + F, then the block's ReLU in place, band by band
            np.add(a, b, out=out)
            if relu:
                np.maximum(out, 0, out=out)

        dtype = np.result_type(s, f)
        # forward only: the branch's output is this pass's own array, written over with y
        own = record is None and f is not u and not np.may_share_memory(f, u) and f.dtype == dtype and f.flags.writeable
        if s.flags.c_contiguous and f.flags.c_contiguous:
            y = kernels.elementwise(add, f if own else np.empty(s.shape, dtype=dtype), s, f, ops=1 + relu)
        else:
            y = np.empty(s.shape, dtype=dtype)
            add(y, s, f)
        if record is not None:
            record[self.name] = y
        return y

    def skip_output(self, record: Trace, u):
        """``s``: the skip path's output (``u`` itself for an identity skip)."""
        return record[self.skip.name] if self.skip is not None else u

    def sum_of(self, record: Trace, u):
        """``s + F``: the sum before the block's activation."""
        return self.skip_output(record, u) + record[self.branch.name]

    def _vjp_from(self, record, u, grad):
        if self.activation == "relu":
            grad = grad * (record[self.name] > 0)
        du = self.branch._vjp_from(record, u, grad)
        if self.skip is not None:
            du = du + self.skip._vjp_from(record, u, grad)
        else:
            du = du + grad
        return du


__all__ = ["Trace", "Container", "Sequential", "Residual", "ReLU"]
