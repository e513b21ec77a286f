"""Image loading and the Keras / torchvision input pipelines."""

import numpy as np
import pytest

from rlrp_ref import preprocess


def _photo(height=40, width=60, seed=0):
    """A smooth colour image with some texture, uint8 RGB."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    channels = [
        128 + 100 * np.sin(x / 7.0 + k) * np.cos(y / 5.0 - k) + rng.normal(0, 10, (height, width))
        for k in range(3)
    ]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- normalizations (NumPy only)


def test_keras_caffe_against_hand_computation():
    img = _photo(5, 4)
    out = preprocess.keras_caffe(img)
    assert out.dtype == np.float32 and out.shape == (5, 4, 3)
    r, g, b = (img[..., k].astype(np.float64) for k in range(3))
    np.testing.assert_allclose(out[..., 0], b - 103.939, rtol=0, atol=1e-4)
    np.testing.assert_allclose(out[..., 1], g - 116.779, rtol=0, atol=1e-4)
    np.testing.assert_allclose(out[..., 2], r - 123.68, rtol=0, atol=1e-4)
    # no scaling: a pure-red pixel keeps its 255
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(preprocess.keras_caffe(red, dtype=np.float64)[0, 0], [-103.939, -116.779, 255 - 123.68])


def test_torchvision_normalize_against_hand_computation():
    img = _photo(3, 3)
    out = preprocess.torchvision_normalize(img, dtype=np.float64)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for k in range(3):
        np.testing.assert_allclose(out[..., k], (img[..., k] / 255.0 - mean[k]) / std[k], rtol=1e-12)
    assert preprocess.torchvision_normalize(img).dtype == np.float32


def test_normalizations_need_rgb_last_axis():
    with pytest.raises(ValueError, match="RGB"):
        preprocess.keras_caffe(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="RGB"):
        preprocess.torchvision_normalize(np.zeros((3, 4, 4)))


# ---------------------------------------------------------------- Pillow parts

@pytest.fixture
def Image():
    return pytest.importorskip("PIL.Image", reason="needs Pillow (rlrp-ref[viz] extra)")


def test_missing_pillow_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)
    with pytest.raises(ImportError, match=r"rlrp-ref\[viz\]"):
        preprocess.load_image(tmp_path / "any.png")


def test_png_round_trip(tmp_path, Image):
    img = _photo()
    path = tmp_path / "photo.png"
    Image.fromarray(img).save(path)
    loaded = preprocess.load_image(path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, img)
    np.testing.assert_array_equal(preprocess.load_image(str(path)), img)


def test_load_image_converts_grey_and_rgba(tmp_path, Image):
    grey = _photo()[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    loaded = preprocess.load_image(tmp_path / "grey.png")
    assert loaded.shape == grey.shape + (3,)
    np.testing.assert_array_equal(loaded, np.repeat(grey[..., None], 3, -1))
    rgba = np.concatenate([_photo(), np.full((40, 60, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(preprocess.load_image(tmp_path / "rgba.png"), rgba[..., :3])


def test_load_image_missing_file_is_named(tmp_path, Image):
    path = tmp_path / "nowhere.jpg"
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        preprocess.load_image(path)
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        preprocess.prepare(path)


def test_load_image_unreadable_file_is_named(tmp_path, Image):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image")
    with pytest.raises(ValueError, match="notes.png"):
        preprocess.load_image(path)
    with pytest.raises(ValueError, match="directory"):
        preprocess.load_image(tmp_path)


@pytest.mark.parametrize("shape, new", [((40, 60), (256, 384)), ((60, 40), (384, 256)), ((50, 50), (256, 256))])
def test_resize_center_crop_geometry(shape, new, Image):
    img = _photo(*shape)
    out = preprocess.resize_center_crop(img, size=224, resize=256)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # the same as resizing by hand and cutting the centre
    resized = np.asarray(Image.fromarray(img).resize(new[::-1], Image.Resampling.BILINEAR))
    top, left = round((new[0] - 224) / 2), round((new[1] - 224) / 2)
    np.testing.assert_array_equal(out, resized[top : top + 224, left : left + 224])


def test_resize_center_crop_keeps_a_constant_image_constant(Image):
    img = np.full((30, 70, 3), (10, 200, 90), np.uint8)
    out = preprocess.resize_center_crop(img, size=16, resize=20)
    assert out.shape == (16, 16, 3)
    assert np.all(out == (10, 200, 90))
    with pytest.raises(ValueError, match="resize"):
        preprocess.resize_center_crop(img, size=32, resize=20)


def test_prepare_keras_variant(tmp_path, Image):
    img = _photo()
    path = tmp_path / "photo.png"
    Image.fromarray(img).save(path)
    x = preprocess.prepare(path, variant="keras")
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    resized = np.asarray(Image.fromarray(img).resize((224, 224), Image.Resampling.NEAREST))
    expected = resized[..., ::-1].astype(np.float32) - np.float32([103.939, 116.779, 123.68])
    np.testing.assert_array_equal(x[0], expected)
    np.testing.assert_array_equal(preprocess.prepare(img, variant="keras"), x)
    bilinear = preprocess.prepare(img, variant="keras", resample="bilinear")
    assert not np.array_equal(bilinear, x)


def test_prepare_torchvision_variant(Image):
    img = _photo(48, 64)
    x = preprocess.prepare(img, variant="torchvision", size=32, dtype=np.float64)
    assert x.shape == (1, 32, 32, 3) and x.dtype == np.float64
    cropped = preprocess.resize_center_crop(img, size=32, resize=37)  # round(32 * 8 / 7)
    np.testing.assert_allclose(x[0], preprocess.torchvision_normalize(cropped, dtype=np.float64))
    assert preprocess.prepare(img, variant="torchvision").shape == (1, 224, 224, 3)


def test_prepare_argument_errors():
    img = _photo()
    with pytest.raises(ValueError, match="variant"):
        preprocess.prepare(img, variant="caffe")
    with pytest.raises(ValueError, match="uint8"):
        preprocess.prepare(img.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocess.prepare(img[..., 0])
    with pytest.raises(ValueError, match="resample"):
        preprocess.prepare(img, resample="bicubic")
    with pytest.raises(ValueError, match="resize"):
        preprocess.prepare(img, variant="keras", resize=256)
