"""Bundled and synthetic datasets: determinism, shapes, ground truth, splits."""

import numpy as np
import pytest

from rlrp_ref.data import digits, imagenet_classes, shapes


# ---------------------------------------------------------------- shapes


def test_shapes_output_types_and_ranges():
    images, labels, masks = shapes.generate(64, seed=3)
    assert images.shape == (64, 32, 32, 1) and images.dtype == np.float32
    assert labels.shape == (64,) and labels.dtype == np.int64
    assert masks.shape == (64, 32, 32) and masks.dtype == bool
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(labels)) <= set(range(shapes.NUM_CLASSES))
    assert len(shapes.CLASS_NAMES) == shapes.NUM_CLASSES == 4


def test_shapes_same_seed_same_output_other_seed_differs():
    first = shapes.generate(50, seed=7)
    second = shapes.generate(50, seed=7)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other = shapes.generate(50, seed=8)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[2], other[2])


def test_shapes_smaller_n_is_prefix_across_chunks():
    n_big = shapes._CHUNK + 37  # crosses a chunk boundary
    big = shapes.generate(n_big, seed=11)
    small = shapes.generate(shapes._CHUNK + 5, seed=11)
    for a, b in zip(big, small):
        np.testing.assert_array_equal(a[: len(b)], b)


def test_shapes_class_balance():
    _, labels, _ = shapes.generate(403, seed=0)
    counts = np.bincount(labels, minlength=4)
    assert counts.sum() == 403
    assert counts.max() - counts.min() <= 1


def test_shapes_mask_pixels_are_brighter_than_background():
    images, _, masks = shapes.generate(200, seed=5)
    pixels = images[..., 0]
    fg = np.where(masks, pixels, 0).sum((1, 2)) / masks.sum((1, 2))
    bg = np.where(~masks, pixels, 0).sum((1, 2)) / (~masks).sum((1, 2))
    assert np.all(fg > bg + 0.3)


def test_shapes_noise_free_image_is_the_mask_levels():
    images, _, masks = shapes.generate(40, seed=2, noise=0.0, dtype=np.float64)
    pixels = images[..., 0]
    for i in range(len(pixels)):  # two levels only: background inside [0, .2], shape inside [.7, 1]
        assert np.unique(pixels[i][masks[i]]).size == 1
        assert np.unique(pixels[i][~masks[i]]).size == 1
    assert np.all(pixels[masks] >= 0.7) and np.all(pixels[~masks] <= 0.2)


def test_shapes_masks_are_sized_and_inside_the_image():
    _, labels, masks = shapes.generate(400, seed=9)
    area = masks.sum((1, 2))
    assert area.min() >= 20  # smallest triangle at r = 5 still has some 30 pixels
    border = masks[:, 0, :] | masks[:, -1, :] | masks[:, :, 0] | masks[:, :, -1]
    assert not border.any()


def _oracle_mask(label, cy, cx, r, size=32):
    """Per-pixel loop oracle of the class geometry, independent of the vectorized code."""
    mask = np.zeros((size, size), bool)
    h, t = r * np.sqrt(np.pi) / 2, 0.3 * r
    for y in range(size):
        for x in range(size):
            dy, dx = y - cy, x - cx
            if label == 0:
                mask[y, x] = abs(dx) <= h and abs(dy) <= h
            elif label == 1:
                mask[y, x] = dx * dx + dy * dy <= r * r
            elif label == 2:  # apex up: below the two slanted edges, above the base
                mask[y, x] = (
                    dy <= r / 2
                    and -np.sqrt(3) / 2 * dx - dy / 2 <= r / 2
                    and np.sqrt(3) / 2 * dx - dy / 2 <= r / 2
                )
            else:
                mask[y, x] = (abs(dx) <= t and abs(dy) <= r) or (abs(dy) <= t and abs(dx) <= r)
    return mask


@pytest.mark.parametrize("label", range(4))
def test_inside_tests_match_pixel_loop_oracle(label):
    cy, cx, r = 15.3, 16.7, 9.2
    grid = np.arange(32.0)
    dy, dx = np.broadcast_arrays(grid[None, :, None] - cy, grid[None, None, :] - cx)
    inside = shapes._inside_masks(dy, dx, np.array(r).reshape(1, 1, 1))
    np.testing.assert_array_equal(inside[label, 0], _oracle_mask(label, cy, cx, r))


def test_shape_classes_are_geometrically_distinct():
    """Same centre and size: no two classes give the same mask."""
    grid = np.arange(32.0)
    dy, dx = np.broadcast_arrays(grid[None, :, None] - 16.0, grid[None, None, :] - 16.0)
    inside = shapes._inside_masks(dy, dx, np.array(8.0).reshape(1, 1, 1))[:, 0]
    for a in range(4):
        for b in range(a + 1, 4):
            assert (inside[a] != inside[b]).sum() >= 20


def test_shapes_other_size_and_dtype():
    images, _, masks = shapes.generate(8, seed=0, size=48, dtype=np.float64)
    assert images.shape == (8, 48, 48, 1) and images.dtype == np.float64
    assert masks.shape == (8, 48, 48)


@pytest.mark.parametrize(
    "kwargs",
    [dict(n=-1), dict(n=4, size=8), dict(n=4, noise=-0.1), dict(n=4, noise=np.nan), dict(n=4, dtype=np.int32)],
)
def test_shapes_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        shapes.generate(**kwargs)


def test_shapes_empty():
    images, labels, masks = shapes.generate(0)
    assert images.shape == (0, 32, 32, 1) and labels.shape == (0,) and masks.shape == (0, 32, 32)


def test_shapes_splits_fixed_and_distinct():
    train = shapes.load_split("train", n=100)
    test = shapes.load_split("test", n=100)
    assert shapes.TRAIN_SEED != shapes.TEST_SEED
    assert not np.array_equal(train[0], test[0])
    for a, b in zip(train, shapes.generate(100, seed=shapes.TRAIN_SEED)):
        np.testing.assert_array_equal(a, b)
    images, labels, masks = shapes.load_split("test")
    assert len(images) == len(labels) == len(masks) == shapes.SPLIT_SIZES["test"]
    with pytest.raises(ValueError, match="split"):
        shapes.load_split("validation")


# ---------------------------------------------------------------- digits


def test_digits_bundled_values():
    images, labels = digits._raw()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.uint8
    assert images.min() == 0 and images.max() == 16
    np.testing.assert_array_equal(
        np.bincount(labels), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    )
    # first row of sklearn's digits.csv.gz: a zero
    np.testing.assert_array_equal(
        images[0],
        [[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0],
         [0, 3, 15, 2, 0, 11, 8, 0], [0, 4, 12, 0, 0, 8, 8, 0],
         [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0],
         [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]],
    )
    assert labels[0] == 0
    assert int(images.astype(np.int64).sum()) == 561718


def test_digits_load_all_scaled():
    x, y = digits.load()
    raw, raw_labels = digits._raw()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x[..., 0] * 16, raw)
    np.testing.assert_array_equal(y, raw_labels)
    x64, _ = digits.load(dtype=np.float64)
    assert x64.dtype == np.float64


def test_digits_split_is_fixed_disjoint_complete_and_stratified():
    index = digits.split_indices()
    train, test = index["train"], index["test"]
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    _, labels = digits._raw()
    per_class = np.bincount(labels)
    np.testing.assert_array_equal(np.bincount(labels[test], minlength=10), np.round(0.25 * per_class))
    assert 440 <= test.size <= 460

    x_train, y_train = digits.load_split("train")
    x_test, y_test = digits.load_split("test")
    assert len(x_train) == len(y_train) == train.size
    assert len(x_test) == len(y_test) == test.size
    x_all, y_all = digits.load()
    np.testing.assert_array_equal(x_test, x_all[test])
    np.testing.assert_array_equal(y_train, y_all[train])
    # the cached split cannot be changed by a caller
    with pytest.raises(ValueError):
        train[0] = 5


def test_digits_bad_split():
    with pytest.raises(ValueError, match="split"):
        digits.load("val")
    with pytest.raises(ValueError, match="split"):
        digits.load_split(None)


# ---------------------------------------------------------------- ImageNet names


def test_imagenet_classes():
    names = imagenet_classes()
    assert len(names) == 1000
    assert names[0] == "tench" and names[999] == "toilet tissue"
    assert names[1] == "goldfish"
    assert len(set(names)) >= 998  # torchvision's list disambiguates duplicate WordNet names
    assert all(name and name == name.strip() for name in names)
    names[0] = "changed"
    assert imagenet_classes()[0] == "tench"  # each call returns a fresh list
