"""Image loading and the two ImageNet input pipelines (Keras and torchvision).

Everything is NumPy except decoding and resizing, which use Pillow (optional
``rlrp-ref[viz]`` extra, imported only when needed). Outputs are NHWC.

Two pipelines, matching the weights a model was trained with:

- ``"keras"`` (VGG16, VGG19, ResNet50 from ``keras.applications``): resize
  straight to ``size x size`` without keeping the aspect ratio, as the Keras
  application examples do with ``keras.utils.load_img(path,
  target_size=(224, 224))`` (whose default resampling is nearest neighbour),
  then :func:`keras_caffe`.
- ``"torchvision"``: resize the shorter side to ``resize`` (256 for 224) with
  Pillow bilinear, centre-crop ``size x size``, then
  :func:`torchvision_normalize`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "CAFFE_MEAN_BGR",
    "MAX_PIXELS",
    "TORCHVISION_MEAN",
    "TORCHVISION_STD",
    "load_image",
    "resize_image",
    "resize_center_crop",
    "keras_caffe",
    "torchvision_normalize",
    "prepare",
]

#: Keras "caffe" mode channel means, in BGR order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: torchvision ImageNet normalization, RGB order, for inputs scaled to [0, 1].
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)

_DEFAULT_RESAMPLE = {"keras": "nearest", "torchvision": "bilinear"}


def _pil():
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(
            "image loading and resizing need Pillow, which is part of the optional "
            "viz extra: pip install 'rlrp-ref[viz]'"
        ) from err
    return Image


_RESAMPLE_NAMES = ("nearest", "bilinear")


def _check_resample(name: str) -> str:
    if name not in _RESAMPLE_NAMES:
        raise ValueError(f"resample must be one of {_RESAMPLE_NAMES}, got {name!r}")
    return name


def _resample_filter(name: str):
    Image = _pil()
    filters = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}
    return filters[_check_resample(name)]


def _check_rgb_uint8(img, what: str = "image") -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(
            f"{what} must be a uint8 RGB array of shape (H, W, 3); "
            f"got dtype {img.dtype}, shape {img.shape}"
        )
    return img


#: Largest image :func:`load_image` decodes by default, in pixels (width x height): 40 megapixels,
#: about 120 MB as uint8 RGB. Larger files are refused before decoding; pass ``max_pixels``
#: (``--max-pixels`` on the command line) to allow more.
MAX_PIXELS = 40_000_000


def _pixel_count(message: str) -> str:
    """The pixel count Pillow names in a decompression-bomb message (``"Image size (N pixels) exceeds ..."``)."""
    import re

    found = re.search(r"\((\d+) pixels\)", message)
    return f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow allows"


def load_image(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 RGB ``(H, W, 3)``.

    Grey, palette and CMYK images are converted to RGB; an alpha channel is
    dropped. Raises ``FileNotFoundError`` if ``path`` does not exist and
    ``ValueError`` if it is not a file Pillow can decode, or if it declares
    more than ``max_pixels`` pixels (default :data:`MAX_PIXELS`; checked from
    the header, before anything is decoded); all name the file.
    """
    import warnings

    Image = _pil()
    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if not path.is_file():
        raise ValueError(f"not an image file (it is a directory or special file): {path}")
    max_pixels = int(max_pixels)
    if max_pixels < 1:
        raise ValueError(f"max_pixels expected a positive pixel count, found {max_pixels}")
    too_large = "{path}: expected an image of at most {limit:,} pixels, found {found} (raise the limit with --max-pixels, or max_pixels= in Python)"
    # Pillow's own bomb check runs inside Image.open at MAX_IMAGE_PIXELS (error at twice that); a caller who
    # raises max_pixels above it has asked for those images, so Pillow's limit follows for this one call.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    raise_pillow = pillow_limit is not None and max_pixels > pillow_limit
    found = None
    try:
        with warnings.catch_warnings():
            # the size check below decides; Pillow's warning would only add lines to stderr
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if raise_pillow:
                Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                with Image.open(path) as pil:
                    width, height = pil.size
                    if width * height > max_pixels:
                        found = f"{width}x{height} = {width * height:,} pixels"
                    else:
                        rgb = pil.convert("RGB")
            finally:
                if raise_pillow:
                    Image.MAX_IMAGE_PIXELS = pillow_limit
    except Image.DecompressionBombError as err:
        found = _pixel_count(str(err))
    except MemoryError:
        raise ValueError(f"cannot read {path} as an image: not enough memory to decode it") from None
    except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many types on a damaged file (OSError, SyntaxError, struct.error, EOFError, ...)
        raise ValueError(f"cannot read {path} as an image: {type(err).__name__}: {' '.join(str(err).split())[:200]}") from None
    if found is not None:
        raise ValueError(too_large.format(path=path, limit=max_pixels, found=found))
    return np.array(rgb, dtype=np.uint8)


def resize_image(img, height: int, width: int, resample: str = "bilinear") -> np.ndarray:
    """Resize a uint8 RGB image to ``(height, width)`` with Pillow (``"bilinear"`` or ``"nearest"``).

    Pillow's bilinear filter widens its support when shrinking (antialiasing),
    as torchvision's ``Resize`` does on PIL images.
    """
    img = _check_rgb_uint8(img)
    Image = _pil()
    pil = Image.fromarray(np.ascontiguousarray(img))
    return np.array(pil.resize((int(width), int(height)), _resample_filter(resample)), dtype=np.uint8)


def resize_center_crop(img, size: int = 224, resize: int = 256, resample: str = "bilinear") -> np.ndarray:
    """torchvision ``Resize(resize)`` then ``CenterCrop(size)``, on a uint8 RGB array.

    Resize: the shorter side becomes ``resize`` and the longer one
    ``int(resize * long / short)`` (truncated, as torchvision computes it).
    Crop: top ``= int(round((H' - size) / 2))``, left ``= int(round((W' - size) / 2))``.
    Returns uint8 ``(size, size, 3)``.
    """
    img = _check_rgb_uint8(img)
    if resize < size:
        raise ValueError(f"resize ({resize}) must be >= the crop size ({size})")
    h, w = img.shape[:2]
    if h <= w:
        new_h, new_w = resize, int(resize * w / h)
    else:
        new_h, new_w = int(resize * h / w), resize
    resized = resize_image(img, new_h, new_w, resample)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return resized[top : top + size, left : left + size]


def keras_caffe(x, dtype=np.float32) -> np.ndarray:
    """Keras ``preprocess_input(x, mode="caffe")`` for channels-last RGB in ``0..255``.

    ``y[..., k] = x[..., 2 - k] - mean_bgr[k]`` with
    ``mean_bgr = (103.939, 116.779, 123.68)``: RGB becomes BGR, each channel
    loses its ImageNet mean, and nothing is scaled. Computed in ``dtype``.
    """
    x = np.asarray(x)
    if x.shape[-1:] != (3,):
        raise ValueError(f"expected RGB in the last axis (..., 3); got shape {x.shape}")
    dtype = np.dtype(dtype)
    return x.astype(dtype)[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, dtype=dtype)


def torchvision_normalize(x, dtype=np.float32) -> np.ndarray:
    """torchvision ``ToTensor`` + ``Normalize`` for channels-last RGB in ``0..255``.

    ``y[..., k] = (x[..., k] / 255 - mean[k]) / std[k]`` with
    ``mean = (0.485, 0.456, 0.406)``, ``std = (0.229, 0.224, 0.225)``.
    Computed in ``dtype``.
    """
    x = np.asarray(x)
    if x.shape[-1:] != (3,):
        raise ValueError(f"expected RGB in the last axis (..., 3); got shape {x.shape}")
    dtype = np.dtype(dtype)
    scaled = x.astype(dtype) / dtype.type(255)
    mean = np.asarray(TORCHVISION_MEAN, dtype=dtype)
    std = np.asarray(TORCHVISION_STD, dtype=dtype)
    return (scaled - mean) / std


def prepare(
    path_or_array,
    variant: str = "keras",
    size: int = 224,
    dtype=np.float32,
    resize: int | None = None,
    resample: str | None = None,
) -> np.ndarray:
    """Load (if a path) and preprocess one image into a model input ``(1, size, size, 3)``.

    - ``variant="keras"``: :func:`resize_image` to ``size x size`` (no crop, aspect
      ratio not kept; nearest neighbour by default, like ``keras.utils.load_img``),
      then :func:`keras_caffe` (BGR, mean-subtracted, 0..255 scale).
    - ``variant="torchvision"``: :func:`resize_center_crop` with
      ``resize = round(size * 8 / 7)`` (256 for 224) unless given, Pillow
      bilinear by default, then :func:`torchvision_normalize`.

    ``path_or_array`` is a file path or a uint8 RGB array ``(H, W, 3)``.
    ``resample`` (``"nearest"`` or ``"bilinear"``) overrides the variant's default.
    """
    if variant not in _DEFAULT_RESAMPLE:
        raise ValueError(f"variant must be 'keras' or 'torchvision', got {variant!r}")
    if variant == "keras" and resize is not None:
        raise ValueError("the keras variant resizes straight to size; do not pass resize")
    resample = _check_resample(resample or _DEFAULT_RESAMPLE[variant])
    if isinstance(path_or_array, (str, os.PathLike)):
        img = load_image(path_or_array)
    else:
        img = _check_rgb_uint8(path_or_array, "input array")
    if variant == "keras":
        x = keras_caffe(resize_image(img, size, size, resample), dtype=dtype)
    else:
        if resize is None:
            resize = int(round(size * 8 / 7))
        x = torchvision_normalize(resize_center_crop(img, size, resize, resample), dtype=dtype)
    return x[None]
