"""Real-producer check: Keras 3 writes the files, rlrp-ref's logits equal Keras's.

Keras 3 (torch backend) builds VGG16, VGG19 and ResNet50 with ``weights=None``
and a fixed seed, without the final softmax (``classifier_activation=None``),
and saves both the legacy full-model ``.h5`` and the Keras 3 ``.weights.h5``.
Each file loads into ``rlrp_ref.models.build(name, variant="keras")`` and the
logits on the same caffe-preprocessed input equal Keras's to 1e-4 of the
largest logit (float32). Needs the ``crosscheck`` extra; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

os.environ["KERAS_BACKEND"] = "torch"
pytest.importorskip("torch", reason="needs torch (rlrp-ref[crosscheck] extra) as the Keras backend")
keras = pytest.importorskip("keras", reason="needs keras (rlrp-ref[crosscheck] extra)")

import weights_import  # noqa: E402
from rlrp_ref import models  # noqa: E402
from rlrp_ref.preprocess import keras_caffe  # noqa: E402
from rlrp_ref.validate import compare  # noqa: E402

# Keras's torch backend converts tensors with np.array(x) in its own code (numpy 2 deprecation), not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

APPS = {
    "vgg16": (keras.applications.VGG16, keras.applications.vgg16.preprocess_input, 224),
    "vgg19": (keras.applications.VGG19, keras.applications.vgg19.preprocess_input, 224),
    "resnet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input, 96),
}


def keras_model(name, size):
    keras.utils.set_random_seed(0)
    app = APPS[name][0]
    model = app(weights=None, classifier_activation=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(1)
    for layer in model.layers:  # BatchNorm must matter: random statistics, not Keras's identity ones
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.uniform(-0.2, 0.2, c),
                               rng.uniform(-0.5, 0.5, c), rng.uniform(0.5, 2.0, c)])
    return model


def inputs(name, size):
    """An RGB uint8 batch, preprocessed by Keras's preprocess_input and by rlrp_ref.preprocess.keras_caffe."""
    images = np.random.default_rng(2).integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    theirs = np.asarray(APPS[name][1](images.astype(np.float32)))
    ours = keras_caffe(images)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    return ours, theirs


def assert_logits_equal(ours, theirs):
    scale = np.abs(theirs).max()
    assert scale > 0 and np.ptp(theirs) > 1e-3 * scale, "degenerate Keras logits"
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    report = compare(theirs, ours, "logits", rtol=1e-4, atol=0.0)  # rlrp_ref.validate: per-sample max relative error
    assert report.passed, str(report)


@pytest.mark.parametrize("name", ["vgg16", "vgg19", "resnet50"])
def test_keras_files_give_keras_logits(tmp_path, name):
    size = APPS[name][2]
    km = keras_model(name, size)
    legacy, keras3 = tmp_path / f"{name}.h5", tmp_path / f"{name}.weights.h5"
    km.save(legacy)
    km.save_weights(keras3)
    x, x_keras = inputs(name, size)
    expected = np.asarray(km.predict(x_keras, verbose=0))
    del km
    assert weights_import.detect_layout(legacy) == "keras_h5_model"
    assert weights_import.detect_layout(keras3) == "keras3_weights"
    fits = models.inspect(keras3)["fits"]
    assert [(f["builder"], f["variant"], f["include_top"], f["num_classes"]) for f in fits] == [(name, "keras", True, 1000)]
    for path in (legacy, keras3):
        model = models.build(name, variant="keras", input_shape=(size, size, 3), weights=path)
        assert_logits_equal(model(x), expected)
        del model
    if name == "resnet50":
        # Keras files without the stored layer names: the numeric order must match Keras's model.layers
        unnamed = tmp_path / "unnamed.weights.h5"
        shutil.copy(keras3, unnamed)
        with h5py.File(unnamed, "a") as f:
            for group in f["layers"].values():
                if "vars" in group and "name" in group["vars"].attrs:
                    del group["vars"].attrs["name"]
        model = models.build(name, variant="keras", input_shape=(size, size, 3), weights=unnamed)
        assert_logits_equal(model(x), expected)
