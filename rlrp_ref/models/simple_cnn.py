"""The small CNN trained on the bundled datasets (shapes, digits).

Architecture, as a Keras ``Sequential`` would write it::

    conv2d          Conv2D(filters[0], 3x3, padding="same") + ReLU
    max_pooling2d   MaxPool2D(2)
    conv2d_1        Conv2D(filters[1], 3x3, padding="same") + ReLU
    max_pooling2d_1 MaxPool2D(2)
    flatten         Flatten
    dense           Dense(dense_units) + ReLU
    dense_1         Dense(num_classes)          (logits; softmax is never explained)

In the engine each ReLU is its own layer (``conv2d_relu``, ``conv2d_1_relu``,
``dense_relu``); the parameter-carrying layers keep the names Keras gives them,
so an HDF5 file saved from the Keras model loads by name.

Parameters come from an ``init(role, shape)`` callable
(:class:`rlrp_ref.models.ParamInit`; by default He-normal kernels from
``numpy.random.default_rng(seed)`` and zero biases), so a given ``seed`` always
builds the same model. The registry entry (``models.build("simple_cnn",
input_shape=(32, 32, 1), num_classes=4, weights=...)``) goes through
:func:`builder`. :data:`DATASET_CONFIGS` gives the input shape and class count
of the bundled datasets the shipped weights in ``rlrp_ref/data/weights/`` fit.
"""

from __future__ import annotations

from ..layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from ..model import Sequential

__all__ = ["build_simple_cnn", "builder", "bundled_weights", "load_bundled", "VARIANTS", "DATASET_CONFIGS"]

#: Input shape and class count of the bundled datasets the shipped weights were trained on.
DATASET_CONFIGS = {
    "shapes": {"input_shape": (32, 32, 1), "num_classes": 4},
    "digits": {"input_shape": (8, 8, 1), "num_classes": 10},
}


def build_simple_cnn(
    input_shape=(32, 32, 1),
    num_classes: int = 4,
    *,
    filters=(8, 16),
    dense_units: int = 64,
    include_top: bool = True,
    init=None,
    seed: int = 0,
    dtype="float32",
    name: str = "simple_cnn",
) -> Sequential:
    """Build the conv-ReLU-pool x 2, dense-ReLU, dense network (see the module docstring).

    ``input_shape`` is ``(H, W, C)``; ``H`` and ``W`` must be divisible by 4
    (two 2x2 poolings). ``include_top=False`` stops after ``max_pooling2d_1``.
    ``init(role, shape)`` creates each parameter; when ``None`` it is
    ``ParamInit("random", dtype=dtype, seed=seed)``.
    """
    from ._init import ParamInit

    try:
        h, w, c = (int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"simple_cnn: input_shape expected (H, W, C), found {input_shape!r}") from None
    if min(h, w, c) < 1 or h % 4 or w % 4:
        raise ValueError(f"simple_cnn: input_shape expected positive (H, W, C) with H and W divisible by 4, found {tuple(input_shape)!r}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"simple_cnn: num_classes expected a positive int, found {num_classes!r}")
    num_classes = int(num_classes)
    f1, f2 = (int(v) for v in filters)
    dense_units = int(dense_units)
    if min(f1, f2, dense_units) < 1:
        raise ValueError(f"simple_cnn: filters and dense_units expected >= 1, found {filters!r}, {dense_units}")
    if init is None:
        init = ParamInit("random", dtype=dtype, seed=seed)

    layers = [
        Conv2D(init("kernel", (3, 3, c, f1)), init("bias", (f1,)), padding="same", name="conv2d"),
        ReLU(name="conv2d_relu"),
        MaxPool2D(2, name="max_pooling2d"),
        Conv2D(init("kernel", (3, 3, f1, f2)), init("bias", (f2,)), padding="same", name="conv2d_1"),
        ReLU(name="conv2d_1_relu"),
        MaxPool2D(2, name="max_pooling2d_1"),
    ]
    if include_top:
        flat = (h // 4) * (w // 4) * f2
        layers += [
            Flatten(name="flatten"),
            Dense(init("kernel", (flat, dense_units)), init("bias", (dense_units,)), name="dense"),
            ReLU(name="dense_relu"),
            Dense(init("kernel", (dense_units, num_classes)), init("bias", (num_classes,)), name="dense_1"),
        ]
    return Sequential(layers, name=name)


#: Variants the registry accepts (the Keras layer names are the only ones there are).
VARIANTS = ("keras",)


def builder(*, variant: str, num_classes: int, input_shape, include_top: bool, init) -> Sequential:
    """Registry entry point (signature documented in :mod:`rlrp_ref.models`)."""
    if variant not in VARIANTS:
        raise ValueError(f"simple_cnn: variant expected one of {VARIANTS}, found {variant!r}")
    return build_simple_cnn(input_shape, num_classes, include_top=include_top, init=init)


def bundled_weights(dataset: str) -> str:
    """Path of the shipped weights file for a bundled dataset (``"shapes"`` or ``"digits"``)."""
    from importlib import resources

    if dataset not in DATASET_CONFIGS:
        raise ValueError(f"simple_cnn: no bundled weights for {dataset!r}, expected one of {sorted(DATASET_CONFIGS)}")
    path = resources.files("rlrp_ref.data").joinpath("weights", f"simple_cnn_{dataset}.h5")
    if not path.is_file():
        raise FileNotFoundError(f"simple_cnn: bundled weights for {dataset!r} missing from the installation (expected {path})")
    return str(path)


def load_bundled(dataset: str, dtype="float32") -> Sequential:
    """The simple CNN trained on ``dataset`` with its shipped weights (loaded by :func:`weights_import.load`)."""
    from . import build

    return build("simple_cnn", weights=bundled_weights(dataset), dtype=dtype, **DATASET_CONFIGS[dataset])
