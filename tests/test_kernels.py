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
    monkeypatch.setattr(kernels.tuning, "GATHER_MIN_PIXELS_PER_FILTER", 0 if request.param == "gather" else 10**9)
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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("pool_size", [2, (2, 3), 3])
def test_blocked_pooling_against_loops(rng, monkeypatch, dtype, threads, mode, pool_size):
    # threads: bands of output rows, one row per chunk
    monkeypatch.setattr(kernels.tuning, "PARALLEL_MIN_WORK", 0 if threads > 1 else 1 << 20)
    monkeypatch.setattr(kernels.tuning, "MAXPOOL_CHUNK_BYTES", 1)
    kernels.set_num_threads(threads)
    x = rng.standard_normal((2, 6, 6, 3)).astype(dtype)
    x[0, :2, :3, 0] = 1.5  # ties inside one window
    x[1, 3:, 3:, 2] = 0.0
    x[1, :3, :3, 1] = -np.inf  # a window of -inf (after a -inf bias, say): its first pixel wins
    layer = (rr.MaxPool2D if mode == "max" else rr.AvgPool2D)(pool_size)
    assert kernels._blocked(x, layer.pool_size, layer.strides, layer.pads(x.shape[1:3])) is not None
    if mode == "avg":
        x[1, :3, :3, 1] = 0.25
    y = layer.forward(x)
    want, _ = pool(x.astype(np.float64), layer.pool_size, layer.strides, "valid", mode)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-6, atol=1e-6)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, want, **tol)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.vjp(x, g)
    kernels.set_num_threads(None)
    assert dx.dtype == dtype and dx.shape == x.shape and not np.signbit(dx[dx == 0]).any()  # +0.0, never -0.0
    np.testing.assert_allclose(dx, pool_vjp(x, g, layer.pool_size, layer.strides, "valid", mode), **tol)


def test_blocked_winner_matches_windowed_argmax(rng):
    x = np.round(rng.standard_normal((2, 8, 6, 3)))  # many ties
    fast = kernels.maxpool_winner(x, (2, 2), (2, 2), ((0, 0), (0, 0)))
    win = kernels.windows(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(fast, win.reshape(win.shape[:4] + (4,)).argmax(axis=-1))


@pytest.mark.parametrize("pool,strides,pads", [((3, 3), (2, 2), ((1, 1), (1, 1))), ((2, 3), (1, 2), ((0, 1), (1, 0)))])
def test_overlapping_winner_and_vjp_take_the_first_max(rng, pool, strides, pads):
    """Padded, overlapping windows (ResNet's 3x3/2): the winner is the first maximum in row-major offset order."""
    x = np.round(rng.standard_normal((2, 7, 8, 3)))  # many ties
    xp = kernels.pad_nhwc(x, pads, value=-np.inf)
    win = kernels.windows(xp, pool, strides)
    want = win.reshape(win.shape[:4] + (pool[0] * pool[1],)).argmax(axis=-1)
    winner = kernels.maxpool_winner(x, pool, strides, pads)
    np.testing.assert_array_equal(winner, want)
    g = rng.standard_normal(winner.shape)
    dx = np.zeros(xp.shape)
    for n, p, q, c in np.ndindex(*winner.shape):  # the oracle: each gradient to its window's first maximum
        i, j = divmod(int(want[n, p, q, c]), pool[1])
        dx[n, p * strides[0] + i, q * strides[1] + j, c] += g[n, p, q, c]
    np.testing.assert_allclose(kernels.maxpool_vjp(x, g, pool, strides, pads), kernels.crop_nhwc(dx, pads),
                               rtol=1e-12, atol=1e-12)


def test_pad_nhwc_fills_border(rng):
    x = rng.standard_normal((2, 3, 4, 2))
    pads = ((1, 2), (0, 3))
    np.testing.assert_array_equal(kernels.pad_nhwc(x, pads, value=-np.inf),
                                  np.pad(x, ((0, 0), (1, 2), (0, 3), (0, 0)), constant_values=-np.inf))
    assert kernels.pad_nhwc(x, ((0, 0), (0, 0))) is x


@pytest.mark.parametrize("channels_first_below", [0, 100])
@pytest.mark.parametrize("strides", [1, 2])
def test_col2im_both_layouts_against_loops(rng, monkeypatch, channels_first_below, strides):
    monkeypatch.setattr(kernels.tuning, "COL2IM_CHANNELS_FIRST_BELOW", channels_first_below)
    monkeypatch.setattr(kernels.tuning, "GATHER_MIN_PIXELS_PER_FILTER", 10**9)
    x = rng.standard_normal((2, 7, 6, 9))
    k = rng.standard_normal((3, 2, 9, 4))
    layer = rr.Conv2D(k, strides=strides, padding="same")
    g = rng.standard_normal(layer.forward(x).shape)
    np.testing.assert_allclose(layer.vjp(x, g), conv2d_vjp(x, k, g, layer.strides, "same"), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
def test_conv_scratch_buffers_are_freed_after_each_pass(algorithm):
    """The scratch buffers (and Winograd kernels) live for one forward/trace/vjp/explain, not afterwards."""
    rng = np.random.default_rng(0)
    model = rr.Sequential([rr.Conv2D(rng.standard_normal((3, 3, 2, 4)), padding="same"), rr.ReLU(),
                           rr.GlobalAvgPool2D(), rr.Dense(rng.standard_normal((4, 3)))])
    x = rng.standard_normal((2, 40, 40, 2))
    seen = []
    original = kernels.scratch.buffer

    def spy(shape, dtype, slot="im2col"):
        out = original(shape, dtype, slot)
        seen.append(slot in kernels._workspace.buffers)
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels.scratch, "buffer", spy)
        with kernels.conv_algorithm(algorithm):
            for run in (model.forward, model.trace, lambda v: model.vjp(v, np.ones((2, 3))), lambda v: rr.explain(model, v)):
                run(x)
                assert kernels._workspace.buffers == {} and kernels._workspace.kernels == {}
    assert seen and all(seen)  # the buffers were in use during the passes


# --- Winograd F(2x2, 3x3) -------------------------------------------------------


@pytest.fixture
def winograd():
    """Force Winograd wherever it applies (any dtype, any channel count)."""
    with kernels.conv_algorithm("winograd"):
        yield


@pytest.fixture(params=["layered", "fused"])
def winograd_route(request, monkeypatch):
    """Force one of winograd_conv's two routes; the fused one in chunks of one tile row, on 2 threads."""
    if request.param == "fused":
        pytest.importorskip("threadpoolctl", reason="the fused Winograd route needs threadpoolctl (the 'fast' extra)")
        monkeypatch.setattr(kernels.tuning, "WINOGRAD_FUSED_MIN_BYTES", 1)
        monkeypatch.setattr(kernels.tuning, "WINOGRAD_CHUNK_BYTES", 1)
        kernels.set_num_threads(2)
    else:
        monkeypatch.setattr(kernels.tuning, "WINOGRAD_FUSED_MIN_BYTES", 0)
    yield request.param
    kernels.set_num_threads(None)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hw", [(6, 7), (5, 5), (9, 4)])
@pytest.mark.parametrize("padding", ["valid", "same", ((2, 0), (1, 2)), ((0, 1), (2, 2)), ((3, 0), (0, 1))])
def test_winograd_against_loops(rng, winograd, winograd_route, dtype, hw, padding):
    x = rng.standard_normal((2,) + hw + (5,)).astype(dtype)
    k = rng.standard_normal((3, 3, 5, 4)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    layer = rr.Conv2D(k, b, padding=padding)
    want = conv2d(x.astype(np.float64), k.astype(np.float64), b.astype(np.float64), (1, 1), padding)
    with kernels.workspace():  # the forward and the vjp share the transformed kernel
        y = layer.forward(x)
        g = rng.standard_normal(y.shape).astype(dtype)
        dx = layer.vjp(x, g)
    assert y.shape == want.shape and y.dtype == dtype and y.flags.c_contiguous
    assert dx.shape == x.shape and dx.dtype == dtype and dx.flags.c_contiguous
    np.testing.assert_allclose(y, want, **TOL[dtype])
    np.testing.assert_allclose(dx, conv2d_vjp(x, k.astype(np.float64), g.astype(np.float64), (1, 1), padding), **TOL[dtype])


def test_winograd_rounding_is_that_of_the_direct_route(rng, winograd):
    """Exact transforms (adds, halvings): float32 errors stay of the size of the im2col route's."""
    x = rng.standard_normal((1, 20, 20, 64)).astype(np.float32)
    k = (rng.standard_normal((3, 3, 64, 32)) / 24).astype(np.float32)
    exact = kernels.conv2d_forward(x.astype(np.float64), k.astype(np.float64), None, (1, 1), ((1, 1), (1, 1)))
    with kernels.conv_algorithm("im2col"):
        direct = kernels.conv2d_forward(x, k, None, (1, 1), ((1, 1), (1, 1)))
    fast = kernels.conv2d_forward(x, k, None, (1, 1), ((1, 1), (1, 1)))
    err_direct, err_fast = (np.abs(v - exact).max() / np.abs(exact).max() for v in (direct, fast))
    assert err_fast < 3 * err_direct + 1e-7, (err_fast, err_direct)


def test_winograd_fused_route_is_the_layered_route(rng, winograd, monkeypatch):
    """The fused route does the same operations on each value, in bands and chunks; BLAS's threads are restored."""
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="the fused Winograd route needs threadpoolctl")
    x = rng.standard_normal((2, 23, 18, 20)).astype(np.float32)
    k = rng.standard_normal((3, 3, 20, 12)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    blas_threads = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    results = {}
    for fused_min_bytes, chunk_bytes in ((0, 1 << 21), (1, 1), (1, 1 << 21)):
        monkeypatch.setattr(kernels.tuning, "WINOGRAD_FUSED_MIN_BYTES", fused_min_bytes)
        monkeypatch.setattr(kernels.tuning, "WINOGRAD_CHUNK_BYTES", chunk_bytes)
        for threads in (1, 2):
            kernels.set_num_threads(threads)
            y = kernels.conv2d_forward(x, k, b, (1, 1), ((1, 1), (1, 1)))
            dx = kernels.conv2d_vjp(y, k, x.shape, (1, 1), ((1, 1), (1, 1)))
            results[fused_min_bytes, chunk_bytes, threads] = (y, dx)
    kernels.set_num_threads(None)
    assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"] == blas_threads
    want_y, want_dx = results[0, 1 << 21, 1]
    np.testing.assert_allclose(want_y, conv2d(x.astype(np.float64), k.astype(np.float64), b.astype(np.float64),
                                              (1, 1), "same"), rtol=1e-4, atol=1e-4)
    for y, dx in results.values():
        # the same operations on each value; only BLAS's blocking of a GEMM could differ with its row count
        np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-6 * np.abs(want_y).max())
        np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-6 * np.abs(want_dx).max())


def test_winograd_fused_route_choice(monkeypatch):
    # VGG16's 224x224x64 layer at batch 1: 16 x 112 x 112 x 64 float32 tiles, 51 MB; its 112x112x128 layers 26 MB
    monkeypatch.setattr(kernels.threads, "_blas_state", {"controller": None, "known": True})  # threadpoolctl missing
    assert not kernels.winograd_fused_applies(1, 112, 112, 64, 64, 4)
    pytest.importorskip("threadpoolctl", reason="the fused Winograd route needs threadpoolctl (the 'fast' extra)")
    monkeypatch.setattr(kernels.threads, "_blas_state", {"controller": None, "known": False})
    assert kernels.winograd_fused_applies(1, 112, 112, 64, 64, 4)
    assert not kernels.winograd_fused_applies(1, 56, 56, 128, 128, 4)
    assert kernels.winograd_fused_applies(2, 56, 56, 128, 128, 4)
    assert not kernels.winograd_fused_applies(8, 28, 28, 256, 256, 4)  # 103 MB, but GEMMs dense enough for BLAS
    monkeypatch.setattr(kernels.tuning, "WINOGRAD_FUSED_MIN_BYTES", 0)
    assert not kernels.winograd_fused_applies(8, 112, 112, 64, 64, 4)


def test_winograd_kernel_of_the_flipped_kernel_is_a_permutation(rng):
    k = rng.standard_normal((3, 3, 4, 6))
    u = kernels.winograd_kernel(k).reshape(4, 4, 4, 6)
    u_flip = kernels.winograd_kernel(np.ascontiguousarray(k[::-1, ::-1].transpose(0, 1, 3, 2))).reshape(4, 4, 6, 4)
    p = list(kernels._WINOGRAD_FLIP)
    np.testing.assert_allclose(u_flip, u[p][:, p].transpose(0, 1, 3, 2), rtol=1e-14, atol=1e-14)
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    np.testing.assert_allclose(u, np.einsum("ai,ijck,bj->abck", g, k, g), rtol=1e-14, atol=1e-14)


def test_winograd_choice():
    same = (1, 1)
    assert kernels._winograd_applies((3, 3, 64, 64), same, (224, 224), np.float32)
    assert not kernels._winograd_applies((3, 3, 64, 64), same, (224, 224), np.float64)  # the reference mode
    assert not kernels._winograd_applies((3, 3, 3, 64), same, (224, 224), np.float32)  # an RGB input
    assert not kernels._winograd_applies((3, 3, 512, 512), same, (7, 7), np.float32, 64)  # 8x8 tiles for 7x7: 31% waste
    assert kernels._winograd_applies((3, 3, 512, 512), same, (28, 28), np.float32)
    assert not kernels._winograd_applies((3, 3, 512, 512), same, (14, 14), np.float32)  # 16 GEMMs of 49 rows
    assert kernels._winograd_applies((3, 3, 512, 512), same, (14, 14), np.float32, 8)  # ... of 392 rows
    assert not kernels._winograd_applies((3, 3, 64, 64), same, (56, 56), np.float32)  # ResNet50's first stage
    assert not kernels._winograd_applies((3, 3, 64, 64), (2, 2), (112, 112), np.float32)
    assert not kernels._winograd_applies((1, 1, 64, 64), same, (56, 56), np.float32)
    with kernels.conv_algorithm("im2col"):
        assert not kernels._winograd_applies((3, 3, 64, 64), same, (224, 224), np.float32)
    with kernels.conv_algorithm("winograd"):
        assert kernels._winograd_applies((3, 3, 3, 64), same, (7, 7), np.float64)
    with pytest.raises(ValueError, match="expected 'auto', 'winograd' or 'im2col', found 'fft'"):
        kernels.conv_algorithm("fft")
    assert kernels.current_conv_algorithm() == "auto"


def test_moved_names_say_where_they_went():
    with pytest.raises(AttributeError, match=r"rlrp_ref.kernels.PARALLEL_MIN_WORK is rlrp_ref.kernels.tuning.PARALLEL_MIN_WORK"):
        kernels.PARALLEL_MIN_WORK  # noqa: B018
    with pytest.raises(AttributeError, match="current_conv_algorithm"):
        kernels.CONV_ALGORITHM  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'no_such_kernel'"):
        kernels.no_such_kernel  # noqa: B018
    assert kernels.tuning.PARALLEL_MIN_WORK == 1 << 20


def test_conv_algorithm_does_not_leak_across_threads():
    """A ``with conv_algorithm(...)`` block holds for its own thread only, while another thread runs in its own block."""
    import threading

    inside, done = threading.Barrier(2), threading.Event()
    seen = {}

    def other():
        with kernels.conv_algorithm("winograd"):
            inside.wait()  # both threads are in their blocks now
            seen["other"] = (kernels.current_conv_algorithm(),
                             kernels._winograd_applies((3, 3, 3, 64), (1, 1), (7, 7), np.float64))
            done.wait()
        seen["other after"] = kernels.current_conv_algorithm()

    thread = threading.Thread(target=other)
    with kernels.conv_algorithm("im2col"):
        thread.start()
        inside.wait()
        seen["main"] = (kernels.current_conv_algorithm(),
                        kernels._winograd_applies((3, 3, 64, 64), (1, 1), (224, 224), np.float32))
        done.set()
        thread.join()
        seen["main after the other's block"] = kernels.current_conv_algorithm()
    seen["main after"] = kernels.current_conv_algorithm()
    assert seen == {"other": ("winograd", True), "other after": "auto", "main": ("im2col", False),
                    "main after the other's block": "im2col", "main after": "auto"}
    with kernels.conv_algorithm("im2col"):  # a thread started inside a block keeps the default
        late = []
        worker = threading.Thread(target=lambda: late.append(kernels.current_conv_algorithm()))
        worker.start()
        worker.join()
    assert late == ["auto"]


# --- threads and per-sample sums ---------------------------------------------------


@pytest.fixture
def threads_everywhere(monkeypatch):
    monkeypatch.setattr(kernels.tuning, "PARALLEL_MIN_WORK", 0)
    yield
    kernels.set_num_threads(None)


def test_results_do_not_depend_on_the_thread_count(rng, winograd, threads_everywhere):
    """Every threaded pass writes disjoint bands: 1, 2 or 3 threads give the same bits."""
    x = rng.standard_normal((2, 10, 9, 17)).astype(np.float32)
    k = rng.standard_normal((3, 3, 17, 5)).astype(np.float32)
    rgb = rng.standard_normal((2, 11, 10, 3)).astype(np.float32)
    stem = rng.standard_normal((7, 7, 3, 4)).astype(np.float32)
    norm = rr.BatchNorm(*(rng.uniform(0.5, 2, 17) for _ in range(4)))
    bias = rng.standard_normal(5).astype(np.float32)
    outs = []
    for threads in (1, 2, 3):
        kernels.set_num_threads(threads)
        y = kernels.conv2d_forward(x, k, bias, (1, 1), ((1, 1), (1, 1)))
        dx = kernels.conv2d_vjp(y, k, x.shape, (1, 1), ((1, 1), (1, 1)))
        with kernels.conv_algorithm("im2col"):
            y2 = kernels.conv2d_forward(x, k, np.ones(5, np.float32), (1, 1), ((1, 1), (1, 1)))
            dx2 = kernels.conv2d_vjp(y2[:, ::2, ::2].copy(), k, x.shape, (2, 2), ((1, 1), (1, 1)))  # col2im by channels
        s = kernels.conv2d_forward(rgb, stem, None, (2, 2), ((3, 3), (3, 3)))
        ds = kernels.conv2d_vjp(s, stem, rgb.shape, (2, 2), ((3, 3), (3, 3)))  # col2im channels-first
        split = rr.rules.ratio_split(x, np.where(x > 1, -x, np.float32(0.5) - x), 2 * x)  # ties where x > 1
        outs.append((y, dx, y2, dx2, ds, rr.ReLU().forward(x), rr.ReLU().vjp(x, x), norm.forward(x), *split[:2],
                     kernels.per_sample_sum(y, absolute=True), kernels.per_sample_sum(y, weights=y)))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_array_equal(a, b)


def test_elementwise_and_channelwise_against_numpy(rng, threads_everywhere):
    kernels.set_num_threads(3)
    a = rng.standard_normal((3, 5, 4, 6))
    b = rng.standard_normal((3, 5, 4, 6))
    per_sample = rng.standard_normal((3, 1, 1, 1))
    per_channel = rng.standard_normal(6)
    out = kernels.elementwise(lambda o, u, v, f: np.add(u * f, v, out=o), np.empty_like(a), a, b, per_sample)
    np.testing.assert_array_equal(out, a * per_sample + b)
    out = kernels.channelwise(lambda o, u, c: np.multiply(u, c, out=o), np.empty_like(a), a, per_channel)
    np.testing.assert_array_equal(out, a * per_channel)
    with pytest.raises(ValueError, match=r"elementwise: expected an array that reshapes to \(3, -1\) without a copy"):
        kernels.elementwise(lambda o, u: np.add(u, 0, out=o), np.empty((6, 4, 5, 3)).transpose(3, 2, 1, 0), a)
    with pytest.raises(ValueError, match=r"expected operands of shape \(3, 5, 4, 6\) or \(6,\), found \(5,\)"):
        kernels.channelwise(lambda o, u: None, np.empty_like(a), np.ones(5))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_multiply_and_sum_is_the_product_and_its_sums(rng, monkeypatch, threads_everywhere, dtype):
    monkeypatch.setattr(kernels.tuning, "SUM_BLOCK", 64)
    a = rng.standard_normal((2, 9, 7, 5)).astype(dtype)
    f = rng.standard_normal(a.shape).astype(dtype)
    want = a * f
    total, l1 = kernels.multiply_and_sum(a, f)
    np.testing.assert_array_equal(a, want)  # in place
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(total, want.reshape(2, -1).astype(np.float64).sum(axis=1), rtol=tol, atol=tol)
    np.testing.assert_allclose(l1, np.abs(want).reshape(2, -1).astype(np.float64).sum(axis=1), rtol=tol)
    np.testing.assert_array_equal(total, kernels.per_sample_sum(want))
    np.testing.assert_array_equal(l1, kernels.per_sample_sum(want, absolute=True))


def test_set_num_threads_rejects_nonsense():
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="expected a positive int or None"):
            kernels.set_num_threads(bad)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 7, 5, 4), (2, 100_003), (1, 0)])
def test_per_sample_sum_against_fsum(rng, monkeypatch, dtype, shape):
    import math

    monkeypatch.setattr(kernels.tuning, "SUM_BLOCK", 1000)  # many blocks
    a = (rng.standard_normal(shape) * 10).astype(dtype)
    w = rng.standard_normal(shape).astype(dtype)
    a64, w64 = a.astype(np.float64).reshape(shape[0], -1), w.astype(np.float64).reshape(shape[0], -1)
    cases = [(kernels.per_sample_sum(a), [math.fsum(r) for r in a64], np.abs(a64).sum(axis=1)),
             (kernels.per_sample_sum(a, absolute=True), [math.fsum(np.abs(r)) for r in a64], np.abs(a64).sum(axis=1)),
             (kernels.per_sample_sum(a, weights=w), [math.fsum(r) for r in a64 * w64], np.abs(a64 * w64).sum(axis=1))]
    rel = 1e-14 if dtype == np.float64 else 2e-6  # relative to the L1 norm of what is added
    for got, exact, scale in cases:
        assert got.dtype == np.float64 and got.shape == (shape[0],)
        assert np.all(np.abs(got - np.array(exact)) <= rel * scale + 1e-300), (got, exact)


def test_add_and_sum_and_per_sample_sums(rng, monkeypatch, threads_everywhere):
    monkeypatch.setattr(kernels.tuning, "SUM_BLOCK", 50)
    kernels.set_num_threads(2)
    a, b = rng.standard_normal((2, 2, 30, 7)), rng.standard_normal((2, 2, 30, 7))
    out, total, l1 = kernels.add_and_sum(a, b)
    np.testing.assert_array_equal(out, a + b)
    np.testing.assert_allclose(total, (a + b).reshape(2, -1).sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(l1, np.abs(a + b).reshape(2, -1).sum(axis=1), rtol=1e-13)
    both = kernels.per_sample_sums(out)
    np.testing.assert_array_equal(both[0], total)
    np.testing.assert_array_equal(both[1], l1)
    np.testing.assert_array_equal(both[1], kernels.per_sample_sum(out, absolute=True))
