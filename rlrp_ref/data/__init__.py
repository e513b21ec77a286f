"""Datasets and label lists bundled with rlrp-ref; nothing is downloaded.

- :mod:`rlrp_ref.data.shapes`: synthetic four-class shapes with ground-truth
  masks, generated on the fly (``shapes.generate``, ``shapes.load_split``).
- :mod:`rlrp_ref.data.digits`: the UCI 8 x 8 handwritten digits, bundled as
  ``digits.npz`` (attribution and licence in ``DIGITS_LICENSE.md``).
- :func:`imagenet_classes`: the 1000 ImageNet-1k class names in index order,
  as torchvision lists them (``torchvision.models._meta._IMAGENET_CATEGORIES``),
  bundled as ``imagenet_classes.txt``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from . import digits, shapes

__all__ = ["digits", "shapes", "imagenet_classes"]


@lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    text = resources.files(__name__).joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(text.splitlines())
    if len(names) != 1000:
        raise RuntimeError(
            f"bundled imagenet_classes.txt has {len(names)} lines, expected 1000"
        )
    return names


def imagenet_classes() -> list[str]:
    """ImageNet-1k class names; index ``i`` is the name of logit ``i``.

    ``imagenet_classes()[0] == "tench"``, ``imagenet_classes()[999] == "toilet tissue"``.
    Returns a fresh list, so callers may modify it.
    """
    return list(_imagenet_classes())
