"""VGG16 and VGG19 (Simonyan and Zisserman, 2015), as Keras and torchvision build them.

Both variants compute the same function: 3x3 "same" convolutions with biases,
each followed by a ReLU, five 2x2 stride-2 max pools, then (with
``include_top``) three fully connected layers, ReLU after the first two. The
final softmax is never part of the model: relevance explains the logits.

``variant="keras"`` mirrors ``keras.applications.VGG16/VGG19``: layer names
``block1_conv1``, ..., ``block5_pool``, ``flatten``, ``fc1``, ``fc2``,
``predictions``; Keras folds the ReLU into the convolution, here it is its own
layer named ``<conv>_relu`` (``fc1_relu``, ``fc2_relu``). ``fc1`` takes the
feature map flattened in NHWC order, so its input size is
``(H // 32) * (W // 32) * 512``. Expects Keras "caffe" preprocessing: BGR
channel order, ImageNet mean subtracted, no scaling
(:func:`rlrp_ref.preprocess.keras_caffe`).

``variant="torchvision"`` mirrors ``torchvision.models.vgg16/vgg19``: layer
names are the module paths ``features.0``, ``features.1``, ..., ``avgpool``,
``classifier.0``, ``classifier.1``, ``classifier.3``, ``classifier.4``,
``classifier.6`` (the Dropout modules ``classifier.2`` and ``classifier.5``
are the identity at inference and left out; the flatten is ``flatten``).
torchvision's adaptive average pool to 7x7 is the identity when the feature
map is already 7x7 (224x224 input) and an average pool of size
``(h // 7, w // 7)`` when the sides are multiples of 7; other sizes raise
``ValueError``. The classifier sees the map flattened in NHWC order; loading a
torchvision state dict permutes ``classifier.0.weight`` from torch's (C, H, W)
flatten order (see :mod:`weights_import.torch`). Expects torchvision
preprocessing: RGB scaled to [0, 1], then ImageNet mean/std
(:func:`rlrp_ref.preprocess.torchvision_normalize`).
"""

from __future__ import annotations

from ..layers import AvgPool2D, Conv2D, Dense, Flatten, Identity, MaxPool2D, ReLU
from ..model import Sequential
from ._common import check_input_shape, check_num_classes, check_variant

#: Convolutions per block (filters 64, 128, 256, 512, 512).
CONFIGS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
FILTERS = (64, 128, 256, 512, 512)
VARIANTS = ("keras", "torchvision")
#: torchvision's adaptive pool output side.
TORCH_POOL_SIDE = 7


def _conv(init, cin, cout, name):
    return Conv2D(init("kernel", (3, 3, cin, cout)), init("bias", (cout,)), padding="same", name=name)


def _dense(init, n_in, n_out, name):
    return Dense(init("kernel", (n_in, n_out)), init("bias", (n_out,)), name=name)


def _features_hw(h, w):
    for _ in FILTERS:
        h, w = h // 2, w // 2
    return h, w


def _keras(arch, init, num_classes, input_shape, include_top):
    h, w, cin = input_shape
    layers = []
    for block, (n_convs, filters) in enumerate(zip(CONFIGS[arch], FILTERS), start=1):
        for i in range(1, n_convs + 1):
            name = f"block{block}_conv{i}"
            layers += [_conv(init, cin, filters, name), ReLU(name=f"{name}_relu")]
            cin = filters
        layers.append(MaxPool2D(2, 2, name=f"block{block}_pool"))
    if include_top:
        fh, fw = _features_hw(h, w)
        layers += [
            Flatten(name="flatten"),
            _dense(init, fh * fw * cin, 4096, "fc1"), ReLU(name="fc1_relu"),
            _dense(init, 4096, 4096, "fc2"), ReLU(name="fc2_relu"),
            _dense(init, 4096, num_classes, "predictions"),
        ]
    return layers


def torchvision_avgpool(h: int, w: int, name: str = "avgpool"):
    """torchvision's ``AdaptiveAvgPool2d((7, 7))`` for an ``h x w`` feature map, or ValueError."""
    side = TORCH_POOL_SIDE
    if (h, w) == (side, side):
        return Identity(name=name)
    if h % side or w % side:
        raise ValueError(
            f"torchvision VGG: adaptive average pool to {side}x{side} expected a feature map whose sides are "
            f"multiples of {side} (input sides multiples of {32 * side}, e.g. 224 or 448), found {h}x{w}"
        )
    return AvgPool2D((h // side, w // side), name=name)


def _torchvision(arch, init, num_classes, input_shape, include_top):
    h, w, cin = input_shape
    layers, index = [], 0
    for n_convs, filters in zip(CONFIGS[arch], FILTERS):
        for _ in range(n_convs):
            layers += [_conv(init, cin, filters, f"features.{index}"), ReLU(name=f"features.{index + 1}")]
            cin, index = filters, index + 2
        layers.append(MaxPool2D(2, 2, name=f"features.{index}"))
        index += 1
    if include_top:
        fh, fw = _features_hw(h, w)
        side = TORCH_POOL_SIDE
        layers += [
            torchvision_avgpool(fh, fw),
            Flatten(name="flatten"),
            _dense(init, cin * side * side, 4096, "classifier.0"), ReLU(name="classifier.1"),
            _dense(init, 4096, 4096, "classifier.3"), ReLU(name="classifier.4"),
            _dense(init, 4096, num_classes, "classifier.6"),
        ]
    return layers


def _builder(arch):
    def build_vgg(*, variant="keras", num_classes=1000, input_shape=(224, 224, 3), include_top=True, init):
        check_variant(arch, variant, VARIANTS)
        check_num_classes(arch, num_classes)
        shape = check_input_shape(arch, input_shape)
        make = _keras if variant == "keras" else _torchvision
        return Sequential(make(arch, init, num_classes, shape, include_top), name=arch)

    build_vgg.__name__ = f"build_{arch}"
    build_vgg.__doc__ = f"{arch.upper()} layers (see the module docstring for names and preprocessing)."
    return build_vgg


build_vgg16 = _builder("vgg16")
build_vgg19 = _builder("vgg19")
