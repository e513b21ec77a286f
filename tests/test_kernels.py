"""Every route of the shared kernels against the loop oracles: shifted GEMMs, im2col, 1x1, blocked pooling, gemm."""

import numpy as np
import pytest

import rlrp_ref as rr
from rlrp_ref import kernels
from oracles import conv2d, conv2d_vjp, pool, pool_vjp

TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=1e-4, atol=1e-4)}


@pytest.fixture(params=["gather", "scatter"])
def route(request, monkeypatch):
    """Force the vjp route where both apply (the threshold otherwise picks it by shape)."""
    monkeypatch.setattr(kernels, "GATHER_MIN_PIXELS_PER_FILTER", 0 if request.param == "gather" else 10**9)
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kernel_hw", [(3, 3), (2, 3), (1, 1), (3, 1)])
@pytest.mark.parametrize("padding", ["valid", "same", ((2, 0), (1, 2)), ((3, 0), (0, 1))])
@pytest.mark.parametrize("strides", [1, 2, (1, 2)])
@pytest.mark.parametrize("cin,cout", [(4, 3), (3, 5)])
def test_conv_routes_against_loops(rng, route, dtype, kernel_hw, padding, strides, cin, cout):
    x = rng.standard_normal((3, 6, 7, cin)).astype(dtype)
    k = rng.standard_normal(kernel_hw + (cin, cout)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    layer = rr.Conv2D(k, b, strides=strides, padding=padding)
    s = layer.strides
    y = layer.forward(x)
    want = conv2d(x.astype(np.float64), k.astype(np.float64), b.astype(np.float64), s, padding)
    assert y.shape == want.shape and y.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_allclose(y, want, **TOL[dtype])
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.vjp(x, g)
    assert dx.shape == x.shape and dx.dtype == dtype and dx.flags.c_contiguous
    np.testing.assert_allclose(dx, conv2d_vjp(x, k.astype(np.float64), g.astype(np.float64), s, padding), **TOL[dtype])


def test_gather_route_choice():
    same = ((1, 1), (1, 1))
    # VGG16's 224x224x64 -> 64 layer, batch 1: gather
    assert kernels._gather_route((1, 224, 224, 64), (3, 3, 64, 64), (1, 1), same)
    # more output than input channels, a small map, a stride, a 1x1 kernel, or padding past the kernel: scatter
    assert not kernels._gather_route((1, 112, 112, 128), (3, 3, 64, 128), (1, 1), same)
    assert not kernels._gather_route((1, 14, 14, 512), (3, 3, 512, 512), (1, 1), same)
    assert kernels._gather_route((8, 28, 28, 512), (3, 3, 512, 512), (1, 1), same)
    assert not kernels._gather_route((1, 112, 112, 64), (3, 3, 64, 64), (2, 2), same)
    assert not kernels._gather_route((1, 56, 56, 64), (1, 1, 64, 64), (1, 1), ((0, 0), (0, 0)))
    assert not kernels._gather_route((1, 56, 56, 64), (3, 3, 64, 64), (1, 1), ((3, 0), (0, 0)))


def test_float32_stays_float32(rng, route):
    x = rng.standard_normal((1, 8, 8, 16)).astype(np.float32)
    layer = rr.Conv2D(rng.standard_normal((3, 3, 16, 4)).astype(np.float32), padding="same")
    y = layer.forward(x)
    assert y.dtype == np.float32 and layer.vjp(x, y).dtype == np.float32


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("pool_size", [2, (2, 3), 3])
def test_blocked_pooling_against_loops(rng, mode, pool_size):
    x = rng.standard_normal((2, 6, 6, 3))
    x[0, :2, :3, 0] = 1.5  # ties inside one window
    x[1, 3:, 3:, 2] = 0.0
    layer = (rr.MaxPool2D if mode == "max" else rr.AvgPool2D)(pool_size)
    assert kernels._blocked(x, layer.pool_size, layer.strides, layer.pads(x.shape[1:3])) is not None
    y = layer.forward(x)
    want, _ = pool(x, layer.pool_size, layer.strides, "valid", mode)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.vjp(x, g), pool_vjp(x, g, layer.pool_size, layer.strides, "valid", mode),
                               rtol=1e-12, atol=1e-12)


def test_blocked_winner_matches_windowed_argmax(rng):
    x = np.round(rng.standard_normal((2, 8, 6, 3)))  # many ties
    fast = kernels.maxpool_winner(x, (2, 2), (2, 2), ((0, 0), (0, 0)))
    win = kernels.windows(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(fast, win.reshape(win.shape[:4] + (4,)).argmax(axis=-1))


def test_pad_nhwc_fills_border(rng):
    x = rng.standard_normal((2, 3, 4, 2))
    pads = ((1, 2), (0, 3))
    np.testing.assert_array_equal(kernels.pad_nhwc(x, pads, value=-np.inf),
                                  np.pad(x, ((0, 0), (1, 2), (0, 3), (0, 0)), constant_values=-np.inf))
    assert kernels.pad_nhwc(x, ((0, 0), (0, 0))) is x


@pytest.mark.parametrize("channels_first_below", [0, 100])
@pytest.mark.parametrize("strides", [1, 2])
def test_col2im_both_layouts_against_loops(rng, monkeypatch, channels_first_below, strides):
    monkeypatch.setattr(kernels, "COL2IM_CHANNELS_FIRST_BELOW", channels_first_below)
    monkeypatch.setattr(kernels, "GATHER_MIN_PIXELS_PER_FILTER", 10**9)
    x = rng.standard_normal((2, 7, 6, 9))
    k = rng.standard_normal((3, 2, 9, 4))
    layer = rr.Conv2D(k, strides=strides, padding="same")
    g = rng.standard_normal(layer.forward(x).shape)
    np.testing.assert_allclose(layer.vjp(x, g), conv2d_vjp(x, k, g, layer.strides, "same"), rtol=1e-10, atol=1e-10)


def test_conv_scratch_buffer_is_freed_after_each_pass():
    """The im2col scratch buffer lives for one forward/trace/vjp/explain and is not held afterwards."""
    import rlrp_ref as rr
    from rlrp_ref import kernels

    rng = np.random.default_rng(0)
    model = rr.Sequential([rr.Conv2D(rng.standard_normal((3, 3, 2, 4)), padding="same"), rr.ReLU(),
                           rr.GlobalAvgPool2D(), rr.Dense(rng.standard_normal((4, 3)))])
    x = rng.standard_normal((2, 40, 40, 2))
    seen = []
    original = kernels._scratch

    def spy(shape, dtype):
        out = original(shape, dtype)
        seen.append(kernels._workspace.buffer is not None)
        return out

    kernels._scratch = spy
    try:
        for run in (model.forward, model.trace, lambda v: model.vjp(v, np.ones((2, 3))), lambda v: rr.explain(model, v)):
            run(x)
            assert getattr(kernels._workspace, "buffer", None) is None
    finally:
        kernels._scratch = original
    assert seen and all(seen)  # the buffer was in use during the passes
