"""The model zoo: parameter counts equal Keras's and torchvision's, names, structure, output shapes, registry."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import rlrp_ref as rr
from rlrp_ref import models
from rlrp_ref.models import vgg

# Known totals: keras.applications model.count_params() (ResNet50 includes the
# 53,120 BatchNorm moving statistics) and torchvision's trainable parameters
# (VGG16 138,357,544; VGG19 143,667,240; ResNet50 25,557,032), to which rlrp_ref
# adds the BatchNorm running statistics (53,120 for ResNet50).
KNOWN = {
    ("vgg16", "keras"): 138_357_544,
    ("vgg16", "torchvision"): 138_357_544,
    ("vgg19", "keras"): 143_667_240,
    ("vgg19", "torchvision"): 143_667_240,
    ("resnet50", "keras"): 25_636_712,
    ("resnet50", "torchvision"): 25_557_032 + 53_120,
}


@pytest.mark.parametrize("name,variant", sorted(KNOWN))
def test_parameter_counts(name, variant):
    model = models.shape_model(name, variant=variant)
    assert model.num_params == KNOWN[(name, variant)]


def test_torchvision_resnet50_trainable_count():
    model = models.shape_model("resnet50", variant="torchvision")
    running = sum(layer.moving_mean.size + layer.moving_variance.size
                  for layer in model.iter_layers() if isinstance(layer, rr.BatchNorm))
    assert running == 53_120 and model.num_params - running == 25_557_032


def test_notop_counts():
    assert models.shape_model("vgg16", include_top=False).num_params == 14_714_688
    assert models.shape_model("resnet50", include_top=False).num_params == 23_587_712


def test_keras_vgg16_names_and_structure():
    model = models.shape_model("vgg16")
    weighted = [layer.name for layer in model.iter_layers() if layer.params]
    assert weighted == ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2", "block3_conv1", "block3_conv2",
                        "block3_conv3", "block4_conv1", "block4_conv2", "block4_conv3", "block5_conv1", "block5_conv2",
                        "block5_conv3", "fc1", "fc2", "predictions"]
    names = [layer.name for layer in model.iter_layers()]
    assert names[-7:] == ["block5_pool", "flatten", "fc1", "fc1_relu", "fc2", "fc2_relu", "predictions"]
    assert model.get_layer("block1_conv1").padding == "same"
    assert model.get_layer("block3_pool").pool_size == (2, 2)
    assert model.preprocessing == "caffe"
    notop = models.shape_model("vgg16", include_top=False)
    assert [layer.name for layer in notop.iter_layers()][-1] == "block5_pool"
    assert models.shape_model("vgg19").get_layer("block5_conv4").param_shapes()["kernel"] == (3, 3, 512, 512)


def test_torchvision_vgg16_names():
    model = models.shape_model("vgg16", variant="torchvision")
    names = [layer.name for layer in model.iter_layers()]
    assert names[:5] == ["features.0", "features.1", "features.2", "features.3", "features.4"]
    assert names[30:] == ["features.30", "avgpool", "flatten", "classifier.0", "classifier.1", "classifier.3",
                          "classifier.4", "classifier.6"]
    assert isinstance(model.get_layer("features.4"), rr.MaxPool2D)
    assert isinstance(model.get_layer("avgpool"), rr.Identity)  # 7x7 already at 224
    assert model.get_layer("classifier.0").param_shapes()["kernel"] == (25088, 4096)
    assert models.shape_model("vgg19", variant="torchvision").get_layer("features.36").pool_size == (2, 2)
    assert model.preprocessing == "torchvision"


def test_torchvision_adaptive_pool():
    assert isinstance(vgg.torchvision_avgpool(7, 7), rr.Identity)
    pool = vgg.torchvision_avgpool(14, 21)
    assert pool.pool_size == (2, 3) and pool.strides == (2, 3)
    x = np.arange(2 * 14 * 21 * 3, dtype=np.float64).reshape(2, 14, 21, 3)
    np.testing.assert_allclose(pool(x), x.reshape(2, 7, 2, 7, 3, 3).mean(axis=(2, 4)))
    with pytest.raises(ValueError, match=r"multiples of 7 .* found 8x8"):
        vgg.torchvision_avgpool(8, 8)
    with pytest.raises(ValueError, match="found 8x8"):
        models.shape_model("vgg16", variant="torchvision", input_shape=(256, 256, 3))
    big = models.shape_model("vgg16", variant="torchvision", input_shape=(448, 448, 3))
    assert big.get_layer("avgpool").pool_size == (2, 2)
    assert big.get_layer("classifier.0").param_shapes()["kernel"] == (25088, 4096)


def test_keras_resnet50_names_and_v1_details():
    model = models.shape_model("resnet50")
    names = [layer.name for layer in model.iter_all()]
    assert names[:6] == ["conv1_pad", "conv1_conv", "conv1_bn", "conv1_relu", "pool1_pad", "pool1_pool"]
    assert names[-2:] == ["predictions", "resnet50"]
    for suffix in ("_0_conv", "_0_bn", "_1_conv", "_1_bn", "_1_relu", "_2_conv", "_2_bn", "_2_relu", "_3_conv", "_3_bn",
                   "_out", "_branch", "_shortcut"):
        assert f"conv2_block1{suffix}" in names
    assert "conv2_block2_0_conv" not in names and "conv5_block3_out" in names
    block = model.get_layer("conv3_block1_out")
    assert isinstance(block, rr.Residual) and block.activation == "relu"
    assert model.get_layer("conv3_block1_1_conv").strides == (2, 2)  # v1: stride on the first 1x1
    assert model.get_layer("conv3_block1_2_conv").strides == (1, 1)
    assert model.get_layer("conv3_block1_0_conv").strides == (2, 2)
    assert model.get_layer("conv1_conv").padding == "valid" and model.get_layer("conv1_pad").padding == ((3, 3), (3, 3))
    assert model.get_layer("pool1_pool").padding == "valid"
    assert model.get_layer("conv4_block2_3_conv").bias is not None
    assert model.get_layer("conv4_block2_3_bn").epsilon == pytest.approx(1.001e-5)
    assert isinstance(model.get_layer("avg_pool"), rr.GlobalAvgPool2D)
    blocks = [layer for layer in model.iter_all() if isinstance(layer, rr.Residual)]
    assert len(blocks) == 16 and sum(b.skip is not None for b in blocks) == 4


def test_torchvision_resnet50_names_and_v15_details():
    model = models.shape_model("resnet50", variant="torchvision")
    names = [layer.name for layer in model.iter_all()]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    for name in ("layer1.0.conv1", "layer1.0.bn3", "layer1.0.downsample.0", "layer1.0.downsample.1", "layer4.2.conv3",
                 "layer1.0", "fc", "avgpool"):
        assert name in names
    assert model.get_layer("layer2.0.conv2").strides == (2, 2)  # v1.5: stride on the 3x3
    assert model.get_layer("layer2.0.conv1").strides == (1, 1)
    assert model.get_layer("layer2.0.downsample.0").strides == (2, 2)
    assert model.get_layer("conv1").padding == ((3, 3), (3, 3)) and model.get_layer("conv1").bias is None
    assert model.get_layer("maxpool").padding == ((1, 1), (1, 1))
    assert all(layer.bias is None for layer in model.iter_layers() if isinstance(layer, rr.Conv2D))
    assert {layer.epsilon for layer in model.iter_layers() if isinstance(layer, rr.BatchNorm)} == {1e-5}


@pytest.mark.parametrize("variant", ["keras", "torchvision"])
def test_resnet50_output_shapes(variant):
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    model = models.build("resnet50", variant=variant, num_classes=7, input_shape=(64, 64, 3), weights="random")
    out = model(x)
    assert out.shape == (2, 7) and out.dtype == np.float32 and np.all(np.isfinite(out)) and np.ptp(out) > 0
    notop = models.shape_model("resnet50", variant=variant, include_top=False, input_shape=(32, 32, 3))
    assert notop(x[:1, :32, :32]).shape == (1, 1, 1, 2048)


@pytest.mark.parametrize("name", ["vgg16", "vgg19"])
def test_keras_vgg_output_shapes(name):
    model = models.build(name, num_classes=5, input_shape=(64, 64, 3), weights="random", dtype="float64")
    assert model.get_layer("fc1").param_shapes()["kernel"] == (2 * 2 * 512, 4096)
    x = np.random.default_rng(1).standard_normal((1, 64, 64, 3))
    out = model(x)
    assert out.shape == (1, 5) and out.dtype == np.float64
    notop = models.shape_model(name, include_top=False, input_shape=(64, 64, 3))
    assert notop(x.astype(np.float32)).shape == (1, 2, 2, 512)


def test_random_weights_are_seeded_he_normal():
    a = models.build("resnet50", variant="torchvision", input_shape=(32, 32, 3), weights="random", seed=1)
    b = models.build("resnet50", variant="torchvision", input_shape=(32, 32, 3), weights=None, seed=1)
    c = models.build("resnet50", variant="torchvision", input_shape=(32, 32, 3))
    k = a.get_layer("layer3.1.conv2").kernel
    np.testing.assert_array_equal(k, b.get_layer("layer3.1.conv2").kernel)
    assert not np.array_equal(k, c.get_layer("layer3.1.conv2").kernel)  # default seed is 0
    assert abs(k.std() - np.sqrt(2 / (3 * 3 * 256))) < 0.02 * np.sqrt(2 / (3 * 3 * 256))
    bn = a.get_layer("layer3.1.bn2")
    assert np.all(bn.gamma == 1) and np.all(bn.beta == 0) and np.all(bn.moving_mean == 0) and np.all(bn.moving_variance == 1)


def test_build_from_file(tmp_path):
    import h5py

    source = models.build("resnet50", input_shape=(32, 32, 3), weights="random", seed=2)
    path = tmp_path / "resnet50.weights.h5"
    with h5py.File(path, "w") as f:  # a Keras 3 file with layer names, as Keras writes
        counters = {}
        for layer in source.iter_layers():
            if not layer.params:
                continue
            k = counters.get(layer.kind, 0)
            counters[layer.kind] = k + 1
            group = f.create_group(f"layers/{layer.kind}{'' if k == 0 else f'_{k}'}/vars")
            group.attrs["name"] = layer.name
            for i, value in enumerate(layer.params.values()):
                group[str(i)] = value
    model = models.build("resnet50", input_shape=(32, 32, 3), weights=path, dtype="float64")
    assert model.dtype == np.float64
    np.testing.assert_array_equal(model.get_layer("conv4_block6_2_conv").kernel,
                                  source.get_layer("conv4_block6_2_conv").kernel.astype(np.float64))
    with pytest.raises(ValueError, match=str(path)):
        models.build("resnet50", variant="torchvision", input_shape=(32, 32, 3), weights=path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'vgg11'"):
        models.build("vgg11")
    with pytest.raises(ValueError, match="variant"):
        models.build("resnet50", variant="caffe")
    with pytest.raises(ValueError, match="input_shape"):
        models.shape_model("resnet50", input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="num_classes"):
        models.shape_model("vgg16", num_classes=0)
    with pytest.raises(ValueError, match="dtype"):
        models.build("resnet50", input_shape=(32, 32, 3), dtype="int32")


def test_registry_register_and_lazy_module(monkeypatch):
    def tiny(*, variant, num_classes, input_shape, include_top, init):
        h, w, c = input_shape
        return rr.Sequential([rr.Flatten(name="flatten"),
                              rr.Dense(init("kernel", (h * w * c, num_classes)), init("bias", (num_classes,)), name="out")],
                             name="tiny")

    module = types.ModuleType("fake_zoo_tiny")
    module.builder = tiny
    module.INPUT_SHAPE = (4, 4, 1)
    monkeypatch.setitem(sys.modules, "fake_zoo_tiny", module)
    monkeypatch.setitem(models.LAZY_MODULES, "tiny_lazy", "fake_zoo_tiny")
    monkeypatch.setitem(models.LAZY_MODULES, "absent", "rlrp_ref.models.no_such_module")
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    assert "tiny_lazy" in models.available() and "absent" not in models.available()
    model = models.build("tiny_lazy", num_classes=3)
    assert model.input_shape == (4, 4, 1) and model(np.ones((2, 4, 4, 1), np.float32)).shape == (2, 3)
    models.register("tiny2", tiny, variants=("keras", "torchvision"), input_shape=(2, 2, 2))
    assert models.build("tiny2", variant="torchvision", num_classes=2).get_layer("out").kernel.shape == (8, 2)
