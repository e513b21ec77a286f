"""ResNet50 (He et al., 2016), as Keras (v1) and torchvision (v1.5) build it.

Stem, then four stages of bottleneck blocks (3, 4, 6, 3 blocks; 64, 128, 256,
512 filters, 4x expansion), each block a :class:`rlrp_ref.model.Residual`
whose branch is conv 1x1 - BN - ReLU - conv 3x3 - BN - ReLU - conv 1x1 - BN
and whose skip is the identity or, in each stage's first block, conv 1x1 - BN;
the block output is ``relu(skip + branch)`` (Keras's ``Add`` then
``Activation``). With ``include_top``: global average pool, then the dense
classifier. The final softmax is never part of the model: relevance explains
the logits. ``include_top=False`` ends at the last block, as Keras's
``pooling=None``.

``variant="keras"`` mirrors ``keras.applications.ResNet50``: ResNet v1, the
stride on the first 1x1 conv of a stage's first block; convolutions with
biases; BatchNorm epsilon 1.001e-5; stem ``conv1_pad`` (zero padding 3),
``conv1_conv`` (valid 7x7 stride 2), ``conv1_bn``, ``conv1_relu``,
``pool1_pad`` (zero padding 1), ``pool1_pool`` (valid 3x3 stride 2 max pool).
Layer names are Keras's: ``conv2_block1_0_conv``/``_0_bn`` (the shortcut),
``_1_conv``, ``_1_bn``, ``_1_relu``, ``_2_...``, ``_3_conv``, ``_3_bn``;
the Residual is ``conv2_block1_out`` (Keras's ``_add`` and ``_out``), its
branch ``conv2_block1_branch`` and its skip ``conv2_block1_shortcut``; then
``avg_pool`` and ``predictions``. Expects Keras "caffe" preprocessing: BGR, ImageNet
mean subtracted (:func:`rlrp_ref.preprocess.keras_caffe`).

``variant="torchvision"`` mirrors ``torchvision.models.resnet50``: ResNet v1.5,
the stride on the 3x3 conv; no convolution biases; BatchNorm epsilon 1e-5;
``conv1`` (7x7 stride 2, padding 3), ``bn1``, ``relu``, ``maxpool`` (3x3
stride 2, padding 1 counted as ``-inf``). Layer names are the module paths:
``layer1.0.conv1``, ``layer1.0.bn1``, ``layer1.0.relu1``, ``layer1.0.conv2``,
..., ``layer1.0.bn3``; the skip ``layer1.0.downsample`` with
``layer1.0.downsample.0`` (conv) and ``layer1.0.downsample.1`` (BN); the
Residual is ``layer1.0`` and its branch ``layer1.0.branch`` (torchvision
reuses one ReLU module per block; here the three are ``relu1``, ``relu2`` and
the block's own activation); then ``avgpool`` and ``fc``. Expects torchvision
preprocessing: RGB in [0, 1], ImageNet mean/std
(:func:`rlrp_ref.preprocess.torchvision_normalize`).
"""

from __future__ import annotations

from ..layers import BatchNorm, Conv2D, Dense, GlobalAvgPool2D, MaxPool2D, ReLU, ZeroPad2D
from ..model import Residual, Sequential
from ._common import check_input_shape, check_num_classes, check_variant

#: (filters, blocks, stride of the first block) per stage, stages conv2..conv5 / layer1..layer4.
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
EXPANSION = 4
VARIANTS = ("keras", "torchvision")
EPSILON = {"keras": 1.001e-5, "torchvision": 1e-5}


class _Parts:
    """Conv and BN factories for one variant."""

    def __init__(self, init, variant):
        self.init = init
        self.bias = variant == "keras"
        self.epsilon = EPSILON[variant]

    def conv(self, k, cin, cout, name, strides=1, padding="valid"):
        bias = self.init("bias", (cout,)) if self.bias else None
        return Conv2D(self.init("kernel", (k, k, cin, cout)), bias, strides=strides, padding=padding, name=name)

    def bn(self, c, name):
        init = self.init
        return BatchNorm(init("gamma", (c,)), init("beta", (c,)), init("moving_mean", (c,)),
                         init("moving_variance", (c,)), epsilon=self.epsilon, name=name)


def _keras_block(p, cin, filters, stride, shortcut, name):
    out = EXPANSION * filters
    skip = None
    if shortcut:
        skip = Sequential([p.conv(1, cin, out, f"{name}_0_conv", strides=stride), p.bn(out, f"{name}_0_bn")],
                          name=f"{name}_shortcut")
    branch = Sequential([
        p.conv(1, cin, filters, f"{name}_1_conv", strides=stride), p.bn(filters, f"{name}_1_bn"), ReLU(name=f"{name}_1_relu"),
        p.conv(3, filters, filters, f"{name}_2_conv", padding="same"), p.bn(filters, f"{name}_2_bn"), ReLU(name=f"{name}_2_relu"),
        p.conv(1, filters, out, f"{name}_3_conv"), p.bn(out, f"{name}_3_bn"),
    ], name=f"{name}_branch")
    return Residual(branch, skip=skip, activation="relu", name=f"{name}_out")


def _torch_block(p, cin, filters, stride, shortcut, name):
    out = EXPANSION * filters
    skip = None
    if shortcut:
        skip = Sequential([p.conv(1, cin, out, f"{name}.downsample.0", strides=stride), p.bn(out, f"{name}.downsample.1")],
                          name=f"{name}.downsample")
    branch = Sequential([
        p.conv(1, cin, filters, f"{name}.conv1"), p.bn(filters, f"{name}.bn1"), ReLU(name=f"{name}.relu1"),
        p.conv(3, filters, filters, f"{name}.conv2", strides=stride, padding=((1, 1), (1, 1))),
        p.bn(filters, f"{name}.bn2"), ReLU(name=f"{name}.relu2"),
        p.conv(1, filters, out, f"{name}.conv3"), p.bn(out, f"{name}.bn3"),
    ], name=f"{name}.branch")
    return Residual(branch, skip=skip, activation="relu", name=name)


def build_resnet50(*, variant="keras", num_classes=1000, input_shape=(224, 224, 3), include_top=True, init):
    """ResNet50 layers (see the module docstring for names and preprocessing)."""
    check_variant("resnet50", variant, VARIANTS)
    check_num_classes("resnet50", num_classes)
    _, _, cin = check_input_shape("resnet50", input_shape)
    p = _Parts(init, variant)
    if variant == "keras":
        layers = [
            ZeroPad2D(3, name="conv1_pad"), p.conv(7, cin, 64, "conv1_conv", strides=2), p.bn(64, "conv1_bn"),
            ReLU(name="conv1_relu"), ZeroPad2D(1, name="pool1_pad"), MaxPool2D(3, 2, name="pool1_pool"),
        ]
    else:
        layers = [
            p.conv(7, cin, 64, "conv1", strides=2, padding=((3, 3), (3, 3))), p.bn(64, "bn1"), ReLU(name="relu"),
            MaxPool2D(3, 2, padding=((1, 1), (1, 1)), name="maxpool"),
        ]
    cin = 64
    for stage, (filters, blocks, stride) in enumerate(STAGES):
        for b in range(blocks):
            first = b == 0
            if variant == "keras":
                block = _keras_block(p, cin, filters, stride if first else 1, first, f"conv{stage + 2}_block{b + 1}")
            else:
                block = _torch_block(p, cin, filters, stride if first else 1, first, f"layer{stage + 1}.{b}")
            layers.append(block)
            cin = EXPANSION * filters
    if include_top:
        head = ("avg_pool", "predictions") if variant == "keras" else ("avgpool", "fc")
        layers += [GlobalAvgPool2D(name=head[0]),
                   Dense(init("kernel", (cin, num_classes)), init("bias", (num_classes,)), name=head[1])]
    return Sequential(layers, name="resnet50")
