"""Every route of the shared kernels against the loop oracles: shifted GEMMs, im2col, 1x1, blocked pooling, gemm."""

import numpy as np
import pytest

import rlrp_ref as rr
from rlrp_ref import kernels
from oracles import conv2d, conv2d_vjp, pool, pool_vjp

TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=1e-4, atol=1e-4)}


@pytest.fixture(params=["shifted", "im2col"])
def route(request, monkeypatch):
    """Force the stride-1 convolution route (the thresholds otherwise pick it by shape)."""
    if request.param == "shifted":
        monkeypatch.setattr(kernels, "SHIFTED_MIN_CHANNELS", 1)
        monkeypatch.setattr(kernels, "SHIFTED_MAX_EXTRA", np.inf)
    else:
        monkeypatch.setattr(kernels, "SHIFTED_MIN_CHANNELS", 10**9)
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kernel_hw", [(3, 3), (2, 3), (1, 1), (3, 1)])
@pytest.mark.parametrize("padding", ["valid", "same", ((2, 0), (1, 2))])
@pytest.mark.parametrize("strides", [1, 2, (1, 2)])
def test_conv_routes_against_loops(rng, route, dtype, kernel_hw, padding, strides):
    x = rng.standard_normal((3, 6, 7, 4)).astype(dtype)
    k = rng.standard_normal(kernel_hw + (4, 5)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
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


def test_route_choice_follows_shape():
    # VGG-like 3x3 "same" on a 112x112 map with 64 channels: shifted GEMMs
    assert kernels._shifted_route((114, 114), (112, 112), (3, 3), (1, 1), 64)
    # on 56x56 (7% extra grid positions) im2col
    assert not kernels._shifted_route((58, 58), (56, 56), (3, 3), (1, 1), 256)
    # same on 14x14: 30% extra grid positions, im2col
    assert not kernels._shifted_route((16, 16), (14, 14), (3, 3), (1, 1), 512)
    # a 3-channel image, a stride 2 and a 1x1 kernel never take it
    assert not kernels._shifted_route((226, 226), (224, 224), (3, 3), (1, 1), 3)
    assert not kernels._shifted_route((226, 226), (112, 112), (3, 3), (2, 2), 64)
    assert not kernels._shifted_route((56, 56), (56, 56), (1, 1), (1, 1), 64)


def test_shifted_route_on_a_wide_map_matches_im2col(rng, monkeypatch):
    x = rng.standard_normal((2, 20, 22, 16)).astype(np.float32)
    k = rng.standard_normal((3, 3, 16, 8)).astype(np.float32)
    assert not kernels._shifted_route((22, 24), (20, 22), (3, 3), (1, 1), 16)  # 20% extra: im2col by default
    monkeypatch.setattr(kernels, "SHIFTED_MAX_EXTRA", 0.25)
    assert kernels._shifted_route((22, 24), (20, 22), (3, 3), (1, 1), 16)
    y_shifted = kernels.conv2d_forward(x, k, None, (1, 1), ((1, 1), (1, 1)))
    g = rng.standard_normal(y_shifted.shape).astype(np.float32)
    dx_shifted = kernels.conv2d_vjp(g, k, x.shape, (1, 1), ((1, 1), (1, 1)))
    monkeypatch.setattr(kernels, "SHIFTED_MAX_EXTRA", 0.0)
    y_cols = kernels.conv2d_forward(x, k, None, (1, 1), ((1, 1), (1, 1)))
    dx_cols = kernels.conv2d_vjp(g, k, x.shape, (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_allclose(y_shifted, y_cols, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx_shifted, dx_cols, rtol=1e-5, atol=1e-5)


def test_float32_stays_float32(rng, route):
    x = rng.standard_normal((1, 8, 8, 16)).astype(np.float32)
    layer = rr.Conv2D(rng.standard_normal((3, 3, 16, 4)).astype(np.float32), padding="same")
    y = layer.forward(x)
    assert y.dtype == np.float32 and layer.vjp(x, y).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_layouts_and_accumulate(rng, dtype):
    a = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal((5, 3)).astype(dtype)
    tol = TOL[dtype]
    np.testing.assert_allclose(kernels.gemm(a, b), a @ b, **tol)
    np.testing.assert_allclose(kernels.gemm(a, np.ascontiguousarray(b.T).T), a @ b, **tol)  # Fortran-ordered b
    np.testing.assert_allclose(kernels.gemm(a[:, ::-1], b[::-1]), a @ b, **tol)  # neither order
    out = rng.standard_normal((7, 3)).astype(dtype)
    start = out.copy()
    result = kernels.gemm(a, b, out=out, accumulate=True)
    assert result is out
    np.testing.assert_allclose(out, start + a @ b, **tol)
    scratch = np.empty_like(out)
    kernels.gemm(a, b, out=out, accumulate=True, scratch=scratch)
    np.testing.assert_allclose(out, start + 2 * (a @ b), **tol)
    kernels.gemm(a, b, out=out)
    np.testing.assert_allclose(out, a @ b, **tol)
    assert kernels.gemm(a, b).dtype == dtype


def test_gemm_promotes_and_handles_empty(rng):
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((3, 2))
    assert kernels.gemm(a, b).dtype == np.float64
    assert kernels.gemm(np.ones((0, 3)), np.ones((3, 2))).shape == (0, 2)
    np.testing.assert_array_equal(kernels.gemm(np.ones((2, 0)), np.ones((0, 3))), np.zeros((2, 3)))


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
