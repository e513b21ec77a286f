"""Heatmap rendering, overlay and PNG output."""

import numpy as np
import pytest

from rlrp_ref import heatmap


def _matplotlib():
    return pytest.importorskip("matplotlib", reason="needs matplotlib (rlrp-ref[viz] extra)")


@pytest.fixture
def mpl():
    return _matplotlib()


def _centre(cmap="bwr"):
    return np.round(np.asarray(_matplotlib().colormaps[cmap](0.5))[:3] * 255).astype(np.uint8)


# ---------------------------------------------------------------- channel reduction (NumPy only)


def test_reduce_channels_formulas():
    relevance = np.array([[[1.0, -3.0, 0.5], [2.0, 2.0, -2.0]]])  # (1, 2, 3)
    np.testing.assert_allclose(heatmap.reduce_channels(relevance, "sum"), [[-1.5, 2.0]])
    np.testing.assert_allclose(heatmap.reduce_channels(relevance, "abs_sum"), [[4.5, 6.0]])
    # max_abs keeps the sign of the dominant channel; first channel on ties
    np.testing.assert_allclose(heatmap.reduce_channels(relevance, "max_abs"), [[-3.0, 2.0]])


def test_reduce_channels_accepts_the_three_layouts():
    rng = np.random.default_rng(0)
    relevance = rng.normal(size=(5, 6, 3))
    expected = relevance.sum(-1)
    np.testing.assert_allclose(heatmap.reduce_channels(relevance), expected)
    np.testing.assert_allclose(heatmap.reduce_channels(relevance[None]), expected)
    np.testing.assert_allclose(heatmap.reduce_channels(expected), expected)


def test_sum_reduction_conserves_total():
    relevance = np.random.default_rng(1).normal(size=(1, 7, 7, 3))
    assert np.isclose(heatmap.reduce_channels(relevance).sum(), relevance.sum())


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (4,), (1, 2, 3, 4, 5)])
def test_reduce_channels_rejects_other_shapes(shape):
    with pytest.raises(ValueError, match="shape"):
        heatmap.reduce_channels(np.zeros(shape))


def test_reduce_channels_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduce"):
        heatmap.reduce_channels(np.zeros((3, 3)), "mean")


@pytest.mark.parametrize(
    "bad, words", [(np.nan, ["NaN"]), (np.inf, ["+inf"]), (-np.inf, ["-inf"])]
)
def test_non_finite_relevance_is_named(bad, words):
    relevance = np.ones((4, 4))
    relevance[1, 2] = bad
    with pytest.raises(ValueError) as info:
        heatmap.render(relevance)
    for word in words:
        assert word in str(info.value)
    assert "1 " in str(info.value)


# ---------------------------------------------------------------- render


def test_render_zero_map_is_centre_colour_and_white_ish(mpl):
    rgb = heatmap.render(np.zeros((5, 7)))
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    assert np.all(rgb == _centre())
    assert np.all(rgb >= 250)  # bwr's centre is white
    rgb = heatmap.render(np.zeros((5, 7)), symmetric=False)
    assert np.all(rgb == _centre())


def test_render_signs_go_to_red_and_blue(mpl):
    relevance = np.array([[1.0, -1.0, 0.0, 0.25]])
    rgb = heatmap.render(relevance).astype(int)
    red, blue, zero, weak = rgb[0]
    assert tuple(red) == (255, 0, 0)
    assert tuple(blue) == (0, 0, 255)
    assert np.array_equal(zero, _centre())
    # weak positive: red-dominant but paler than the strongest pixel
    assert weak[0] > weak[2] and weak[1] > red[1]


def test_render_symmetric_scaling_uses_max_abs(mpl):
    relevance = np.array([[0.5, -2.0, 0.0]])
    rgb = heatmap.render(relevance, cmap="seismic").astype(int)
    colormap = mpl.colormaps["seismic"]
    expected = np.round(colormap(0.5 * (1 + relevance / 2.0))[..., :3] * 255)
    np.testing.assert_array_equal(rgb, expected)
    # scale invariance: only R / max|R| matters
    np.testing.assert_array_equal(heatmap.render(relevance * 1e-9), heatmap.render(relevance))
    # mirror symmetry of bwr: negating the map swaps red and blue (up to the
    # colormap's 256-entry table)
    ramp = np.linspace(-1.0, 1.0, 41)[None]
    np.testing.assert_allclose(
        heatmap.render(-ramp).astype(int), heatmap.render(ramp)[..., ::-1].astype(int), atol=2
    )
    assert tuple(heatmap.render(-relevance)[0, 1]) == (255, 0, 0)


def test_render_non_symmetric_uses_full_range(mpl):
    relevance = np.array([[1.0, 2.0, 3.0]])
    rgb = heatmap.render(relevance, cmap="gray", symmetric=False)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 128, 255])


def test_render_channel_layouts_agree(mpl):
    relevance = np.random.default_rng(2).normal(size=(6, 5, 3))
    expected = heatmap.render(relevance.sum(-1))
    np.testing.assert_array_equal(heatmap.render(relevance), expected)
    np.testing.assert_array_equal(heatmap.render(relevance[None]), expected)
    abs_rgb = heatmap.render(relevance, reduce="abs_sum")
    assert np.all(abs_rgb[..., 0] >= abs_rgb[..., 2])  # non-negative map: never on the blue side


def test_render_unknown_cmap(mpl):
    with pytest.raises(ValueError, match="colormap"):
        heatmap.render(np.ones((2, 2)), cmap="no-such-map")


def test_missing_viz_extra_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"matplotlib.*rlrp-ref\[viz\]"):
        heatmap.render(np.ones((2, 2)))
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)
    monkeypatch.setitem(__import__("sys").modules, "PIL.Image", None)
    with pytest.raises(ImportError, match=r"Pillow.*rlrp-ref\[viz\]"):
        heatmap.save_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8))


# ---------------------------------------------------------------- overlay (NumPy only)


def test_overlay_formula_and_grey_input():
    image = np.full((2, 3), 100, np.uint8)
    heat = np.zeros((2, 3, 3), np.uint8)
    heat[..., 0] = 200
    out = heatmap.overlay(image, heat, alpha=0.25)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [125, 75, 75])
    np.testing.assert_array_equal(heatmap.overlay(image, heat, alpha=0.0), np.repeat(image[..., None], 3, -1))
    np.testing.assert_array_equal(heatmap.overlay(image, heat, alpha=1.0), heat)


def test_overlay_errors():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="alpha"):
        heatmap.overlay(image, image, alpha=1.5)
    with pytest.raises(ValueError, match="differ"):
        heatmap.overlay(image, np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        heatmap.overlay(image.astype(float), image)


# ---------------------------------------------------------------- PNG and grid (Pillow)


def test_save_png_round_trip(tmp_path, mpl):
    Image = pytest.importorskip("PIL.Image", reason="needs Pillow (rlrp-ref[viz] extra)")
    rgb = heatmap.render(np.random.default_rng(3).normal(size=(9, 11)))
    path = tmp_path / "sub" / "heat.png"
    heatmap.save_png(path, rgb)
    with Image.open(path) as pil:
        assert pil.format == "PNG"
        np.testing.assert_array_equal(np.asarray(pil.convert("RGB")), rgb)
    with pytest.raises(ValueError, match="uint8"):
        heatmap.save_png(tmp_path / "bad.png", rgb.astype(float))


def test_grid_and_save_grid(tmp_path, mpl):
    Image = pytest.importorskip("PIL.Image", reason="needs Pillow (rlrp-ref[viz] extra)")
    rng = np.random.default_rng(4)
    images = rng.random((2, 8, 8, 1))
    heatmaps = {"rlrp": rng.normal(size=(2, 8, 8, 1)), "lrp-eps": rng.normal(size=(2, 8, 8))}
    titles = ["pred square (3.1)", "pred disk (2.4)"]
    rgb = heatmap.grid(images, heatmaps, titles, cell_inches=1.0, dpi=50)
    assert rgb.dtype == np.uint8 and rgb.shape == (100, 150, 3)  # 2 x 3 cells of 50 px
    path = tmp_path / "grid.png"
    heatmap.save_grid(path, images, heatmaps, titles, ["x", "R-LRP", "LRP-eps"], cell_inches=1.0, dpi=50)
    with Image.open(path) as pil:
        assert pil.size == (150, 100)
    # the rendered heatmap colours appear in the figure
    assert np.any(np.all(rgb == heatmap.render(heatmaps["rlrp"][0])[0, 0], axis=-1))


def test_grid_argument_checks(mpl):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="samples"):
        heatmap.grid(images, {"a": np.zeros((3, 4, 4))})
    with pytest.raises(ValueError, match="titles"):
        heatmap.grid(images, {"a": np.zeros((2, 4, 4))}, titles=["one"])
    with pytest.raises(ValueError, match="col_titles"):
        heatmap.grid(images, {"a": np.zeros((2, 4, 4))}, col_titles=["input"])
