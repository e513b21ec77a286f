"""Each layer's forward and vjp against naive loop oracles and finite differences."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rlrp_ref as rr
from rlrp_ref import kernels
from oracles import conv2d, conv2d_vjp, dense, numerical_vjp, pool, pool_vjp

DTYPES = [np.float64, np.float32]
TOL = {np.float64: dict(rtol=1e-10, atol=1e-11), np.float32: dict(rtol=1e-4, atol=1e-4)}
PADDINGS = ["valid", "same", ((1, 0), (2, 1))]


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# --- Dense -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_forward_vjp_against_loops(rng, dtype, use_bias):
    x = _rand(rng, (3, 5), dtype)
    k = _rand(rng, (5, 4), dtype)
    b = _rand(rng, (4,), dtype) if use_bias else None
    layer = rr.Dense(k, b)
    y = layer.forward(x)
    assert y.dtype == dtype and y.shape == (3, 4)
    np.testing.assert_allclose(y, dense(x, k, b), **TOL[dtype])
    g = _rand(rng, (3, 4), dtype)
    want = numerical_vjp(lambda v: dense(v, k.astype(np.float64), b), x.astype(np.float64), g)
    np.testing.assert_allclose(layer.vjp(x, g), want, rtol=1e-4, atol=1e-5)


# --- Conv2D ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("strides", [1, 2, (2, 1)])
@pytest.mark.parametrize("hw", [(6, 6), (7, 5)])
def test_conv2d_against_loops(rng, dtype, padding, strides, hw):
    x = _rand(rng, (2,) + hw + (3,), dtype)
    k = _rand(rng, (3, 2, 3, 4), dtype)
    b = _rand(rng, (4,), dtype)
    layer = rr.Conv2D(k, b, strides=strides, padding=padding)
    s = (strides, strides) if isinstance(strides, int) else strides
    y = layer.forward(x)
    want = conv2d(x.astype(np.float64), k.astype(np.float64), b.astype(np.float64), s, padding)
    assert y.shape == want.shape and y.dtype == dtype
    np.testing.assert_allclose(y, want, **TOL[dtype])
    g = _rand(rng, y.shape, dtype)
    dx = layer.vjp(x, g)
    assert dx.shape == x.shape and dx.dtype == dtype
    np.testing.assert_allclose(dx, conv2d_vjp(x, k.astype(np.float64), g.astype(np.float64), s, padding), **TOL[dtype])


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("strides", [1, 2])
def test_conv2d_vjp_finite_differences(rng, padding, strides):
    x = rng.standard_normal((2, 5, 6, 2))
    layer = rr.Conv2D(rng.standard_normal((3, 3, 2, 3)), rng.standard_normal(3), strides=strides, padding=padding)
    g = rng.standard_normal(layer.forward(x).shape)
    np.testing.assert_allclose(layer.vjp(x, g), numerical_vjp(layer.forward, x, g), rtol=1e-6, atol=1e-7)


def test_conv2d_same_stride2_even_puts_extra_bottom_right():
    # 4x4 input, 3x3 kernel, stride 2 -> out 2x2, total padding 1 -> (0 top, 1 bottom)
    layer = rr.Conv2D(np.ones((3, 3, 1, 1)), strides=2, padding="same")
    assert layer.pads((4, 4)) == ((0, 1), (0, 1))
    x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
    y = layer.forward(x)[0, :, :, 0]
    assert y[0, 0] == x[0, 0:3, 0:3, 0].sum()
    assert y[1, 1] == x[0, 2:4, 2:4, 0].sum()


@given(
    n=st.integers(1, 3), h=st.integers(3, 9), w=st.integers(3, 9), cin=st.integers(1, 3), cout=st.integers(1, 3),
    kh=st.integers(1, 3), kw=st.integers(1, 3), s=st.integers(1, 3), padding=st.sampled_from(["valid", "same"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_conv2d_random_shapes(n, h, w, cin, cout, kh, kw, s, padding, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, cin))
    k = rng.standard_normal((kh, kw, cin, cout))
    layer = rr.Conv2D(k, rng.standard_normal(cout), strides=s, padding=padding)
    y = layer.forward(x)
    np.testing.assert_allclose(y, conv2d(x, k, layer.bias, (s, s), padding), rtol=1e-10, atol=1e-10)
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.vjp(x, g), conv2d_vjp(x, k, g, (s, s), padding), rtol=1e-10, atol=1e-10)


# --- pooling -----------------------------------------------------------------


@pytest.fixture(params=[1, 2])
def threads(request, monkeypatch):
    """1 thread, or 2 with every pass split into bands of rows, however small; max pooling in its smallest chunks."""
    monkeypatch.setattr(kernels.tuning, "PARALLEL_MIN_WORK", 0 if request.param > 1 else 1 << 20)
    monkeypatch.setattr(kernels.tuning, "MAXPOOL_CHUNK_BYTES", 1)
    kernels.set_num_threads(request.param)
    yield request.param
    kernels.set_num_threads(None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,mode", [(rr.MaxPool2D, "max"), (rr.AvgPool2D, "avg")])
@pytest.mark.parametrize("padding", ["valid", "same", ((1, 0), (1, 1))])
@pytest.mark.parametrize("pool_size,strides", [(2, None), (3, 2), ((2, 3), 1)])
@pytest.mark.parametrize("hw", [(6, 6), (7, 5)])
def test_pooling_against_loops(rng, threads, dtype, cls, mode, padding, pool_size, strides, hw):
    x = _rand(rng, (2,) + hw + (3,), dtype)
    layer = cls(pool_size, strides, padding)
    ps = layer.pool_size
    s = layer.strides
    y = layer.forward(x)
    want, _ = pool(x.astype(np.float64), ps, s, padding, mode)
    assert y.shape == want.shape and y.dtype == dtype
    np.testing.assert_allclose(y, want, **TOL[dtype])
    g = _rand(rng, y.shape, dtype)
    dx = layer.vjp(x, g)
    assert dx.shape == x.shape and dx.dtype == dtype
    np.testing.assert_allclose(dx, pool_vjp(x.astype(np.float64), g.astype(np.float64), ps, s, padding, mode), **TOL[dtype])


@pytest.mark.parametrize("cls", [rr.MaxPool2D, rr.AvgPool2D])
@pytest.mark.parametrize("padding", ["valid", "same", ((1, 0), (1, 1))])
def test_pooling_vjp_finite_differences(rng, cls, padding):
    x = rng.standard_normal((2, 6, 5, 2))
    layer = cls(3, 2, padding)
    g = rng.standard_normal(layer.forward(x).shape)
    np.testing.assert_allclose(layer.vjp(x, g), numerical_vjp(layer.forward, x, g), rtol=1e-6, atol=1e-7)


def test_maxpool_ties_go_to_first_in_row_major_order():
    x = np.zeros((1, 2, 2, 1))
    x[0, 0, 1, 0] = x[0, 1, 0, 0] = 1.0  # tie between (0,1) and (1,0)
    layer = rr.MaxPool2D(2)
    dx = layer.vjp(x, np.ones((1, 1, 1, 1)))
    assert dx[0, 0, 1, 0] == 1.0 and dx.sum() == 1.0
    assert layer.winner(x)[0, 0, 0, 0] == 1  # flat index of (0, 1)
    all_equal = layer.vjp(np.ones((1, 2, 2, 1)), np.ones((1, 1, 1, 1)))
    assert all_equal[0, 0, 0, 0] == 1.0 and all_equal.sum() == 1.0


@given(
    n=st.integers(1, 3), h=st.integers(2, 8), w=st.integers(2, 8), c=st.integers(1, 3),
    p=st.integers(1, 3), s=st.integers(1, 3), padding=st.sampled_from(["valid", "same"]),
    mode=st.sampled_from(["max", "avg"]), seed=st.integers(0, 2**31 - 1),
)
def test_pooling_random_shapes(n, h, w, c, p, s, padding, mode, seed):
    if padding == "valid" and (p > h or p > w):
        return
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((n, h, w, c)), 1)  # ties
    layer = (rr.MaxPool2D if mode == "max" else rr.AvgPool2D)(p, s, padding)
    y = layer.forward(x)
    want, _ = pool(x, (p, p), (s, s), padding, mode)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y.shape)
    with pytest.MonkeyPatch.context() as patch:  # max pooling's vjp in chunks of the fewest rows, in two phases
        patch.setattr(kernels.tuning, "MAXPOOL_CHUNK_BYTES", 1)
        dx = layer.vjp(x, g)
    np.testing.assert_allclose(dx, pool_vjp(x, g, (p, p), (s, s), padding, mode), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool(rng, dtype):
    x = _rand(rng, (2, 3, 4, 5), dtype)
    layer = rr.GlobalAvgPool2D()
    y = layer.forward(x)
    want = np.array([[x[n, :, :, c].astype(np.float64).sum() / 12 for c in range(5)] for n in range(2)])
    np.testing.assert_allclose(y, want, **TOL[dtype])
    g = _rand(rng, (2, 5), dtype)
    np.testing.assert_allclose(layer.vjp(x, g), numerical_vjp(layer.forward, x.astype(np.float64), g), rtol=1e-4, atol=1e-5)


# --- shape-only and element-wise --------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_pad(rng, dtype):
    x = _rand(rng, (2, 3, 4, 2), dtype)
    layer = rr.ZeroPad2D(((1, 2), (0, 3)))
    y = layer.forward(x)
    assert y.shape == (2, 6, 7, 2) and y.dtype == dtype
    assert np.array_equal(y[:, 1:4, 0:4, :], x) and y.sum() == pytest.approx(x.sum(), rel=1e-5)
    g = _rand(rng, y.shape, dtype)
    np.testing.assert_array_equal(layer.vjp(x, g), g[:, 1:4, 0:4, :])
    assert rr.ZeroPad2D(3).padding == ((3, 3), (3, 3))
    assert rr.ZeroPad2D((1, 2)).padding == ((1, 1), (2, 2))


def test_flatten_is_c_order_over_nhwc(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    layer = rr.Flatten()
    y = layer.forward(x)
    assert y[1, (2 * 4 + 3) * 5 + 4] == x[1, 2, 3, 4]
    g = rng.standard_normal(y.shape)
    assert layer.vjp(x, g)[1, 2, 3, 4] == g[1, (2 * 4 + 3) * 5 + 4]


@pytest.mark.parametrize("cls", [rr.ReLU, rr.Sigmoid, rr.Softplus, rr.Identity])
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise(rng, cls, dtype):
    x = _rand(rng, (3, 4, 5, 2), dtype)
    layer = cls()
    y = layer.forward(x)
    ref = {rr.ReLU: lambda v: np.maximum(v, 0), rr.Sigmoid: lambda v: 1 / (1 + np.exp(-v)),
           rr.Softplus: lambda v: np.log1p(np.exp(v)), rr.Identity: lambda v: v}[cls]
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref(x.astype(np.float64)), **TOL[dtype])
    g = _rand(rng, x.shape, dtype)
    assert layer.vjp(x, g).dtype == dtype
    np.testing.assert_allclose(layer.vjp(x, g), numerical_vjp(lambda v: ref(v), x.astype(np.float64), g), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm(rng, dtype):
    c = 4
    gamma, beta, mean = (_rand(rng, (c,), dtype) for _ in range(3))
    var = rng.uniform(0.5, 2, c).astype(dtype)
    layer = rr.BatchNorm(gamma, beta, mean, var, epsilon=1e-3)
    x = _rand(rng, (2, 3, 3, c), dtype)
    want = np.zeros(x.shape)
    for k in range(c):
        want[..., k] = gamma[k] * (x[..., k] - mean[k]) / np.sqrt(float(var[k]) + 1e-3) + beta[k]
    np.testing.assert_allclose(layer.forward(x), want, **TOL[dtype])
    g = _rand(rng, x.shape, dtype)
    np.testing.assert_allclose(layer.vjp(x, g), numerical_vjp(layer.forward, x.astype(np.float64), g), rtol=1e-4, atol=1e-4)


# --- names and parameters ----------------------------------------------------


def test_auto_names_are_keras_style_and_unique():
    a, b = rr.ReLU(), rr.ReLU()
    assert a.name != b.name and a.name.startswith("relu") and b.name.startswith("relu_")
    assert rr.Dense(np.ones((2, 2)), name="fc1").name == "fc1"


def test_params_in_keras_order_and_set_params(rng):
    layer = rr.Conv2D(rng.standard_normal((3, 3, 2, 4)), np.zeros(4))
    assert list(layer.params) == ["kernel", "bias"]
    assert list(rr.Conv2D(np.ones((1, 1, 1, 1))).params) == ["kernel"]
    new_k = rng.standard_normal((3, 3, 2, 4))
    layer.set_params(kernel=new_k)
    assert np.array_equal(layer.kernel, new_k)
    old = layer.kernel
    with pytest.raises(ValueError, match=r"kernel expected shape \(3, 3, 2, 4\), found \(3, 3, 2, 5\)"):
        layer.set_params(kernel=np.ones((3, 3, 2, 5)), bias=np.ones(4))
    assert layer.kernel is old  # all or nothing
    bn = rr.BatchNorm(np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
    assert list(bn.params) == ["gamma", "beta", "moving_mean", "moving_variance"]


# --- bad input ---------------------------------------------------------------


def test_errors_name_layer_expected_and_found(rng):
    conv = rr.Conv2D(rng.standard_normal((3, 3, 2, 4)), name="c1")
    with pytest.raises(ValueError, match=r"'c1'.*rank 4.*found shape \(2, 5\)"):
        conv.forward(np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"'c1'.*expected 2 input channels.*found shape \(1, 5, 5, 3\)"):
        conv.forward(np.ones((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"'c2'.*bias expected shape \(4,\).*found \(3,\)"):
        rr.Conv2D(np.ones((3, 3, 2, 4)), np.ones(3), name="c2")
    with pytest.raises(ValueError, match=r"'d1'.*kernel expected finite values, found 1 non-finite"):
        rr.Dense(np.array([[1.0, np.nan]]), name="d1")
    with pytest.raises(ValueError, match=r"'d2'.*bias expected finite"):
        rr.Dense(np.ones((2, 2)), np.array([np.inf, 0]), name="d2")
    with pytest.raises(ValueError, match=r"'d3'.*kernel expected rank 2"):
        rr.Dense(np.ones((2, 2, 2)), name="d3")
    with pytest.raises(ValueError, match=r"'d4'.*expected 3 input channels/features, found shape \(2, 4\)"):
        rr.Dense(np.ones((3, 2)), name="d4").forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"'b1'.*one shape"):
        rr.BatchNorm(np.ones(3), np.ones(2), np.ones(3), np.ones(3), name="b1")
    with pytest.raises(ValueError, match="padding"):
        rr.Conv2D(np.ones((3, 3, 1, 1)), padding="full")
    with pytest.raises(ValueError, match=r"'p1'.*at least \(3, 3\)"):
        rr.MaxPool2D(3, name="p1").forward(np.ones((1, 2, 2, 1)))
    with pytest.raises(ValueError, match=r"'p2'.*padding smaller than the pool"):
        rr.MaxPool2D(2, padding=((2, 0), (0, 0)), name="p2").forward(np.ones((1, 4, 4, 1)))
    with pytest.raises(ValueError, match=r"'d5'.*float32 or float64 input, found dtype int64"):
        rr.Dense(np.ones((2, 2)), name="d5").forward(np.ones((1, 2), dtype=np.int64))
