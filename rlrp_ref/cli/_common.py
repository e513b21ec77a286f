"""What ``explain``, ``trace`` and ``demo`` share: the model options, input images, targets, PNGs.

Everything here checks its input and raises ``ValueError`` (or ``OSError``)
with a one-line message, which the dispatcher prints before exiting with code 2.
Subcommands call these checks before they create any output.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ARCHS = ("vgg16", "vgg19", "resnet50", "simple_cnn")
VARIANTS = ("keras", "torchvision")
#: ``--weights`` shorthands of ``--arch simple_cnn``: the bundled datasets.
BUNDLED = ("shapes", "digits")
#: ITU-R 601 luma weights, the ones Pillow's ``convert("L")`` uses.
LUMA = np.array([0.299, 0.587, 0.114])
#: Heatmap PNGs of small inputs are enlarged (nearest neighbour) to at least this side.
MIN_PNG_SIDE = 128


def add_model_arguments(parser, *, default_weights: str | None = "shapes") -> None:
    """``--arch``, ``--weights``, ``--variant``, ``--size``, ``--dtype``, ``--method``, ``--target``."""
    parser.add_argument("--arch", default="simple_cnn", help=f"architecture: {', '.join(ARCHS)} (default: simple_cnn)")
    parser.add_argument(
        "--weights", default=default_weights,
        help="HDF5 weights file, 'random', or for simple_cnn a bundled dataset: shapes, digits"
        + (f" (default: {default_weights})" if default_weights else ""),
    )
    parser.add_argument("--variant", default="keras", help="keras or torchvision: layer names and preprocessing of the ImageNet models (default: keras)")
    parser.add_argument("--size", type=int, default=224, help="input side of the ImageNet models in pixels (default: 224)")
    parser.add_argument("--dtype", default="auto", help="float32 or float64 (default: float64 for simple_cnn, float32 otherwise)")
    parser.add_argument("--method", default="rlrp", help="explanation method, e.g. rlrp, epsilon_plus_flat, epsilon_gamma_box, gradient_x_input (default: rlrp)")
    parser.add_argument("--target", default="top1", help="class index to explain, or top1 for the predicted class (default: top1)")


# ---------------------------------------------------------------------------
# checks on plain arguments (no file touched)
# ---------------------------------------------------------------------------


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}, expected one of {', '.join(ARCHS)}")
    return arch


def check_method(method: str) -> str:
    from ..explain import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}, expected one of {', '.join(METHODS)}")
    return method


def parse_target(text) -> int | None:
    """``"top1"`` (or None) -> None; ``"3"`` -> 3; anything else is an error."""
    if text is None or str(text).lower() == "top1":
        return None
    try:
        value = int(str(text))
    except ValueError:
        raise ValueError(f"--target expected a class index or top1, found {text!r}") from None
    if value < 0:
        raise ValueError(f"--target {value} is out of range: class indices start at 0")
    return value


def check_target(target: int | None, num_classes: int) -> int | None:
    if target is not None and not 0 <= target < num_classes:
        raise ValueError(f"--target {target} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return target


def add_image_arguments(parser) -> None:
    """``--max-pixels``: the largest image decoded (checked from the file's header, before decoding)."""
    from ..preprocess import MAX_PIXELS

    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help=f"refuse images of more pixels (width x height) than this before decoding them (default: {MAX_PIXELS:,})")


def check_images(paths, max_pixels: int | None = None) -> None:
    """Decode every image once, so that a bad one stops the run before any output or progress bar."""
    from ..preprocess import MAX_PIXELS, load_image

    for path in paths:
        load_image(path, MAX_PIXELS if max_pixels is None else max_pixels)


def explain_checked(loaded: "LoadedModel", x, **kwargs):
    """:func:`rlrp_ref.explain.explain` with numpy's floating-point warnings kept off stderr.

    When the logits or the relevance come out NaN or infinite (weights or an
    input too large for the dtype), raise a one-line ``ValueError`` naming the
    first layer whose output (forward) or relevance (backward) is not finite.
    The check costs one pass over the final arrays; the layer is searched only then.
    """
    from ..explain import explain

    model = loaded.model
    hint = "weights or input too large" + ("; try --dtype float64" if loaded.dtype == np.float32 else "")
    with np.errstate(all="ignore"):
        result = explain(model, x, **kwargs)
        if not np.isfinite(result.logits).all():
            for name, out in model.trace(x).items():
                if not np.isfinite(out).all():
                    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
                    raise ValueError(f"the forward pass overflowed at layer '{name}' ({model.get_layer(name).kind}): "
                                     f"{bad} of its {out.size} outputs are NaN or inf in {loaded.dtype.name} ({hint})")
            raise ValueError(f"the forward pass gave NaN or inf logits in {loaded.dtype.name} ({hint})")
        if not np.isfinite(result.relevance).all():
            where = next((f" at layer '{r.name}' ({r.kind})" for r in result.ledger
                          if not (np.isfinite(r.l1_in).all() and np.isfinite(r.l1_out).all())), "")
            raise ValueError(f"the {kwargs.get('method', 'rlrp')} relevance became NaN or inf{where} in "
                             f"{loaded.dtype.name} ({hint})")
    return result


# ---------------------------------------------------------------------------
# the model and its input pipeline
# ---------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model ready to explain, with what the CLI needs to feed and label it."""

    model: object
    arch: str
    variant: str
    input_shape: tuple[int, int, int]
    class_names: list[str]
    dtype: np.dtype
    #: ``(low, high)``: the range of a preprocessed input (scalars or per channel), for z-box rules.
    input_bounds: tuple = field(default=(0.0, 1.0))
    #: the bundled dataset the weights were trained on, if any.
    dataset: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prepare(self, image) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB ``(H, W, 3)`` -> ``(x, shown)``: the model input ``(1, h, w, c)`` and the uint8 image it sees.

        ImageNet models: the variant's pipeline of :mod:`rlrp_ref.preprocess`
        (keras: nearest-neighbour resize to ``size x size``, then caffe;
        torchvision: resize the shorter side to ``round(size * 8 / 7)``, centre
        crop, normalize). The simple CNN: bilinear resize to its input, then
        grey ``= luma / 255`` in ``[0, 1]`` as its training images.
        """
        from .. import preprocess

        h, w, c = self.input_shape
        if self.arch == "simple_cnn":
            resized = preprocess.resize_image(image, h, w, "bilinear").astype(np.float64)
            grey = resized @ LUMA
            x = (grey / 255.0)[None, :, :, None]
            if c != 1:
                x = np.repeat(x, c, axis=-1)
            return x.astype(self.dtype), np.clip(np.round(grey), 0, 255).astype(np.uint8)
        if self.variant == "keras":
            shown = preprocess.resize_image(image, h, w, "nearest")
            x = preprocess.keras_caffe(shown, dtype=self.dtype)
        else:
            shown = preprocess.resize_center_crop(image, h, int(round(h * 8 / 7)), "bilinear")
            x = preprocess.torchvision_normalize(shown, dtype=self.dtype)
        return x[None], shown

    def method_params(self, method: str) -> dict:
        """The parameters a method needs from the model's input range (z-box bounds); none for the others."""
        return {"low": self.input_bounds[0], "high": self.input_bounds[1]} if method in ("zbox", "epsilon_gamma_box") else {}


def _dtype(text: str, arch: str) -> np.dtype:
    if text == "auto":
        return np.dtype(np.float64 if arch == "simple_cnn" else np.float32)
    if text not in ("float32", "float64"):
        raise ValueError(f"--dtype expected float32, float64 or auto, found {text!r}")
    return np.dtype(text)


def _simple_cnn_kernels(info: dict) -> dict:
    """``{layer: kernel shape in Keras layout}`` of the conv and dense layers of an inspected file, any layout.

    Keras ``.h5``: the ``kernel`` weights by layer name. Keras 3 ``.weights.h5``:
    the first var of each ``conv2d*``/``dense*`` group, numbered in order
    (``conv2d``, ``conv2d_1``, ...). torch state dict: ``<layer>.weight`` moved
    to Keras layout (conv ``(out, in, kh, kw) -> (kh, kw, in, out)``, Linear transposed).
    """
    from weights_import.keras import split_auto_name

    kernels = {}
    if info["layout"] == "keras3_weights":
        numbered: dict[str, list] = {}
        for key, items in info["layers"]:
            kind, number = split_auto_name(key.split(" ", 1)[0])
            if kind in ("conv2d", "dense") and items:
                numbered.setdefault(kind, []).append((number, items[0][1]))
        for kind, found in numbered.items():
            for i, (_, shape) in enumerate(sorted(found)):
                kernels[kind if i == 0 else f"{kind}_{i}"] = tuple(shape)
        return kernels
    for key, items in info["layers"]:
        for name, shape, _ in items:
            if info["layout"] == "torch_state_dict" and name == "weight":
                kernels[key] = tuple(shape[2:]) + tuple(shape[1::-1]) if len(shape) == 4 else tuple(shape[::-1])
            elif info["layout"] != "torch_state_dict" and name.split(":")[0] == "kernel":
                kernels[key] = tuple(shape)
    return kernels


def _simple_cnn_config(path: str) -> dict:
    """Input shape, classes, filters and dense units of a simple-CNN weights file, read from its array shapes.

    Works for every layout :func:`weights_import.inspect` reads. Falls back to
    the shapes configuration when the file does not look like a simple CNN;
    loading then fails with a message naming the mismatching layer.
    """
    import weights_import

    from ..models.simple_cnn import DATASET_CONFIGS

    kernels = _simple_cnn_kernels(weights_import.inspect(path, fits=False))
    ranks = {"conv2d": 4, "conv2d_1": 4, "dense": 2, "dense_1": 2}
    if any(len(kernels.get(name, ())) != rank or min(kernels[name]) < 1 for name, rank in ranks.items()):
        return dict(DATASET_CONFIGS["shapes"])
    k1, k2, d1, d2 = (kernels[name] for name in ranks)
    side = 4 * math.isqrt(d1[0] // k2[3])
    if side < 4 or side * side * k2[3] != 16 * d1[0]:
        return dict(DATASET_CONFIGS["shapes"])
    return {"input_shape": (side, side, k1[2]), "num_classes": d2[1], "filters": (k1[3], k2[3]), "dense_units": d1[1]}


def load_model(arch: str, weights: str | None, variant: str = "keras", size: int = 224, dtype: str = "auto") -> LoadedModel:
    """Build ``arch`` with ``weights`` (a file, ``"random"``, or for simple_cnn ``shapes``/``digits``)."""
    from .. import models

    check_arch(arch)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}, expected keras or torchvision")
    dt = _dtype(dtype, arch)
    if weights is None:
        raise ValueError(f"--weights is required for --arch {arch}: an HDF5 file or 'random'")
    if arch == "simple_cnn":
        return _load_simple_cnn(weights, variant, dt)
    if weights in BUNDLED:
        raise ValueError(f"--weights {weights} is a bundled simple_cnn model; use --arch simple_cnn, or give {arch} an HDF5 file or 'random'")
    if size < 32:
        raise ValueError(f"--size expected at least 32 pixels, found {size}")
    if weights != "random":
        _check_weights_file(weights)
    model = models.build(arch, variant=variant, input_shape=(size, size, 3), weights=weights, dtype=dt.name)
    return LoadedModel(model, arch, variant, (size, size, 3), _imagenet_or_generic(1000), dt, _imagenet_bounds(variant))


def _check_weights_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")


def _load_simple_cnn(weights: str, variant: str, dtype: np.dtype) -> LoadedModel:
    import weights_import

    from .. import models
    from ..data import shapes
    from ..models._init import ParamInit
    from ..models.simple_cnn import DATASET_CONFIGS, build_simple_cnn, bundled_weights

    if variant != "keras":
        raise ValueError(f"--variant {variant}: simple_cnn has only the keras variant")
    if weights in BUNDLED:
        config = DATASET_CONFIGS[weights]
        model = models.build("simple_cnn", weights=bundled_weights(weights), dtype=dtype.name, **config)
        names = list(shapes.CLASS_NAMES) if weights == "shapes" else [str(d) for d in range(10)]
        return LoadedModel(model, "simple_cnn", "keras", config["input_shape"], names, dtype, (0.0, 1.0), weights)
    if weights == "random":
        config = DATASET_CONFIGS["shapes"]
        model = models.build("simple_cnn", weights="random", dtype=dtype.name, **config)
        return LoadedModel(model, "simple_cnn", "keras", config["input_shape"], _imagenet_or_generic(config["num_classes"]), dtype)
    _check_weights_file(weights)
    config = _simple_cnn_config(weights)
    model = build_simple_cnn(init=ParamInit("shape", dtype=dtype), **config)
    weights_import.load(weights, model)
    return LoadedModel(model, "simple_cnn", "keras", tuple(config["input_shape"]), _imagenet_or_generic(config["num_classes"]), dtype)


def _imagenet_or_generic(num_classes: int) -> list[str]:
    if num_classes == 1000:
        from ..data import imagenet_classes

        return imagenet_classes()
    return [f"class {i}" for i in range(num_classes)]


def _imagenet_bounds(variant: str):
    from .. import preprocess

    if variant == "keras":
        mean = np.asarray(preprocess.CAFFE_MEAN_BGR)
        return -mean, 255.0 - mean
    mean, std = np.asarray(preprocess.TORCHVISION_MEAN), np.asarray(preprocess.TORCHVISION_STD)
    return -mean / std, (1.0 - mean) / std


# ---------------------------------------------------------------------------
# output helpers
# ---------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def top_k_lines(logits: np.ndarray, class_names, k: int = 5) -> list[str]:
    """``rank. probability  logit  name (index)`` for the ``k`` largest logits of one sample."""
    probs = softmax(logits.astype(np.float64))
    order = np.argsort(-logits, kind="stable")[:k]
    return [f"  {rank}. p={probs[i]:.4f}  logit={logits[i]:+.4g}  {class_names[i]} ({i})" for rank, i in enumerate(order, start=1)]


def enlarge(image: np.ndarray, min_side: int = MIN_PNG_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement by the smallest integer factor giving a side of at least ``min_side``."""
    factor = max(1, -(-min_side // min(image.shape[:2])))
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def unique_stems(paths) -> list[str]:
    """File stems for outputs; prefixed with the image's position when two images share a stem."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    width = len(str(len(stems) - 1))
    return [f"{i:0{width}d}_{stem}" for i, stem in enumerate(stems)]


def progress(items, desc: str):
    """A tqdm progress bar on stderr over several items (plain iteration for one item or without tqdm)."""
    items = list(items)
    if len(items) < 2:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    import sys

    return tqdm(items, desc=desc, unit="image", file=sys.stderr)


# ---------------------------------------------------------------------------
# the ledger as text (trace, demo)
# ---------------------------------------------------------------------------


def ledger_rows(result, sample: int = 0) -> list[tuple]:
    """``(layer, kind, rule, output shape, sum(Rt), law rhs, scale, |R| out, |R| in)`` per ledger record."""
    rows = []
    for record in result.ledger:
        shape = result.layers[record.name].shape[1:] if result.layers and record.name in result.layers else ()
        rows.append((
            "  " * len(record.path) + record.name, record.kind, record.rule, "x".join(map(str, shape)),
            float(record.sum_contributions[sample]), float(record.law_rhs[sample]), float(record.scale[sample]),
            float(record.l1_out[sample]), float(record.l1_in[sample]),
        ))
    return rows


def format_table(rows) -> str:
    header = ("layer", "kind", "rule", "output shape", "sum(Rt)", "law rhs", "scale", "|R|_1 out", "|R|_1 in")
    widths = [max([len(header[k])] + [len(r[k]) for r in rows]) for k in range(4)]
    line = (f"{{:<{widths[0]}}}  {{:<{widths[1]}}}  {{:<{widths[2]}}}  {{:>{widths[3]}}}"
            "  {:>11}  {:>11}  {:>10}  {:>10}  {:>10}")
    out = [line.format(*header), "-" * (sum(widths) + 2 * 8 + 11 * 2 + 10 * 3)]
    for name, kind, rule, shape, s, law, scale, l1_out, l1_in in rows:
        out.append(line.format(name, kind, rule, shape, f"{s:.5g}", f"{law:.5g}", f"{scale:.4g}", f"{l1_out:.5g}", f"{l1_in:.5g}"))
    return "\n".join(out)


def conservation_summary(result, sample: int = 0) -> str:
    """One line on L3: the largest relative gap between ``|R|_1`` at top-level boundaries and ``|f_c(x)|``."""
    if result.target is None:
        return ""
    logit = float(result.logits[sample, int(result.target[sample])])
    top = [r for r in result.ledger if not r.path]
    # a residual split hands R_s and R_F down separately; their masses meet again at the block's merge row
    masses = np.array([r.l1_out[sample] for r in top] + [r.l1_in[sample] for r in top if r.kind != "residual_split"], dtype=np.float64)
    if not len(masses) or logit == 0:
        return ""
    gap = float(np.max(np.abs(masses - abs(logit)))) / abs(logit)
    absorbed = any(bool(r.absorbed[sample]) for r in top)
    if result.method == "rlrp":
        verdict = "holds" if gap < 1e-4 or absorbed else "VIOLATED"
        return (f"conservation up to scale (L3): |R|_1 = |f_c(x)| = {abs(logit):.6g} at every top-level step ({len(top)} ledger rows), "
                f"largest relative gap {gap:.2e} ({verdict})" + ("; relevance absorbed at a layer" if absorbed else ""))
    final = float(top[-1].l1_in[sample]) if top else float("nan")
    return (f"{result.method}: |R|_1 goes from |f_c(x)| = {abs(logit):.6g} to {final:.6g} at the input "
            f"(largest relative gap {gap:.2e}); R-LRP keeps it equal at every layer")
