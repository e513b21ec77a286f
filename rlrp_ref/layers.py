"""NumPy layers: Keras weight layout, NHWC activations, float32 or float64.

Every layer has

- ``forward(x)``: the output for an input batch ``x``;
- ``vjp(x, grad)``: the vector-Jacobian product, i.e. the gradient with respect
  to the input ``x`` given the gradient ``grad`` at the output;
- a unique ``name`` (Keras-style automatic names: ``conv2d``, ``conv2d_1``, ...)
  and a ``kind`` (the Keras class name in snake case);
- its parameters as plain arrays, listed by ``params`` in Keras weight order
  (``kernel, bias``; ``gamma, beta, moving_mean, moving_variance``).

Layouts: dense kernel ``(in, out)``; conv kernel ``(kh, kw, cin, cout)``;
activations ``(N, H, W, C)``. Parameters keep the dtype they were given (use
``astype`` to switch a whole model between float32 and float64); the
computation runs in NumPy's promoted dtype of input and parameters.

Bad input raises ``ValueError`` naming the layer, what was expected and what was
found.
"""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict

import numpy as np

from . import kernels

_name_counters: dict[str, itertools.count] = defaultdict(itertools.count)


def auto_name(kind: str) -> str:
    """Keras-style automatic layer name: ``kind``, then ``kind_1``, ``kind_2``, ..."""
    k = next(_name_counters[kind])
    return kind if k == 0 else f"{kind}_{k}"


def _as_param(layer_desc: str, pname: str, value, ndim: int | None = None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "f":
        if arr.dtype.kind in "iub":
            arr = arr.astype(np.float64)
        else:
            raise ValueError(f"{layer_desc}: {pname} must be a float array, found dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{layer_desc}: {pname} expected rank {ndim}, found shape {arr.shape}")
    # a broadcast placeholder (zero strides, models.shape_model) is checked on its distinct values only
    distinct = arr[tuple(0 if stride == 0 and n else slice(None) for stride, n in zip(arr.strides, arr.shape))]
    if not np.all(np.isfinite(distinct)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{layer_desc}: {pname} expected finite values, found {bad} non-finite (NaN or inf)")
    return arr


class Layer:
    """Base class. Subclasses set ``kind`` and ``param_names`` and implement ``forward``/``vjp``."""

    kind = "layer"
    param_names: tuple[str, ...] = ()
    #: True for layers whose relevance passes through unchanged (element-wise activations).
    elementwise = False

    def __init__(self, name: str | None = None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"{self.kind}: name must be a non-empty string, found {name!r}")
        self.name = name if name is not None else auto_name(self.kind)

    # -- description ---------------------------------------------------------
    @property
    def desc(self) -> str:
        """``layer 'name' (kind)``: how error messages name this layer."""
        return f"layer '{self.name}' ({self.kind})"

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={v.shape}" for k, v in self.params.items())
        return f"{type(self).__name__}(name={self.name!r}{', ' if shapes else ''}{shapes})"

    # -- parameters ----------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameters in Keras weight order (absent optional ones are left out)."""
        return {k: getattr(self, k) for k in self.param_names if getattr(self, k, None) is not None}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{parameter name: shape}`` in Keras weight order."""
        return {k: v.shape for k, v in self.params.items()}

    def set_params(self, **arrays) -> None:
        """Replace parameters after checking names, shapes and finiteness (all or nothing)."""
        current = self.params
        checked = {}
        for key, value in arrays.items():
            if key not in self.param_names:
                raise ValueError(f"{self.desc}: expected parameters {list(self.param_names)}, found {key!r}")
            arr = _as_param(self.desc, key, value)
            if key in current and arr.shape != current[key].shape:
                raise ValueError(f"{self.desc}: {key} expected shape {current[key].shape}, found {arr.shape}")
            checked[key] = arr
        for key, arr in checked.items():
            setattr(self, key, arr)
        self._validate()

    def _validate(self) -> None:
        """Check parameter consistency; subclasses override."""

    def with_params(self, **arrays) -> "Layer":
        """A copy of this layer with some parameters replaced (shapes may not change)."""
        new = copy.copy(self)
        new.set_params(**arrays)
        return new

    @property
    def num_params(self) -> int:
        """Number of scalar parameters (Keras's ``count_params``)."""
        return int(sum(v.size for v in self.params.values()))

    def astype(self, dtype) -> "Layer":
        """A copy with every parameter cast to ``dtype``."""
        new = copy.copy(self)
        for k, v in self.params.items():
            setattr(new, k, v.astype(dtype))
        return new

    def copy(self) -> "Layer":
        """A deep copy (parameters copied)."""
        return copy.deepcopy(self)

    # -- computation ---------------------------------------------------------
    def _check_input(self, x, rank: int | None = None, channels: int | None = None) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise ValueError(f"{self.desc}: expected a float32 or float64 input, found dtype {x.dtype}")
        if rank is not None and x.ndim != rank:
            layout = {2: "(N, features)", 4: "(N, H, W, C)"}.get(rank, f"rank {rank}")
            raise ValueError(f"{self.desc}: expected input of rank {rank} {layout}, found shape {x.shape}")
        if channels is not None and x.shape[-1] != channels:
            raise ValueError(f"{self.desc}: expected {channels} input channels/features, found shape {x.shape}")
        return x

    def forward(self, x):  # pragma: no cover - abstract
        """The layer's output ``y = f(x)`` for an input batch ``x`` (the formula is in each class's docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def forward_in_place(self, x):
        """``forward(x)``, allowed to overwrite ``x`` (which the caller no longer needs) and return it.

        Element-wise layers (ReLU, BatchNorm) do; every other layer returns
        ``forward(x)``. ``Sequential.forward`` uses it on the outputs it made.
        """
        return self.forward(x)

    def vjp(self, x, grad):  # pragma: no cover - abstract
        """Vector-Jacobian product ``(df/dx)^T grad``: the gradient at the input ``x`` given ``grad`` at the output.

        Every relevance rule pulls relevance back through this map (R-LRP:
        ``Rt = x * vjp(x, R)``; the classical rules: ``R_in = a~ * vjp(R / stab(z))``).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement vjp")

    def __call__(self, x):
        return self.forward(x)

    # -- container protocol (leaves are their own single layer) ----------------
    def iter_layers(self):
        """Leaf layers in execution order (a leaf yields itself)."""
        yield self

    def iter_all(self):
        """Every layer, containers included, each container after its children."""
        yield self

    def _trace_into(self, x, record):
        y = self.forward(x)
        record[self.name] = y
        return y

    def _vjp_from(self, record, x, grad):
        return self.vjp(x, grad)


# ---------------------------------------------------------------------------
# linear maps
# ---------------------------------------------------------------------------


class Dense(Layer):
    """Fully connected layer: ``y = x @ kernel + bias``, kernel ``(in, out)``."""

    kind = "dense"
    param_names = ("kernel", "bias")

    def __init__(self, kernel, bias=None, name=None):
        super().__init__(name)
        self.kernel = _as_param(self.desc, "kernel", kernel, ndim=2)
        self.bias = None if bias is None else _as_param(self.desc, "bias", bias, ndim=1)
        self._validate()

    def _validate(self):
        if self.bias is not None and self.bias.shape != (self.kernel.shape[1],):
            raise ValueError(f"{self.desc}: bias expected shape ({self.kernel.shape[1]},) to match kernel {self.kernel.shape}, found {self.bias.shape}")

    @property
    def units(self) -> int:
        """Number of outputs (``kernel.shape[1]``)."""
        return self.kernel.shape[1]

    def forward(self, x):
        x = self._check_input(x, rank=2, channels=self.kernel.shape[0])
        y = x @ self.kernel
        if self.bias is not None:
            y += self.bias
        return y

    def vjp(self, x, grad):
        """``dx = grad @ kernel.T``."""
        return np.asarray(grad) @ self.kernel.T


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as Keras), kernel ``(kh, kw, cin, cout)``.

    ``y[n,p,q,o] = sum_{i,j,c} xp[n, p*sh+i, q*sw+j, c] kernel[i,j,c,o] + bias[o]``
    with ``xp`` the zero-padded input. ``padding``: ``"valid"``, ``"same"``
    (TensorFlow rule: the odd extra row/column goes bottom/right) or explicit
    ``((top, bottom), (left, right))``.
    """

    kind = "conv2d"
    param_names = ("kernel", "bias")

    def __init__(self, kernel, bias=None, strides=1, padding="valid", name=None):
        super().__init__(name)
        self.kernel = _as_param(self.desc, "kernel", kernel, ndim=4)
        self.bias = None if bias is None else _as_param(self.desc, "bias", bias, ndim=1)
        self.strides = kernels.as_pair(strides, f"{self.desc}: strides")
        if min(self.strides) < 1:
            raise ValueError(f"{self.desc}: strides expected >= 1, found {strides!r}")
        self.padding = padding
        kernels.resolve_padding(padding, (1, 1), (1, 1), (1, 1))  # reject malformed padding early
        self._validate()

    def _validate(self):
        if self.bias is not None and self.bias.shape != (self.kernel.shape[3],):
            raise ValueError(f"{self.desc}: bias expected shape ({self.kernel.shape[3]},) to match kernel {self.kernel.shape}, found {self.bias.shape}")

    @property
    def kernel_size(self) -> tuple[int, int]:
        """``(kh, kw)``."""
        return self.kernel.shape[0], self.kernel.shape[1]

    @property
    def filters(self) -> int:
        """Number of output channels (``kernel.shape[3]``)."""
        return self.kernel.shape[3]

    def pads(self, input_hw) -> kernels.Pads:
        """Explicit padding for an input of spatial size ``input_hw``."""
        return kernels.resolve_padding(self.padding, input_hw, self.kernel_size, self.strides)

    def _checked(self, x):
        x = self._check_input(x, rank=4, channels=self.kernel.shape[2])
        pads = self.pads(x.shape[1:3])
        padded = (x.shape[1] + sum(pads[0]), x.shape[2] + sum(pads[1]))
        if padded[0] < self.kernel.shape[0] or padded[1] < self.kernel.shape[1]:
            raise ValueError(f"{self.desc}: expected a padded input of at least {self.kernel_size}, found spatial size {padded}")
        return x, pads

    def forward(self, x):
        x, pads = self._checked(x)
        return kernels.conv2d_forward(x, self.kernel, self.bias, self.strides, pads)

    def vjp(self, x, grad):
        """``dx = col2im(grad @ kernel2d.T)``: one GEMM, then an accumulation over kernel offsets."""
        x = np.asarray(x)
        return kernels.conv2d_vjp(np.asarray(grad), self.kernel, x.shape, self.strides, self.pads(x.shape[1:3]))


class _Pool2D(Layer):
    def __init__(self, pool_size=2, strides=None, padding="valid", name=None):
        super().__init__(name)
        self.pool_size = kernels.as_pair(pool_size, f"{self.desc}: pool_size")
        self.strides = kernels.as_pair(strides if strides is not None else self.pool_size, f"{self.desc}: strides")
        if min(self.pool_size) < 1 or min(self.strides) < 1:
            raise ValueError(f"{self.desc}: pool_size and strides expected >= 1, found {pool_size!r}, {strides!r}")
        self.padding = padding
        kernels.resolve_padding(padding, (1, 1), (1, 1), (1, 1))

    def pads(self, input_hw) -> kernels.Pads:
        return kernels.resolve_padding(self.padding, input_hw, self.pool_size, self.strides)

    def _checked(self, x):
        x = self._check_input(x, rank=4)
        pads = self.pads(x.shape[1:3])
        padded = (x.shape[1] + sum(pads[0]), x.shape[2] + sum(pads[1]))
        if padded[0] < self.pool_size[0] or padded[1] < self.pool_size[1]:
            raise ValueError(f"{self.desc}: expected a padded input of at least {self.pool_size}, found spatial size {padded}")
        if max(pads[0]) >= self.pool_size[0] or max(pads[1]) >= self.pool_size[1]:
            raise ValueError(f"{self.desc}: expected padding smaller than the pool {self.pool_size}, found {pads}")
        return x, pads


class MaxPool2D(_Pool2D):
    """Max pooling: ``y = max`` over each window (padding counts as ``-inf``).

    Its vjp routes the gradient to each window's winner; ties go to the first
    index in row-major window order (the convention of RLRP_SPEC.md).
    """

    kind = "max_pooling2d"

    def forward(self, x):
        x, pads = self._checked(x)
        return kernels.maxpool_forward(x, self.pool_size, self.strides, pads)

    def winner(self, x) -> np.ndarray:
        """Flat window index of each window's maximum, shape ``(N, Ho, Wo, C)``."""
        x, pads = self._checked(x)
        return kernels.maxpool_winner(x, self.pool_size, self.strides, pads)

    def vjp(self, x, grad):
        """``dx[winner of window (p, q)] += grad[p, q]``: each output's gradient goes to its window's winner."""
        x, pads = self._checked(x)
        return kernels.maxpool_vjp(x, np.asarray(grad), self.pool_size, self.strides, pads)


class AvgPool2D(_Pool2D):
    """Average pooling: ``y = sum_window(x) / count``.

    ``count = kh * kw`` with ``"valid"`` padding; with ``"same"`` or explicit
    padding it is the number of non-padding inputs in the window, as Keras does.
    """

    kind = "average_pooling2d"

    def forward(self, x):
        x, pads = self._checked(x)
        return kernels.avgpool_forward(x, self.pool_size, self.strides, pads)

    def vjp(self, x, grad):
        """``dx[i] = sum over the windows (p, q) containing i of grad[p, q] / count[p, q]`` (padding gets nothing)."""
        x, pads = self._checked(x)
        return kernels.avgpool_vjp(x, np.asarray(grad), self.pool_size, self.strides, pads)


class GlobalAvgPool2D(Layer):
    """``y[n, c] = mean_{h, w} x[n, h, w, c]``."""

    kind = "global_average_pooling2d"

    def forward(self, x):
        x = self._check_input(x, rank=4)
        return x.mean(axis=(1, 2))

    def vjp(self, x, grad):
        """``dx[n, h, w, c] = grad[n, c] / (H * W)``."""
        x = np.asarray(x)
        h, w = x.shape[1], x.shape[2]
        g = np.asarray(grad)[:, None, None, :] / (h * w)
        return np.ascontiguousarray(np.broadcast_to(g, x.shape))


# ---------------------------------------------------------------------------
# shape-only layers
# ---------------------------------------------------------------------------


class ZeroPad2D(Layer):
    """Zero padding of the spatial axes: int, ``(ph, pw)`` or ``((top, bottom), (left, right))`` (Keras)."""

    kind = "zero_padding2d"

    def __init__(self, padding=1, name=None):
        super().__init__(name)
        if isinstance(padding, str):
            raise ValueError(f"{self.desc}: padding expected an int or pairs, found {padding!r}")
        self.padding = kernels.resolve_padding(padding, (1, 1), (1, 1), (1, 1))

    def forward(self, x):
        x = self._check_input(x, rank=4)
        return kernels.pad_nhwc(x, self.padding)

    def vjp(self, x, grad):
        """Crop the padding off ``grad``."""
        return np.ascontiguousarray(kernels.crop_nhwc(np.asarray(grad), self.padding))


class Flatten(Layer):
    """Flatten in C order over NHWC (as Keras with ``channels_last``): ``(N, H, W, C) -> (N, H*W*C)``."""

    kind = "flatten"

    def forward(self, x):
        x = self._check_input(x)
        if x.ndim < 2:
            raise ValueError(f"{self.desc}: expected input of rank >= 2 (N, ...), found shape {x.shape}")
        return x.reshape(x.shape[0], -1)

    def vjp(self, x, grad):
        """Reshape ``grad`` back to the input's shape."""
        return np.asarray(grad).reshape(np.shape(x))


# ---------------------------------------------------------------------------
# element-wise layers
# ---------------------------------------------------------------------------


class ReLU(Layer):
    """``y = max(x, 0)``; vjp ``grad * [x > 0]``."""

    kind = "relu"
    elementwise = True

    def forward(self, x):
        x = self._check_input(x)
        if not x.flags.c_contiguous:
            return np.maximum(x, 0)
        return kernels.elementwise(lambda out, v: np.maximum(v, 0, out=out), np.empty_like(x), x)

    def forward_in_place(self, x):
        """``max(x, 0)`` written into ``x`` itself (threaded) when it is a C-contiguous float array."""
        x = self._check_input(x)
        if not (x.flags.c_contiguous and x.flags.writeable):
            return self.forward(x)
        return kernels.elementwise(lambda out: np.maximum(out, 0, out=out), x)

    def vjp(self, x, grad):
        grad, x = np.asarray(grad), np.asarray(x)
        if not (grad.flags.c_contiguous and x.flags.c_contiguous and grad.shape == x.shape):
            return grad * (x > 0)
        return kernels.elementwise(lambda out, g, v: np.multiply(g, v > 0, out=out),
                                   np.empty(grad.shape, dtype=np.result_type(grad, np.bool_)), grad, x, ops=2)


class Sigmoid(Layer):
    """``y = 1 / (1 + exp(-x))``: an activation that is not zero at zero."""

    kind = "sigmoid"
    elementwise = True

    def forward(self, x):
        x = self._check_input(x)
        from scipy.special import expit

        return expit(x)

    def vjp(self, x, grad):
        """``grad * y * (1 - y)`` with ``y = sigmoid(x)``."""
        y = self.forward(x)
        return np.asarray(grad) * y * (1 - y)


class Softplus(Layer):
    """``y = log(1 + exp(x))`` (stable form); vjp ``grad * sigmoid(x)``."""

    kind = "softplus"
    elementwise = True

    def forward(self, x):
        x = self._check_input(x)
        return np.logaddexp(0, x)

    def vjp(self, x, grad):
        """``grad * sigmoid(x)``."""
        from scipy.special import expit

        return np.asarray(grad) * expit(np.asarray(x))


class Identity(Layer):
    """``y = x`` (Dropout at inference, Keras ``Activation('linear')``)."""

    kind = "identity"
    elementwise = True

    def forward(self, x):
        return self._check_input(x)

    def vjp(self, x, grad):
        return np.asarray(grad)


class BatchNorm(Layer):
    """Inference batch normalization over the last axis.

    ``y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta``.
    Keras default ``epsilon=1e-3`` (Keras ResNet50 uses ``1.001e-5``; torchvision ``1e-5``).
    Relevance passes never see it: :func:`rlrp_ref.canonize.fold_batchnorm` folds
    it into the preceding Dense/Conv2D first.
    """

    kind = "batch_normalization"
    param_names = ("gamma", "beta", "moving_mean", "moving_variance")

    def __init__(self, gamma, beta, moving_mean, moving_var, epsilon=1e-3, name=None):
        super().__init__(name)
        self.gamma = _as_param(self.desc, "gamma", gamma, ndim=1)
        self.beta = _as_param(self.desc, "beta", beta, ndim=1)
        self.moving_mean = _as_param(self.desc, "moving_mean", moving_mean, ndim=1)
        self.moving_variance = _as_param(self.desc, "moving_variance", moving_var, ndim=1)
        self.epsilon = float(epsilon)
        if not self.epsilon >= 0:
            raise ValueError(f"{self.desc}: epsilon expected >= 0, found {epsilon!r}")
        self._validate()

    def _validate(self):
        shapes = {k: v.shape for k, v in self.params.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"{self.desc}: expected gamma, beta, moving_mean, moving_variance of one shape, found {shapes}")
        if np.any(self.moving_variance + self.epsilon <= 0):
            raise ValueError(f"{self.desc}: expected moving_variance + epsilon > 0, found min {float(np.min(self.moving_variance + self.epsilon))}")

    @property
    def channels(self) -> int:
        """Number of normalized channels."""
        return self.gamma.shape[0]

    def scale_shift(self):
        """``(scale, shift)`` with ``y = x * scale + shift``."""
        scale = self.gamma / np.sqrt(self.moving_variance + self.epsilon)
        return scale, self.beta - self.moving_mean * scale

    def forward(self, x):
        return self._affine(x, in_place=False)

    def forward_in_place(self, x, relu: bool = False):
        """``x * scale + shift`` written into ``x`` itself when it is C-contiguous and of the result's dtype.

        ``relu=True`` also applies the ReLU that follows, in the same pass
        (``Sequential.forward`` does this for a BatchNorm followed by a ReLU).
        """
        return self._affine(x, in_place=True, relu=relu)

    def _affine(self, x, in_place: bool, relu: bool = False):
        x = self._check_input(x, channels=self.channels)
        scale, shift = self.scale_shift()
        dtype = np.result_type(x, scale)
        if not x.flags.c_contiguous:
            y = (x * scale + shift).astype(dtype, copy=False)
            return np.maximum(y, 0, out=y) if relu else y

        def affine(out, v, sc, sh):  # one pass: the product, then the shift (and the ReLU) in place
            np.multiply(v, sc, out=out)
            out += sh
            if relu:
                np.maximum(out, 0, out=out)

        out = x if in_place and x.dtype == dtype and x.flags.writeable else np.empty(x.shape, dtype=dtype)
        return kernels.channelwise(affine, out, x, scale.astype(dtype), shift.astype(dtype), ops=2 + relu)

    def vjp(self, x, grad):
        """``grad * gamma / sqrt(moving_variance + epsilon)``."""
        scale, _ = self.scale_shift()
        return np.asarray(grad) * scale
