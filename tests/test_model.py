"""Sequential and Residual containers, trace, and BatchNorm folding."""

import numpy as np
import pytest

import rlrp_ref as rr
from rlrp_ref.canonize import fold_batchnorm, unfolded_batchnorms
from oracles import numerical_vjp


def conv(rng, kh, cin, cout, strides=1, padding="same", bias=True, name=None):
    return rr.Conv2D(rng.standard_normal((kh, kh, cin, cout)) * 0.5, rng.standard_normal(cout) * 0.1 if bias else None,
                     strides=strides, padding=padding, name=name)


def bn(rng, c, eps=1e-3, name=None):
    return rr.BatchNorm(rng.uniform(0.5, 1.5, c), rng.standard_normal(c) * 0.1, rng.standard_normal(c) * 0.1,
                        rng.uniform(0.5, 2.0, c), epsilon=eps, name=name)


def small_resnet(rng, c=4):
    identity_block = rr.Residual(rr.Sequential([conv(rng, 3, c, c), bn(rng, c), rr.ReLU(), conv(rng, 3, c, c), bn(rng, c)]))
    projection_block = rr.Residual(
        rr.Sequential([conv(rng, 3, c, 2 * c, strides=2), bn(rng, 2 * c), rr.ReLU(), conv(rng, 3, 2 * c, 2 * c), bn(rng, 2 * c)]),
        skip=rr.Sequential([conv(rng, 1, c, 2 * c, strides=2, padding="valid"), bn(rng, 2 * c)]),
    )
    return rr.Sequential([
        conv(rng, 3, 2, c), bn(rng, c), rr.ReLU(), identity_block, projection_block,
        rr.GlobalAvgPool2D(), rr.Dense(rng.standard_normal((2 * c, 3)), rng.standard_normal(3)),
    ], name="small_resnet")


def manual_forward(model, x):
    """The forward pass written out from each leaf's forward, for the containers."""
    if isinstance(model, rr.Sequential):
        for layer in model.layers:
            x = manual_forward(layer, x)
        return x
    if isinstance(model, rr.Residual):
        s = manual_forward(model.skip, x) if model.skip is not None else x
        y = s + manual_forward(model.branch, x)
        return np.maximum(y, 0) if model.activation == "relu" else y
    return model.forward(x)


def test_sequential_forward_and_trace(rng):
    layers = [conv(rng, 3, 2, 3, name="c"), rr.ReLU(name="r"), rr.MaxPool2D(2, name="p"), rr.Flatten(name="f"),
              rr.Dense(rng.standard_normal((3 * 3 * 3, 2)), name="d")]
    model = rr.Sequential(layers, name="m")
    x = rng.standard_normal((2, 6, 6, 2))
    trace = model.trace(x)
    assert list(trace) == ["c", "r", "p", "f", "d", "m"]
    a = x
    for layer in layers:
        a = layer.forward(a)
        np.testing.assert_array_equal(trace[layer.name], a)
    np.testing.assert_array_equal(model.forward(x), a)
    assert trace.input is x and trace.output is trace["m"]


def test_trace_runs_each_layer_once(rng, monkeypatch):
    model = small_resnet(rng)
    calls = {}
    for layer in model.iter_layers():
        original = layer.forward

        def counted(x, _orig=original, _name=layer.name):
            calls[_name] = calls.get(_name, 0) + 1
            return _orig(x)

        monkeypatch.setattr(layer, "forward", counted)
    model.trace(rng.standard_normal((1, 8, 8, 2)))
    assert set(calls) == {layer.name for layer in model.iter_layers()} and set(calls.values()) == {1}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_residual_identity_and_projection(rng, dtype):
    model = small_resnet(rng).astype(dtype)
    x = rng.standard_normal((3, 8, 8, 2)).astype(dtype)
    y = model.forward(x)
    assert y.shape == (3, 3) and y.dtype == dtype
    np.testing.assert_allclose(y, manual_forward(model, x), rtol=1e-6)
    trace = model.trace(x)
    block = model.layers[4]
    assert block.skip is not None and trace[block.name].shape == (3, 4, 4, 8)
    u = trace[model.layers[3].name]
    np.testing.assert_allclose(np.maximum(block.sum_of(trace, u), 0), trace[block.name], rtol=1e-6)


def test_container_vjp_matches_finite_differences(rng):
    model = small_resnet(rng)
    x = rng.standard_normal((2, 6, 6, 2))
    g = rng.standard_normal((2, 3))
    np.testing.assert_allclose(model.vjp(x, g), numerical_vjp(model.forward, x, g), rtol=1e-5, atol=1e-7)
    trace = model.trace(x)
    np.testing.assert_array_equal(model.vjp(x, g, trace=trace), model.vjp(x, g))


def test_residual_shape_mismatch_and_duplicate_names(rng):
    block = rr.Residual(rr.Sequential([conv(rng, 3, 2, 3)]), name="blk")
    with pytest.raises(ValueError, match=r"block 'blk'.*one shape.*skip \(1, 4, 4, 2\).*branch \(1, 4, 4, 3\)"):
        block.forward(np.ones((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="unique layer names.*'x'"):
        rr.Sequential([rr.ReLU(name="x"), rr.ReLU(name="x")])


def test_get_layer_and_counts(rng):
    model = small_resnet(rng)
    first = model.layers[0]
    assert model.get_layer(first.name) is first
    assert model.num_params == sum(v.size for layer in model.iter_layers() for v in layer.params.values())
    with pytest.raises(KeyError):
        model.get_layer("nope")


@pytest.mark.parametrize("eps", [1e-3, 1.001e-5])
def test_fold_batchnorm_equivalence(rng, eps):
    model = small_resnet(rng)
    for layer in model.iter_layers():
        if isinstance(layer, rr.BatchNorm):
            layer.epsilon = eps
    x = rng.standard_normal((2, 8, 8, 2))
    before = {layer.name: {k: v.copy() for k, v in layer.params.items()} for layer in model.iter_layers()}
    folded = fold_batchnorm(model)
    assert unfolded_batchnorms(folded) == [] and len(unfolded_batchnorms(model)) == 6
    np.testing.assert_allclose(folded.forward(x), model.forward(x), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(folded.forward(x), model.forward(x), rtol=1e-10)
    for layer in model.iter_layers():  # the input model is untouched
        for k, v in layer.params.items():
            assert np.array_equal(v, before[layer.name][k])


def test_fold_batchnorm_can_share_what_it_does_not_change(rng):
    model = small_resnet(rng)
    x = rng.standard_normal((2, 8, 8, 2))
    shared = fold_batchnorm(model, copy_unchanged=False)
    copied = fold_batchnorm(model)
    np.testing.assert_array_equal(shared.forward(x), copied.forward(x))
    originals = {id(layer) for layer in model.iter_layers()}
    kept = [layer for layer in shared.iter_layers() if not isinstance(layer, (rr.Conv2D, rr.Dense))]
    assert kept and all(id(layer) in originals for layer in kept)
    assert not any(id(layer) in originals for layer in copied.iter_layers())


def test_fold_batchnorm_dense_without_bias(rng):
    model = rr.Sequential([rr.Dense(rng.standard_normal((4, 3))), bn(rng, 3), rr.ReLU()])
    folded = fold_batchnorm(model)
    assert [type(layer) for layer in folded.iter_layers()] == [rr.Dense, rr.ReLU]
    x = rng.standard_normal((5, 4))
    np.testing.assert_allclose(folded.forward(x), model.forward(x), rtol=1e-12)


def test_astype_switches_dtype_without_touching_original(rng):
    model = small_resnet(rng)
    m32 = model.astype(np.float32)
    assert m32.dtype == np.float32 and model.dtype == np.float64
    x = rng.standard_normal((1, 8, 8, 2))
    np.testing.assert_allclose(m32.forward(x.astype(np.float32)), model.forward(x), rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_two_in_a_row_and_dense(rng):
    """Two BatchNorms in a row both fold into the layer before them; a Dense takes one too."""
    model = rr.Sequential([rr.Conv2D(rng.standard_normal((3, 3, 2, 4))), bn(rng, 4), bn(rng, 4), rr.ReLU(),
                           rr.Flatten(), rr.Dense(rng.standard_normal((64, 3))), bn(rng, 3)])
    folded = fold_batchnorm(model)
    assert [layer.kind for layer in folded.iter_layers()] == ["conv2d", "relu", "flatten", "dense"]
    x = rng.standard_normal((2, 6, 6, 2))
    np.testing.assert_allclose(folded.forward(x), model.forward(x), rtol=1e-12, atol=1e-12)


def test_forward_overwrites_only_its_own_outputs(rng):
    """forward runs ReLU/BatchNorm in place on outputs it made, never on the caller's array or a view of it."""
    first = rr.Sequential([rr.ReLU(), bn(rng, 3), rr.Flatten(), rr.ReLU(), rr.Dense(rng.standard_normal((48, 2)))])
    block = rr.Residual(rr.Sequential([rr.ReLU(), bn(rng, 3), rr.Conv2D(rng.standard_normal((3, 3, 3, 3)), padding="same"),
                                       bn(rng, 3), rr.ReLU()]), activation="relu")
    cases = [(first, rng.standard_normal((2, 4, 4, 3))),
             (rr.Sequential([block, rr.Flatten(), rr.Dense(rng.standard_normal((48, 2)))]), rng.standard_normal((2, 4, 4, 3))),
             (small_resnet(rng), rng.standard_normal((2, 8, 8, 2))),
             # a BatchNorm then a ReLU: one pass on an output of the forward, two on the caller's array
             (rr.Sequential([rr.Conv2D(rng.standard_normal((3, 3, 3, 3)), padding="same"), bn(rng, 3), rr.ReLU(),
                             bn(rng, 3), rr.ReLU(), rr.Flatten()]), rng.standard_normal((2, 4, 4, 3))),
             (rr.Sequential([bn(rng, 3), rr.ReLU(), rr.Flatten()]), rng.standard_normal((2, 4, 4, 3))),
             # a residual block whose branch ends on the caller's array (an identity branch): y is a new array
             (rr.Sequential([rr.Residual(rr.Identity(), activation="relu"), rr.Flatten()]), rng.standard_normal((2, 4, 4, 3)))]
    for model, x in cases:
        before = x.copy()
        out = model.forward(x)
        np.testing.assert_array_equal(x, before)
        np.testing.assert_array_equal(out, model.trace(x).output)
