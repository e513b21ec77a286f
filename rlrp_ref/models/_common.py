"""Argument checks the builders share."""

from __future__ import annotations


def check_input_shape(name: str, input_shape, min_size: int = 32) -> tuple[int, int, int]:
    """``(H, W, C)`` as ints, each spatial side at least ``min_size`` (as Keras applications require)."""
    try:
        h, w, c = (int(n) for n in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: input_shape expected (height, width, channels), found {input_shape!r}") from None
    if h < min_size or w < min_size or c < 1:
        raise ValueError(f"{name}: input_shape expected height and width >= {min_size} and channels >= 1, found {input_shape!r}")
    return h, w, c


def check_num_classes(name: str, num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{name}: num_classes expected a positive int, found {num_classes!r}")
    return num_classes


def check_variant(name: str, variant, variants) -> str:
    if variant not in variants:
        raise ValueError(f"{name}: variant expected one of {tuple(variants)}, found {variant!r}")
    return variant
