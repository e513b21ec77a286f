"""Model zoo: :func:`build` and the registry of builders.

``build("vgg16" | "vgg19" | "resnet50", variant="keras" | "torchvision", ...)``
returns a :class:`rlrp_ref.model.Sequential` (float32 by default). Every
model ends with the logits: the softmax of the original frameworks is not part
of it, because relevance explains the logits. Which preprocessing a model
expects is in each builder module's docstring and in ``model.preprocessing``.

Registry
--------
A builder is a function called with keyword arguments only::

    builder(*, variant: str, num_classes: int, input_shape: tuple[int, int, int],
            include_top: bool, init: ParamInit) -> Sequential

It must create every parameter with ``init(role, shape)`` (``role`` one of
``"kernel"``, ``"bias"``, ``"gamma"``, ``"beta"``, ``"moving_mean"``,
``"moving_variance"``, see :class:`ParamInit`) and raise ``ValueError`` for a
variant or shape it does not support. Register it with
``register(name, builder, variants=(...))``. A module ``rlrp_ref/models/<name>.py``
listed in ``LAZY_MODULES`` (``simple_cnn``) is imported the first time the name
is asked for; it either calls :func:`register` itself or defines ``builder``
(and optionally ``VARIANTS``, default ``("keras",)``; ``INPUT_SHAPE``,
default ``(224, 224, 3)``; ``CONFIGS`` (or ``DATASET_CONFIGS``), a dict or list
of known ``{"input_shape": ..., "num_classes": ...}`` settings for
``weights_import.inspect`` to try).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable

from . import resnet, vgg
from ._init import ROLES, ParamInit

__all__ = ["build", "shape_model", "register", "available", "get_builder", "fit_candidates", "inspect", "Builder", "ParamInit",
           "ROLES", "PREPROCESSING"]


@dataclass(frozen=True)
class Builder:
    """A registry entry: the builder function, the variants it supports and its default input shape."""

    name: str
    func: Callable
    variants: tuple[str, ...]
    input_shape: tuple[int, int, int] = (224, 224, 3)
    #: Known configurations (``{"input_shape": ..., "num_classes": ...}``) that ``weights_import.inspect`` also tries.
    configs: tuple = ()


_REGISTRY: dict[str, Builder] = {}
#: Builders living in modules imported on first use (the module may not exist yet).
LAZY_MODULES = {"simple_cnn": "rlrp_ref.models.simple_cnn"}
#: Which input pipeline (:mod:`rlrp_ref.preprocess`) each variant's weights expect.
PREPROCESSING = {"keras": "caffe", "torchvision": "torchvision"}


def register(name: str, builder: Callable, *, variants=("keras",), input_shape=(224, 224, 3), configs=()) -> None:
    """Add (or replace) the builder called ``name`` (see the module docstring for its signature).

    ``input_shape`` is the builder's default ``(H, W, C)``, used when :func:`build` gets none.
    ``configs``: other known ``{"input_shape": ..., "num_classes": ...}`` settings
    (e.g. the datasets shipped weights were trained on), which
    ``weights_import.inspect`` tries when matching a file to the builder.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"models.register: name expected a non-empty string, found {name!r}")
    if not callable(builder):
        raise ValueError(f"models.register: builder for {name!r} expected a callable, found {type(builder).__name__}")
    configs = tuple(dict(c) for c in (configs.values() if isinstance(configs, dict) else configs))
    _REGISTRY[name] = Builder(name, builder, tuple(variants), tuple(int(n) for n in input_shape), configs)


register("vgg16", vgg.build_vgg16, variants=vgg.VARIANTS)
register("vgg19", vgg.build_vgg19, variants=vgg.VARIANTS)
register("resnet50", resnet.build_resnet50, variants=resnet.VARIANTS)


def _load_lazy(name: str) -> None:
    module_name = LAZY_MODULES.get(name)
    if module_name is None or name in _REGISTRY:
        return
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        return
    if name not in _REGISTRY and hasattr(module, "builder"):
        configs = getattr(module, "CONFIGS", getattr(module, "DATASET_CONFIGS", ()))
        register(name, module.builder, variants=getattr(module, "VARIANTS", ("keras",)),
                 input_shape=getattr(module, "INPUT_SHAPE", (224, 224, 3)), configs=configs)


def available() -> list[str]:
    """Names of the builders that can be built now (lazy modules that exist included)."""
    for name in LAZY_MODULES:
        _load_lazy(name)
    return sorted(_REGISTRY)


def get_builder(name: str) -> Builder:
    """The registered :class:`Builder` called ``name`` (importing its lazy module if needed), or ValueError."""
    _load_lazy(name)
    if name not in _REGISTRY:
        raise ValueError(f"models.build: unknown model {name!r}, expected one of {available()}")
    return _REGISTRY[name]


def build(name: str, *, variant: str = "keras", num_classes: int = 1000, input_shape=None,
          include_top: bool = True, weights=None, dtype="float32", seed: int = 0):
    """Build a model, with random weights or weights from an HDF5 file.

    ``input_shape`` ``(H, W, C)``: None means the builder's default, ``(224, 224, 3)``
    for vgg16, vgg19 and resnet50. ``dtype``: the parameters' dtype (float32 or float64).

    ``weights``:

    - a path: the structure is built with zero-memory placeholders, then
      :func:`weights_import.load` fills every parameter from the file (any
      layout it detects) or raises ``weights_import.WeightsError``;
    - ``"random"``: He-normal kernels drawn from ``numpy.random.default_rng(seed)``
      in creation order, zero biases, BatchNorm with ``gamma = 1``, ``beta = 0``,
      ``moving_mean = 0``, ``moving_variance = 1``;
    - ``None``: the same as ``"random"`` (Keras's ``weights=None`` also means a
      random initialisation); with the default ``seed=0`` it is reproducible.

    The model has attributes ``variant``, ``input_shape`` and ``preprocessing``
    (``"caffe"`` or ``"torchvision"``, see :mod:`rlrp_ref.preprocess`).
    """
    builder = get_builder(name)
    if variant not in builder.variants:
        raise ValueError(f"models.build: {name} has variants {builder.variants}, found {variant!r}")
    input_shape = builder.input_shape if input_shape is None else input_shape
    if weights is None or (isinstance(weights, str) and weights == "random"):
        init = ParamInit("random", dtype=dtype, seed=seed)
        path = None
    else:
        init = ParamInit("shape", dtype=dtype)
        path = weights
    model = builder.func(variant=variant, num_classes=num_classes, input_shape=tuple(input_shape),
                         include_top=include_top, init=init)
    model.variant = variant
    model.input_shape = tuple(int(n) for n in input_shape)
    model.preprocessing = PREPROCESSING.get(variant, variant)
    if path is not None:
        import weights_import

        weights_import.load(path, model)
    return model


def shape_model(name: str, **kwargs):
    """The model ``build(name, **kwargs)`` would give, with zero-memory placeholder parameters.

    Use it to compare parameter shapes (``layer.param_shapes()``) without allocating weights.
    """
    builder = get_builder(name)
    dtype = kwargs.pop("dtype", "float32")
    kwargs.setdefault("variant", "keras")
    kwargs.setdefault("num_classes", 1000)
    kwargs["input_shape"] = tuple(kwargs.get("input_shape") or builder.input_shape)
    kwargs.setdefault("include_top", True)
    if kwargs["variant"] not in builder.variants:
        raise ValueError(f"models.build: {name} has variants {builder.variants}, found {kwargs['variant']!r}")
    model = builder.func(init=ParamInit("shape", dtype=dtype), **kwargs)
    model.variant = kwargs["variant"]
    model.input_shape = kwargs["input_shape"]
    model.preprocessing = PREPROCESSING.get(kwargs["variant"], kwargs["variant"])
    return model


def fit_candidates(class_counts):
    """The placeholder models :func:`weights_import.inspect` matches a file against: every registered builder.

    Yields one group per builder, variant, ``include_top`` and configuration
    (its default input shape, then each of its ``configs``): the
    ``(description, make_model)`` pairs for each class count to try (the
    configuration's own, else ``class_counts``, the file's output sizes), of
    which :func:`weights_import.inspect` takes the first that matches.
    """
    for name in available():
        builder = get_builder(name)
        settings = [{"input_shape": builder.input_shape}] + [dict(c) for c in builder.configs]
        for variant in builder.variants:
            for include_top in (True, False):
                for setting in settings:
                    input_shape = tuple(setting.get("input_shape", builder.input_shape))
                    counts = [setting["num_classes"]] if "num_classes" in setting else class_counts
                    yield [({"builder": name, "variant": variant, "include_top": include_top, "num_classes": num_classes,
                             "input_shape": input_shape},
                            functools.partial(shape_model, name, variant=variant, num_classes=num_classes or 1000,
                                              include_top=include_top, input_shape=input_shape))
                           for num_classes in (counts if include_top else [None])]


def inspect(path, fits: bool = True) -> dict:
    """:func:`weights_import.inspect` of ``path``, with ``fits`` matched against every registered builder."""
    import weights_import

    return weights_import.inspect(path, fits=fits, candidates=fit_candidates)
