"""Relevance maps to colour images and PNG files.

:func:`render` and :func:`overlay` return uint8 RGB arrays; :func:`save_png`
writes one; :func:`grid` / :func:`save_grid` compose a labelled figure (rows =
samples, columns = the input and one heatmap per method).

``render`` needs matplotlib (for its colormaps), the PNG and grid helpers need
Pillow and matplotlib: both belong to the optional ``rlrp-ref[viz]`` extra and
are imported only when these functions run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["REDUCTIONS", "reduce_channels", "render", "overlay", "save_png", "grid", "save_grid"]

REDUCTIONS = ("sum", "abs_sum", "max_abs")


def _require(module: str, purpose: str):
    """Import an optional ``viz`` dependency, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = {"PIL": "Pillow"}.get(module.split(".")[0], module.split(".")[0])
        raise ImportError(
            f"{purpose} needs {package}, which is part of the optional viz extra: "
            f"pip install 'rlrp-ref[viz]'"
        ) from err


def _check_finite(values: np.ndarray, what: str) -> None:
    if np.all(np.isfinite(values)):
        return
    n_nan = int(np.count_nonzero(np.isnan(values)))
    n_pos = int(np.count_nonzero(np.isposinf(values)))
    n_neg = int(np.count_nonzero(np.isneginf(values)))
    found = ", ".join(
        f"{count} {name}"
        for count, name in ((n_nan, "NaN"), (n_pos, "+inf"), (n_neg, "-inf"))
        if count
    )
    raise ValueError(f"{what} must be finite; found {found} of {values.size} values")


def reduce_channels(relevance, reduce: str = "sum") -> np.ndarray:
    """Reduce relevance of shape ``(H, W)``, ``(H, W, C)`` or ``(1, H, W, C)`` to ``(H, W)``.

    With ``R_c`` the relevance of channel ``c`` at a pixel:

    - ``"sum"``: ``R = sum_c R_c``. Keeps conservation: the map's total equals the
      total input relevance, and signs can cancel across channels.
    - ``"abs_sum"``: ``R = sum_c |R_c|``. Non-negative: where relevance is, not
      its sign.
    - ``"max_abs"``: ``R = R_k`` with ``k = argmax_c |R_c|`` (first on ties):
      the dominant channel, sign kept.

    The result is float64.
    """
    values = np.asarray(relevance, dtype=np.float64)
    if values.ndim == 4:
        if values.shape[0] != 1:
            raise ValueError(
                f"relevance of shape {values.shape} holds {values.shape[0]} samples; "
                "render one sample at a time, e.g. relevance[i]"
            )
        values = values[0]
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3:
        raise ValueError(
            f"relevance must have shape (H, W), (H, W, C) or (1, H, W, C); got {values.shape}"
        )
    _check_finite(values, "relevance")
    if reduce == "sum":
        return values.sum(axis=-1)
    if reduce == "abs_sum":
        return np.abs(values).sum(axis=-1)
    if reduce == "max_abs":
        k = np.argmax(np.abs(values), axis=-1)
        return np.take_along_axis(values, k[..., None], axis=-1)[..., 0]
    raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")


def render(relevance, cmap: str = "bwr", symmetric: bool = True, reduce: str = "sum") -> np.ndarray:
    """Colour a relevance map: uint8 RGB ``(H, W, 3)``.

    The map ``R`` (see :func:`reduce_channels` for ``reduce``) is scaled to
    ``t`` in ``[0, 1]`` and looked up in the matplotlib colormap ``cmap``:

    - ``symmetric=True``: ``t = (1 + R / max|R|) / 2``. Zero goes to the colormap
      centre (white for ``bwr`` and ``seismic``), ``+max|R|`` to its top (red)
      and ``-max|R|`` to its bottom (blue); positive and negative relevance share
      one scale.
    - ``symmetric=False``: ``t = (R - min R) / (max R - min R)``, the full range
      of the colormap over the map's own range.

    A constant map (all zeros in particular) renders as the centre colour,
    ``t = 1/2``, never NaN. Non-finite relevance raises ``ValueError``.
    """
    values = reduce_channels(relevance, reduce)
    if symmetric:
        scale = np.max(np.abs(values)) if values.size else 0.0
        t = 0.5 * (1.0 + values / scale) if scale > 0 else np.full_like(values, 0.5)
    else:
        low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
        t = (values - low) / (high - low) if high > low else np.full_like(values, 0.5)
    matplotlib = _require("matplotlib", "heatmap.render")
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown matplotlib colormap {cmap!r}") from None
    rgba = colormap(np.clip(t, 0.0, 1.0))
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def _as_rgb_uint8(image, what: str) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8 -> ``(H, W, 3)`` uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"{what} must have shape (H, W), (H, W, 1) or (H, W, 3); got {image.shape}")
    return np.broadcast_to(image, image.shape[:2] + (3,))


def overlay(image_uint8_rgb, heat_rgb, alpha: float = 0.5) -> np.ndarray:
    """Blend a heatmap over an image: ``round((1 - alpha) * image + alpha * heat)``.

    Both are uint8 of the same height and width; a grey image ``(H, W)`` or
    ``(H, W, 1)`` is repeated to RGB. ``alpha`` in ``[0, 1]`` is the heatmap's
    weight. Returns uint8 RGB ``(H, W, 3)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    image = _as_rgb_uint8(image_uint8_rgb, "image")
    heat = _as_rgb_uint8(heat_rgb, "heatmap")
    if image.shape != heat.shape:
        raise ValueError(f"image {image.shape[:2]} and heatmap {heat.shape[:2]} differ in size")
    blend = (1.0 - alpha) * image.astype(np.float64) + alpha * heat.astype(np.float64)
    return np.round(blend).astype(np.uint8)


def save_png(path, rgb_uint8) -> None:
    """Write a uint8 ``(H, W, 3)`` RGB or ``(H, W)`` grey image as PNG (Pillow).

    Missing parent folders are created.
    """
    image = np.asarray(rgb_uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"image must have shape (H, W, 3) or (H, W); got {image.shape}")
    pil = _require("PIL.Image", "heatmap.save_png")
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    pil.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")


def _display_image(image) -> tuple[np.ndarray, str | None]:
    """An input image in ``[0, 1]`` for ``imshow``, and the colormap for grey images.

    uint8 images are divided by 255; float images are min-max scaled per
    image to ``[0, 1]`` (a preprocessed, mean-subtracted input still shows).
    """
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"input image must be (H, W), (H, W, 1) or (H, W, 3); got {image.shape}")
    if image.dtype == np.uint8:
        return image / 255.0, ("gray" if image.ndim == 2 else None)
    image = image.astype(np.float64)
    _check_finite(image, "input image")
    low, high = image.min(), image.max()
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return image, ("gray" if image.ndim == 2 else None)


def grid(
    images,
    heatmaps: Mapping[str, object],
    titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    cmap: str = "bwr",
    reduce: str = "sum",
    cell_inches: float = 2.0,
    dpi: int = 100,
) -> np.ndarray:
    """Compose a labelled grid and return it as uint8 RGB ``(H, W, 3)``.

    Rows are samples, columns are the input followed by one heatmap per method.

    - ``images``: ``n`` inputs, ``(n, H, W)``, ``(n, H, W, 1)`` or ``(n, H, W, 3)``
      (uint8 shown on the 0..255 scale, floats min-max scaled per image).
    - ``heatmaps``: method name -> relevance ``(n, H, W, ...)``; each sample is
      drawn with :func:`render` (``symmetric=True``, its own ``max|R|``).
    - ``titles``: one label per row, e.g. ``"pred tench (logit 14.2)"``, written
      beside the row's input.
    - ``col_titles``: ``1 + len(heatmaps)`` column headings; default
      ``["input", *heatmaps]``.

    The figure is drawn with matplotlib's Agg canvas, chosen explicitly, so no
    display and no global backend setting are involved.
    """
    _require("matplotlib", "heatmap.grid")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images)
    methods = list(heatmaps)
    for method in methods:
        if len(heatmaps[method]) != n:
            raise ValueError(
                f"heatmaps[{method!r}] holds {len(heatmaps[method])} samples, images hold {n}"
            )
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries, expected one per sample ({n})")
    if col_titles is None:
        col_titles = ["input", *methods]
    if len(col_titles) != 1 + len(methods):
        raise ValueError(
            f"col_titles has {len(col_titles)} entries, expected {1 + len(methods)} "
            "(the input and one per method)"
        )
    if n == 0:
        raise ValueError("grid needs at least one sample")

    cols = 1 + len(methods)
    figure = Figure(figsize=(cell_inches * cols, cell_inches * n), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(n, cols, squeeze=False)
    for row in range(n):
        shown, grey = _display_image(images[row])
        axes[row, 0].imshow(shown, cmap=grey, vmin=0.0, vmax=1.0, interpolation="nearest")
        if titles is not None:
            axes[row, 0].set_ylabel(titles[row], fontsize=8)
        for col, method in enumerate(methods, start=1):
            heat = render(heatmaps[method][row], cmap=cmap, symmetric=True, reduce=reduce)
            axes[row, col].imshow(heat, interpolation="nearest")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    for col, heading in enumerate(col_titles):
        axes[0, col].set_title(heading, fontsize=9)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_grid(
    path,
    images,
    heatmaps: Mapping[str, object],
    titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    **options,
) -> None:
    """Write :func:`grid` ``(images, heatmaps, titles, col_titles, **options)`` as a PNG."""
    save_png(path, grid(images, heatmaps, titles, col_titles, **options))
