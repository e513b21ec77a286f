"""The simple CNN builder and the shipped trained weights."""

from importlib import resources

import numpy as np
import pytest

import weights_import
from rlrp_ref import models
from rlrp_ref.models.simple_cnn import DATASET_CONFIGS, build_simple_cnn
from rlrp_ref.train import accuracy, load_dataset

WEIGHTS = resources.files("rlrp_ref.data").joinpath("weights")


def test_structure_and_names():
    model = build_simple_cnn((32, 32, 1), 4)
    assert [layer.name for layer in model.layers] == [
        "conv2d", "conv2d_relu", "max_pooling2d", "conv2d_1", "conv2d_1_relu", "max_pooling2d_1",
        "flatten", "dense", "dense_relu", "dense_1",
    ]
    assert [layer.kind for layer in model.layers] == [
        "conv2d", "relu", "max_pooling2d", "conv2d", "relu", "max_pooling2d", "flatten", "dense", "relu", "dense",
    ]
    assert model.get_layer("conv2d").kernel.shape == (3, 3, 1, 8)
    assert model.get_layer("conv2d_1").kernel.shape == (3, 3, 8, 16)
    assert model.get_layer("dense").kernel.shape == (8 * 8 * 16, 64)
    assert model.get_layer("dense_1").kernel.shape == (64, 4)
    assert model.num_params == (9 * 8 + 8) + (72 * 16 + 16) + (1024 * 64 + 64) + (64 * 4 + 4)
    trace = model.trace(np.zeros((2, 32, 32, 1), np.float32))
    assert trace["max_pooling2d"].shape == (2, 16, 16, 8)
    assert trace["max_pooling2d_1"].shape == (2, 8, 8, 16)
    assert trace.output.shape == (2, 4)


def test_digits_shape_and_headless_variant():
    model = build_simple_cnn((8, 8, 1), 10)
    assert model.forward(np.ones((3, 8, 8, 1), np.float32)).shape == (3, 10)
    headless = build_simple_cnn((8, 8, 1), 10, include_top=False)
    assert headless.layers[-1].name == "max_pooling2d_1"
    assert headless.forward(np.ones((1, 8, 8, 1), np.float32)).shape == (1, 2, 2, 16)


def test_registry_builds_the_same_model_with_the_same_seed():
    via_registry = models.build("simple_cnn", input_shape=(32, 32, 1), num_classes=4, seed=7)
    direct = build_simple_cnn((32, 32, 1), 4, seed=7)
    for a, b in zip(via_registry.iter_layers(), direct.iter_layers()):
        assert a.name == b.name
        for key in a.params:
            np.testing.assert_array_equal(a.params[key], b.params[key])
    other = build_simple_cnn((32, 32, 1), 4, seed=8)
    assert not np.array_equal(other.get_layer("dense").kernel, direct.get_layer("dense").kernel)
    assert "simple_cnn" in models.available()


@pytest.mark.parametrize("bad", [(30, 32, 1), (32, 32), (0, 0, 1), "32x32"])
def test_bad_input_shape_is_a_value_error(bad):
    with pytest.raises(ValueError, match="simple_cnn: input_shape"):
        build_simple_cnn(bad, 4)


def test_bad_variant_and_num_classes():
    with pytest.raises(ValueError, match="variants"):
        models.build("simple_cnn", variant="torchvision", input_shape=(32, 32, 1), num_classes=4)
    with pytest.raises(ValueError, match="num_classes"):
        build_simple_cnn((32, 32, 1), 0)


@pytest.mark.parametrize("dataset, minimum", [("shapes", 0.97), ("digits", 0.95)])
def test_shipped_weights_reach_the_promised_test_accuracy(dataset, minimum):
    path = WEIGHTS.joinpath(f"simple_cnn_{dataset}.h5")
    assert weights_import.detect_layout(path) == "keras_h5_model"
    model = models.build("simple_cnn", weights=str(path), **DATASET_CONFIGS[dataset])
    _, _, x_test, y_test = load_dataset(dataset)
    assert accuracy(model, x_test, y_test) >= minimum


def test_shipped_weights_do_not_fit_the_other_dataset():
    path = str(WEIGHTS.joinpath("simple_cnn_digits.h5"))
    with pytest.raises(weights_import.WeightsError, match="dense"):
        models.build("simple_cnn", weights=path, **DATASET_CONFIGS["shapes"])


def test_shipped_weights_load_in_keras_and_give_the_same_logits():
    """The files really are in the Keras legacy layout: Keras itself loads them into the same architecture."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    pytest.importorskip("torch", reason="needs torch (rlrp-ref[crosscheck] extra) as the Keras backend")
    keras = pytest.importorskip("keras", reason="needs keras (rlrp-ref[crosscheck] extra)")
    from rlrp_ref.data import digits
    from rlrp_ref.models.simple_cnn import load_bundled

    layers = keras.layers
    reference = keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(8, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(16, 3, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10),
    ])
    reference.load_weights(str(WEIGHTS.joinpath("simple_cnn_digits.h5")))
    x, _ = digits.load_split("test")
    ours = load_bundled("digits", dtype="float32").forward(x)
    theirs = np.asarray(reference.predict(x, verbose=0))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
