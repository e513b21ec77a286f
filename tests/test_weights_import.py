"""weights_import: every layout written here with h5py for tiny models; round trips and every error.

The fixtures follow what the real producers write (checked against Keras 3.15
and torch in tests/test_crosscheck_*.py):

- Keras application / ``save_weights`` ``.h5``: root attribute ``layer_names``;
  per layer a group with attribute ``weight_names`` (``conv0/kernel:0`` in Keras
  2, ``conv0/kernel`` in Keras 3) and the datasets at those relative paths;
- legacy full-model ``.h5``: the same under ``model_weights/``;
- Keras 3 ``.weights.h5``: ``layers/<class auto-name>/vars/<i>``, auto-names
  numbered in ``model.layers`` order, ``vars`` carrying the layer name in its
  ``name`` attribute (older files do not);
- torch state dict: one dataset per key, torch layouts.
"""

from __future__ import annotations

import os
import re

import h5py
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import rlrp_ref as rr
import weights_import
from rlrp_ref import models
from rlrp_ref.cli import main as cli_main
from weights_import import WeightsError
from weights_import.keras import keras_functional_order

# ---------------------------------------------------------------------------
# tiny models
# ---------------------------------------------------------------------------


def chain_model(rng, n_conv=12, channels=3, dtype=np.float64):
    """``n_conv`` equal-shape 3x3 convs (so only values reveal a wrong order), a BN, flatten, dense."""
    layers, cin = [], 2
    for i in range(n_conv):
        layers += [rr.Conv2D(rng.standard_normal((3, 3, cin, channels)) * 0.4, rng.standard_normal(channels) * 0.1,
                             padding="same", name=f"conv{i}"), rr.ReLU(name=f"relu{i}")]
        cin = channels
    layers += [
        rr.BatchNorm(rng.uniform(0.5, 1.5, channels), rng.standard_normal(channels) * 0.1,
                     rng.standard_normal(channels) * 0.1, rng.uniform(0.5, 2, channels), name="bn"),
        rr.Flatten(name="flatten"),
        rr.Dense(rng.standard_normal((4 * 4 * channels, 5)), rng.standard_normal(5), name="fc"),
    ]
    return rr.Sequential(layers, name="chain").astype(dtype)


def block_model(rng, dtype=np.float64):
    """Stem conv, one projection block (Keras ResNet names), global pool, dense."""
    def conv(k, cin, cout, name, strides=1):
        return rr.Conv2D(rng.standard_normal((k, k, cin, cout)) * 0.3, rng.standard_normal(cout) * 0.1,
                         strides=strides, padding="same", name=name)

    def bn(c, name):
        return rr.BatchNorm(rng.uniform(0.5, 1.5, c), rng.standard_normal(c) * 0.1, rng.standard_normal(c) * 0.1,
                            rng.uniform(0.5, 2, c), epsilon=1.001e-5, name=name)

    branch = rr.Sequential([
        conv(1, 3, 2, "b_1_conv", strides=2), bn(2, "b_1_bn"), rr.ReLU(name="b_1_relu"),
        conv(3, 2, 2, "b_2_conv"), bn(2, "b_2_bn"), rr.ReLU(name="b_2_relu"),
        conv(1, 2, 4, "b_3_conv"), bn(4, "b_3_bn"),
    ], name="b_branch")
    skip = rr.Sequential([conv(1, 3, 4, "b_0_conv", strides=2), bn(4, "b_0_bn")], name="b_shortcut")
    return rr.Sequential([
        conv(3, 2, 3, "stem_conv"), rr.ReLU(name="stem_relu"),
        rr.Residual(branch, skip=skip, name="b_out"),
        rr.GlobalAvgPool2D(name="avg_pool"), rr.Dense(rng.standard_normal((4, 3)), rng.standard_normal(3), name="predictions"),
    ], name="block").astype(dtype)


# Keras's model.layers order for block_model, as Keras 3 orders ResNet50
# (conv2_block1_1_conv, _1_bn, _1_relu, _2_conv, _2_bn, _2_relu, _0_conv, _3_conv, _0_bn, _3_bn).
BLOCK_KERAS_ORDER = ["stem_conv", "b_1_conv", "b_1_bn", "b_2_conv", "b_2_bn", "b_0_conv", "b_3_conv", "b_0_bn",
                     "b_3_bn", "predictions"]


def snapshot(model):
    return {layer.name: {k: v.copy() for k, v in layer.params.items()} for layer in model.iter_layers()}


def assert_params_equal(model, expected):
    for layer in model.iter_layers():
        for k, v in layer.params.items():
            np.testing.assert_array_equal(v, expected[layer.name][k], err_msg=f"{layer.name}.{k}")


def zeroed(model):
    """A copy with every parameter replaced by a different value, so a round trip shows."""
    out = model.copy()
    for layer in out.iter_layers():
        for k, v in layer.params.items():
            setattr(layer, k, np.full_like(v, 0.5))
    return out


# ---------------------------------------------------------------------------
# writers (what each producer writes)
# ---------------------------------------------------------------------------


def write_keras_h5(path, model, *, suffix=":0", under=None, as_bytes=True, dtype=None, skip=(), extra=None, mutate=None):
    """Keras application / save_weights layout (``under="model_weights"`` for a legacy full model)."""
    with h5py.File(path, "w") as f:
        root = f.create_group(under) if under else f
        names = []
        for layer in model.iter_layers():
            if layer.name in skip:
                continue
            names.append(layer.name)
            group = root.create_group(layer.name)
            weight_names = [f"{layer.name}/{p}{suffix}" for p in layer.params]
            group.attrs["weight_names"] = np.array(weight_names, dtype="S") if as_bytes else weight_names
            for wn, (p, v) in zip(weight_names, layer.params.items()):
                value = v if dtype is None else v.astype(dtype)
                if mutate is not None:
                    value = mutate(layer.name, p, value)
                group.create_dataset(wn, data=value)
        for name, arrays in (extra or {}).items():
            names.append(name)
            group = root.create_group(name)
            weight_names = [f"{name}/{p}{suffix}" for p in arrays]
            group.attrs["weight_names"] = np.array(weight_names, dtype="S")
            for wn, v in zip(weight_names, arrays.values()):
                group.create_dataset(wn, data=v)
        root.attrs["layer_names"] = np.array(names, dtype="S") if as_bytes else names
        if under:
            f.attrs["model_config"] = "{}"


def write_keras3(path, model, order, *, with_names=True, stored_names=None):
    """Keras 3 ``.weights.h5``: auto-names per class numbered in ``order`` (Keras's model.layers order)."""
    counters: dict[str, int] = {}
    layers = {layer.name: layer for layer in model.iter_layers()}
    with h5py.File(path, "w") as f:
        f.create_group("layers/input_layer/vars").attrs["name"] = "input_layer"
        for i, name in enumerate(order):
            layer = layers[name]
            k = counters.get(layer.kind, 0)
            counters[layer.kind] = k + 1
            auto = layer.kind if k == 0 else f"{layer.kind}_{k}"
            group = f.create_group(f"layers/{auto}/vars")
            if with_names:
                group.attrs["name"] = stored_names[i] if stored_names else name
            for j, v in enumerate(layer.params.values()):
                group.create_dataset(str(j), data=v)
        f.create_group("layers/activation/vars")
        f.create_group("vars")


def block_keras3(tmp_path, model, **kwargs):
    path = tmp_path / "block.weights.h5"
    write_keras3(path, model, BLOCK_KERAS_ORDER, **kwargs)
    return path


# ---------------------------------------------------------------------------
# Keras .h5 layouts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [":0", ""])
@pytest.mark.parametrize("under", [None, "model_weights"])
@pytest.mark.parametrize("as_bytes", [True, False])
def test_keras_h5_round_trip(tmp_path, rng, suffix, under, as_bytes):
    model = chain_model(rng)
    path = tmp_path / "w.h5"
    write_keras_h5(path, model, suffix=suffix, under=under, as_bytes=as_bytes)
    assert weights_import.detect_layout(path) == ("keras_h5_model" if under else "keras_h5")
    target = zeroed(model)
    weights_import.load(path, target)
    assert_params_equal(target, snapshot(model))
    x = rng.standard_normal((2, 4, 4, 2))
    np.testing.assert_array_equal(target(x), model(x))


def test_reads_into_the_model_dtype(tmp_path, rng):
    model = chain_model(rng, dtype=np.float64)
    path = tmp_path / "half.h5"
    write_keras_h5(path, model, dtype=np.float16)
    target = chain_model(rng, dtype=np.float32)
    weights_import.load(path, target)
    for layer in target.iter_layers():
        for k, v in layer.params.items():
            assert v.dtype == np.float32
            np.testing.assert_array_equal(v, model.get_layer(layer.name).params[k].astype(np.float16).astype(np.float32))


def test_read_returns_stored_arrays(tmp_path, rng):
    model = chain_model(rng, n_conv=2)
    path = tmp_path / "w.h5"
    write_keras_h5(path, model)
    stored = weights_import.read(path)
    assert list(stored) == ["conv0", "conv1", "bn", "fc"]
    np.testing.assert_array_equal(stored["fc"]["kernel:0"], model.get_layer("fc").kernel)
    assert list(stored["bn"]) == ["gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"]


def test_notop_file_into_include_top_false_model(tmp_path):
    top = models.build("resnet50", input_shape=(32, 32, 3), weights="random", seed=3)
    notop = models.build("resnet50", input_shape=(32, 32, 3), include_top=False, weights="random", seed=4)
    path = tmp_path / "resnet50_notop.h5"
    write_keras_h5(path, top, skip=("avg_pool", "predictions"))
    weights_import.load(path, notop)
    layer = notop.get_layer("conv5_block3_3_conv")
    np.testing.assert_array_equal(layer.kernel, top.get_layer("conv5_block3_3_conv").kernel)
    with pytest.raises(WeightsError, match="predictions"):
        weights_import.load(path, top)  # a notop file lacks the classifier


# ---------------------------------------------------------------------------
# Keras 3 .weights.h5
# ---------------------------------------------------------------------------


def test_keras3_numeric_order_not_alphabetical(tmp_path, rng):
    model = chain_model(rng, n_conv=12)
    order = [layer.name for layer in model.iter_layers() if layer.params]
    path = tmp_path / "chain.weights.h5"
    write_keras3(path, model, order, with_names=False)
    with h5py.File(path) as f:
        stored = [k for k in f["layers"] if k.startswith("conv2d")]
    assert sorted(stored)[:4] == ["conv2d", "conv2d_1", "conv2d_10", "conv2d_11"]  # the trap is there
    assert weights_import.detect_layout(path) == "keras3_weights"
    target = zeroed(model)
    weights_import.load(path, target)
    assert_params_equal(target, snapshot(model))


def test_keras3_residual_order_without_names(tmp_path, rng):
    model = block_model(rng)
    assert [layer.name for layer in keras_functional_order(model)] == BLOCK_KERAS_ORDER
    path = block_keras3(tmp_path, model, with_names=False)
    target = zeroed(model)
    weights_import.load(path, target)
    assert_params_equal(target, snapshot(model))
    x = rng.standard_normal((2, 6, 6, 2))
    np.testing.assert_array_equal(target(x), model(x))


def test_keras3_uses_stored_names_when_they_match(tmp_path, rng):
    model = block_model(rng)
    # written in execution order with names: the names, not the numbers, decide
    order = [layer.name for layer in model.iter_layers() if layer.params]
    path = tmp_path / "named.weights.h5"
    write_keras3(path, model, order, with_names=True)
    target = zeroed(model)
    weights_import.load(path, target)
    assert_params_equal(target, snapshot(model))


def test_keras3_foreign_names_fall_back_to_order(tmp_path, rng):
    model = block_model(rng)
    foreign = [f"layer_{i}" for i in range(len(BLOCK_KERAS_ORDER))]
    path = block_keras3(tmp_path, model, with_names=True, stored_names=foreign)
    target = zeroed(model)
    weights_import.load(path, target)
    assert_params_equal(target, snapshot(model))


def test_keras3_named_extra_layer_is_reported_by_name(tmp_path, rng):
    model = block_model(rng)
    path = block_keras3(tmp_path, model)
    with h5py.File(path, "a") as f:
        group = f.create_group("layers/dense_1/vars")
        group.attrs["name"] = "head_2"
        group["0"], group["1"] = np.ones((3, 2)), np.ones(2)
    target = zeroed(model)
    before = snapshot(target)
    with pytest.raises(WeightsError, match=r"layer 'head_2': expected a layer with weights in model 'block', found weights \[layers/dense_1/vars/0 \(3, 2\)"):
        weights_import.load(path, target)
    assert_params_equal(target, before)


def test_keras3_count_mismatch(tmp_path, rng):
    model = chain_model(rng, n_conv=12)
    smaller = chain_model(rng, n_conv=11)
    path = tmp_path / "chain.weights.h5"
    write_keras3(path, model, [layer.name for layer in model.iter_layers() if layer.params], with_names=False)
    before = snapshot(smaller)
    with pytest.raises(WeightsError, match=r"kind 'conv2d': expected 11 .* found 12"):
        weights_import.load(path, smaller)
    assert_params_equal(smaller, before)


# ---------------------------------------------------------------------------
# errors: all raise WeightsError naming file, layer, expected, found; model untouched
# ---------------------------------------------------------------------------


def _nan_in_fc_bias(name, p, value):
    if name == "fc" and p == "bias":
        value = value.copy()
        value[1] = np.nan
    return value


def _inf_in_fc_kernel(name, p, value):
    if name == "fc" and p == "kernel":
        value = value.copy()
        value[0, 0] = -np.inf
    return value


def _int_fc_kernel(name, p, value):
    return value.astype(np.int32) if (name, p) == ("fc", "kernel") else value


def _wrong_fc_shape(name, p, value):
    return value[:-1] if (name, p) == ("fc", "kernel") else value


def _negative_variance(name, p, value):
    return -np.abs(value) - 1 if (name, p) == ("bn", "moving_variance") else value


ERROR_CASES = {
    "nan": (dict(mutate=_nan_in_fc_bias), [r"'fc' bias", r"expected finite values, found 1 NaN or inf"]),
    "inf": (dict(mutate=_inf_in_fc_kernel), [r"'fc' kernel", r"expected finite values, found 1"]),
    "int dtype": (dict(mutate=_int_fc_kernel), [r"'fc' kernel", r"expected a float dtype, found int32"]),
    "shape": (dict(mutate=_wrong_fc_shape), [r"'fc' kernel", r"expected shape \(48, 5\), found \(47, 5\)"]),
    "missing layer": (dict(skip=("fc",)), [r"layer 'fc'", r"expected weights \[kernel \(48, 5\), bias \(5,\)\]", "found nothing"]),
    "extra layer": (dict(extra={"fc_extra": {"kernel": np.ones((5, 2)), "bias": np.ones(2)}}),
                    [r"layer 'fc_extra'", r"expected a layer with weights in model 'chain'", "does not have"]),
    "negative variance": (dict(mutate=_negative_variance), [r"'bn'", "moving_variance"]),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_name_file_layer_expected_found_and_leave_model_untouched(tmp_path, rng, case):
    kwargs, patterns = ERROR_CASES[case]
    model = chain_model(rng)
    path = tmp_path / "bad.h5"
    write_keras_h5(path, model, **kwargs)
    target = zeroed(model)
    before = snapshot(target)
    with pytest.raises(WeightsError) as info:
        weights_import.load(path, target)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message and message.startswith(str(path))
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    assert_params_equal(target, before)


def test_missing_file(tmp_path, rng):
    with pytest.raises(WeightsError, match=r"nope\.h5: expected an HDF5 weights file, found no such file"):
        weights_import.load(tmp_path / "nope.h5", chain_model(rng))


def test_not_hdf5(tmp_path, rng):
    path = tmp_path / "weights.h5"
    path.write_text("these are not weights\n")
    with pytest.raises(WeightsError, match="without the HDF5 signature"):
        weights_import.load(path, chain_model(rng))
    with pytest.raises(WeightsError, match="without the HDF5 signature"):
        weights_import.detect_layout(path)


def test_truncated_file(tmp_path, rng):
    model = chain_model(rng)
    full = tmp_path / "full.h5"
    write_keras_h5(full, model)
    data = full.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    target = zeroed(model)
    before = snapshot(target)
    with pytest.raises(WeightsError) as info:
        weights_import.load(cut, target)
    assert str(cut) in str(info.value) and "\n" not in str(info.value)
    assert_params_equal(target, before)


def test_unknown_layout(tmp_path, rng):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("something", data=np.ones(3))
    with pytest.raises(WeightsError, match=r"expected a known weights layout .* found top-level keys \['something'\]"):
        weights_import.load(path, chain_model(rng))


def test_keras3_shape_error_names_model_layer_and_stored_key(tmp_path, rng):
    model = block_model(rng)
    path = block_keras3(tmp_path, model, with_names=False)
    with h5py.File(path, "a") as f:  # conv2d_3 is b_0_conv in Keras's order; give it a wrong kernel
        del f["layers/conv2d_3/vars/0"]
        f["layers/conv2d_3/vars/0"] = np.ones((1, 1, 3, 5))
    target = zeroed(model)
    before = snapshot(target)
    with pytest.raises(WeightsError, match=r"layer 'b_0_conv' kernel \(layers/conv2d_3/vars/0\): expected shape \(1, 1, 3, 4\), found \(1, 1, 3, 5\)"):
        weights_import.load(path, target)
    assert_params_equal(target, before)


# ---------------------------------------------------------------------------
# torch state dicts
# ---------------------------------------------------------------------------


def torch_style_model(rng, dtype=np.float64):
    """features.0 conv (pad 1), features.1 BN, features.2 ReLU, features.3 max pool, flatten, classifier."""
    return rr.Sequential([
        rr.Conv2D(np.zeros((3, 3, 3, 4)), np.zeros(4), padding=((1, 1), (1, 1)), name="features.0"),
        rr.BatchNorm(np.ones(4), np.zeros(4), np.zeros(4), np.ones(4), epsilon=1e-5, name="features.1"),
        rr.ReLU(name="features.2"),
        rr.MaxPool2D(2, 2, name="features.3"),
        rr.Flatten(name="flatten"),
        rr.Dense(np.zeros((4 * 3 * 2, 6)), np.zeros(6), name="classifier.0"),
        rr.ReLU(name="classifier.1"),
        rr.Dense(np.zeros((6, 3)), np.zeros(3), name="classifier.3"),
    ], name="tiny_torch").astype(dtype)


def torch_state(rng):
    return {
        "features.0.weight": rng.standard_normal((4, 3, 3, 3)), "features.0.bias": rng.standard_normal(4),
        "features.1.weight": rng.uniform(0.5, 1.5, 4), "features.1.bias": rng.standard_normal(4) * 0.1,
        "features.1.running_mean": rng.standard_normal(4) * 0.1, "features.1.running_var": rng.uniform(0.5, 2, 4),
        "features.1.num_batches_tracked": np.array(7, dtype=np.int64),
        "classifier.0.weight": rng.standard_normal((6, 24)), "classifier.0.bias": rng.standard_normal(6),
        "classifier.3.weight": rng.standard_normal((3, 6)), "classifier.3.bias": rng.standard_normal(3),
    }


def torch_semantics_forward(state, x_nchw):
    """What torch computes, in NCHW with an einsum convolution: the oracle for the layout conversion."""
    w, b = state["features.0.weight"], state["features.0.bias"]
    xp = np.pad(x_nchw, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(xp, (3, 3), axis=(2, 3))  # (N, C, H, W, 3, 3)
    y = np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]
    scale = state["features.1.weight"] / np.sqrt(state["features.1.running_var"] + 1e-5)
    y = (y - state["features.1.running_mean"][None, :, None, None]) * scale[None, :, None, None] + state["features.1.bias"][None, :, None, None]
    y = np.maximum(y, 0)
    n, c, h, wd = y.shape
    y = y.reshape(n, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
    y = y.reshape(n, -1)  # torch.flatten: (C, H, W) order
    y = np.maximum(y @ state["classifier.0.weight"].T + state["classifier.0.bias"], 0)
    return y @ state["classifier.3.weight"].T + state["classifier.3.bias"]


def test_assign_state_dict_matches_torch_semantics(rng):
    state = torch_state(rng)
    model = torch_style_model(rng)
    weights_import.assign_state_dict(model, state)
    x = rng.standard_normal((2, 3, 6, 4))  # NCHW, non-square so H and W cannot be confused
    expected = torch_semantics_forward(state, x)
    np.testing.assert_allclose(model(x.transpose(0, 2, 3, 1)), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(model.get_layer("features.0").kernel, state["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("classifier.3").kernel, state["classifier.3.weight"].T)


def test_state_dict_h5_round_trip(tmp_path, rng):
    state = torch_state(rng)
    path = tmp_path / "sd.h5"
    with h5py.File(path, "w") as f:
        for key, value in state.items():
            f[key] = value
    assert weights_import.detect_layout(path) == "torch_state_dict"
    model = torch_style_model(rng)
    weights_import.load(path, model)
    x = rng.standard_normal((1, 3, 6, 4))
    np.testing.assert_allclose(model(x.transpose(0, 2, 3, 1)), torch_semantics_forward(state, x), rtol=1e-10, atol=1e-10)


STATE_ERRORS = {
    "missing": (lambda s: s.pop("classifier.3.bias"), r"layer 'classifier.3' \(dense\): expected parameters \[kernel \(6, 3\), bias \(3,\)\], found \[kernel \(6, 3\)\]"),
    "extra": (lambda s: s.update({"classifier.9.weight": np.ones((2, 3))}), r"layer 'classifier.9': expected a layer with weights"),
    "shape": (lambda s: s.update({"classifier.3.weight": np.ones((3, 7))}), r"layer 'classifier.3' kernel \(classifier.3.weight\): expected shape \(6, 3\), found \(7, 3\) after torch \(out, in\)"),
    "dtype": (lambda s: s.update({"classifier.3.bias": np.ones(3, dtype=np.int64)}), r"layer 'classifier.3' bias .*expected a float dtype, found int64"),
    "nan": (lambda s: s["classifier.3.bias"].__setitem__(0, np.nan), r"layer 'classifier.3' bias .*expected finite values"),
    "unknown tensor": (lambda s: s.update({"features.0.running_mean": np.ones(4)}), r"layer 'features.0' \(conv2d\): expected tensors \['bias', 'weight'\], found 'features.0.running_mean'"),
}


@pytest.mark.parametrize("case", sorted(STATE_ERRORS))
def test_state_dict_errors_leave_model_untouched(rng, case):
    change, pattern = STATE_ERRORS[case]
    good = torch_style_model(rng)
    weights_import.assign_state_dict(good, torch_state(np.random.default_rng(5)))
    before = snapshot(good)
    state = torch_state(rng)
    change(state)
    with pytest.raises(WeightsError, match=r"^state dict: " + pattern):
        weights_import.assign_state_dict(good, state)
    assert_params_equal(good, before)


def test_torch_to_h5_converts_a_checkpoint(tmp_path, rng):
    torch = pytest.importorskip("torch", reason="needs torch (rlrp-ref[crosscheck] extra)")
    from weights_import import torch_to_h5

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                                torch.nn.ReLU(), torch.nn.MaxPool2d(2))
            self.classifier = torch.nn.Sequential(torch.nn.Linear(24, 6), torch.nn.ReLU(), torch.nn.Dropout(), torch.nn.Linear(6, 3))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    torch.manual_seed(0)
    net = Tiny().double().eval()
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-0.5, 0.5)
        net.features[1].running_var.uniform_(0.5, 2.0)
    pth, h5 = tmp_path / "tiny.pth", tmp_path / "tiny.h5"
    torch.save({"state_dict": net.state_dict()}, pth)
    assert torch_to_h5.main([str(pth), str(h5)]) == 0
    with h5py.File(h5) as f:
        assert f.attrs["format"] == "torch_state_dict"
        assert f["features.0.weight"].shape == (4, 3, 3, 3)  # torch layout kept in the file
        assert "features.1.num_batches_tracked" not in f
    model = torch_style_model(rng)
    weights_import.load(h5, model)
    x = rng.standard_normal((2, 3, 6, 4))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x.transpose(0, 2, 3, 1)), expected, rtol=1e-10, atol=1e-10)
    assert torch_to_h5.main([str(tmp_path / "missing.pth"), str(h5)]) == 2


# ---------------------------------------------------------------------------
# inspect and the CLI
# ---------------------------------------------------------------------------


def write_shapes_only(path, model, layout, skip=()):
    """A full-size file whose datasets are declared but never written (HDF5 allocates nothing)."""
    with h5py.File(path, "w") as f:
        if layout == "torch_state_dict":
            f.attrs["format"] = "torch_state_dict"
            names = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                     "moving_mean": "running_mean", "moving_variance": "running_var"}
            for layer in model.iter_layers():
                for p, shape in layer.param_shapes().items():
                    if p == "kernel":
                        shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
                    f.create_dataset(f"{layer.name}.{names[p]}", shape=shape, dtype="f4")
            return
        names = []
        for layer in model.iter_layers():
            if layer.name in skip:
                continue
            names.append(layer.name)
            group = f.create_group(layer.name)
            group.attrs["weight_names"] = np.array([f"{layer.name}/{p}:0" for p in layer.params], dtype="S")
            for p, shape in layer.param_shapes().items():
                group.create_dataset(f"{layer.name}/{p}:0", shape=shape, dtype="f4")
        f.attrs["layer_names"] = np.array(names, dtype="S")


def test_inspect_recognises_vgg16_keras_and_notop(tmp_path):
    shape_model = models.shape_model("vgg16")
    assert shape_model.get_layer("fc1").param_shapes() == {"kernel": (25088, 4096), "bias": (4096,)}
    full, notop = tmp_path / "vgg16.h5", tmp_path / "vgg16_notop.h5"
    write_shapes_only(full, shape_model, "keras_h5")
    write_shapes_only(notop, shape_model, "keras_h5", skip=("fc1", "fc2", "predictions"))
    assert os.path.getsize(full) < 1_000_000
    info = models.inspect(full)
    assert info["layout"] == "keras_h5" and info["num_params"] == 138_357_544
    assert info["layers"][0] == ("block1_conv1", [("kernel:0", (3, 3, 3, 64), "float32"), ("bias:0", (64,), "float32")])
    assert info["fits"] == [{"builder": "vgg16", "variant": "keras", "include_top": True, "num_classes": 1000,
                             "input_shape": (224, 224, 3)}]
    fits = models.inspect(notop)["fits"]
    assert [(f["builder"], f["variant"], f["include_top"]) for f in fits] == [("vgg16", "keras", False)]


def test_inspect_recognises_torchvision_resnet50_with_other_classes(tmp_path):
    path = tmp_path / "resnet50_tv.h5"
    write_shapes_only(path, models.shape_model("resnet50", variant="torchvision", num_classes=10), "torch_state_dict")
    info = models.inspect(path)
    assert info["layout"] == "torch_state_dict"
    assert info["num_params"] == 25_610_152 - 2049 * 1000 + 2049 * 10
    assert [(f["builder"], f["variant"], f["include_top"], f["num_classes"]) for f in info["fits"]] == [
        ("resnet50", "torchvision", True, 10)]


@pytest.mark.parametrize("with_names", [True, False])
def test_inspect_keras3_vgg16_prefers_stored_names(tmp_path, with_names):
    shape_model = models.shape_model("vgg16")
    path = tmp_path / "vgg16.weights.h5"
    with h5py.File(path, "w") as f:  # declared, never written: no storage allocated
        for i, layer in enumerate(layer for layer in shape_model.iter_layers() if layer.params):
            auto = "conv2d" if i == 0 else ("dense" if layer.name == "fc1" else None)
            auto = auto or (f"conv2d_{i}" if layer.kind == "conv2d" else f"dense_{i - 13}")
            group = f.create_group(f"layers/{auto}/vars")
            if with_names:
                group.attrs["name"] = layer.name
            for j, shape in enumerate(layer.param_shapes().values()):
                group.create_dataset(str(j), shape=shape, dtype="f4")
    fits = [(f["builder"], f["variant"]) for f in models.inspect(path)["fits"]]
    # torchvision's VGG16 has the same shapes in the same order: only the stored names tell them apart
    assert fits == ([("vgg16", "keras")] if with_names else [("vgg16", "keras"), ("vgg16", "torchvision")])


def test_inspect_reports_no_fit(tmp_path, rng):
    path = tmp_path / "chain.h5"
    write_keras_h5(path, chain_model(rng))
    info = models.inspect(path)
    # conv0 2->3, eleven convs 3->3, BN over 3 channels, dense 48->5
    assert info["fits"] == [] and info["num_params"] == (54 + 3) + 11 * (81 + 3) + 4 * 3 + (48 * 5 + 5)
    assert "fits: no registered builder" in weights_import.format_inspection(info)
    # weights_import alone does not know the model zoo: without candidates nothing is matched (None, not "no fit")
    for plain in (weights_import.inspect(path), models.inspect(path, fits=False)):
        assert plain["fits"] is None and plain["layers"] == info["layers"]
        assert "fits:" not in weights_import.format_inspection(plain)


def test_inspect_takes_the_first_candidate_of_a_group_that_fits(tmp_path, rng):
    model = chain_model(rng)
    path = tmp_path / "chain.h5"
    write_keras_h5(path, model)
    seen = []

    def candidates(class_counts):
        seen.append(class_counts)
        make = lambda: chain_model(np.random.default_rng(0))  # noqa: E731  (the same shapes and names)
        yield [({"name": "wrong shapes"}, lambda: models.shape_model("vgg16")), ({"name": "first"}, make),
               ({"name": "second"}, make)]
        yield [({"name": "first"}, make)]  # tried already: not listed twice
        yield [({"name": "third"}, make)]

    assert weights_import.inspect(path, candidates=candidates)["fits"] == [{"name": "first"}, {"name": "third"}]
    assert seen == [[5]]  # the dense layer's 5 outputs


def test_weights_import_does_not_import_the_model_zoo():
    """No import cycle: weights_import builds layers (rlrp_ref.layers, rlrp_ref.model) but never imports rlrp_ref.models."""
    import ast
    from pathlib import Path

    found = []
    for source in sorted(Path(weights_import.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module else []
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [(source.name, name) for name in names if name.startswith("rlrp_ref.models") or name == "rlrp_ref"]
    assert found == []


def test_cli_inspect(tmp_path, rng, capsys):
    path = tmp_path / "block.weights.h5"
    write_keras3(path, block_model(rng), BLOCK_KERAS_ORDER)
    assert cli_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "layout: keras3_weights" in out and "conv2d_3 (b_0_conv): 0 (1, 1, 3, 4) float64" in out
    assert "parameters: " in out


def test_cli_inspect_bad_file_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert cli_main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlrp-ref inspect: error: ") and str(path) in err
