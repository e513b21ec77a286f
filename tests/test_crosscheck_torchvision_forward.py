"""Real-producer check: torchvision's vgg16 and resnet50 through the HDF5 state dict give torch's logits.

Seeded torchvision models in ``eval()`` mode (ResNet50 with random BatchNorm
statistics so BatchNorm matters) are saved with ``torch.save``, converted by
``python -m weights_import.torch_to_h5`` and loaded into
``rlrp_ref.models.build(name, variant="torchvision")``; the logits on the same
torchvision-normalised input equal torch's to 1e-4 of the largest logit
(float32). :func:`weights_import.assign_state_dict` is checked straight from
the in-memory state dict. Needs the ``crosscheck`` extra; skipped otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (rlrp-ref[crosscheck] extra)")
torchvision = pytest.importorskip("torchvision", reason="needs torchvision (rlrp-ref[crosscheck] extra)")

import weights_import  # noqa: E402
from rlrp_ref import models  # noqa: E402
from rlrp_ref.preprocess import torchvision_normalize  # noqa: E402
from rlrp_ref.validate import compare  # noqa: E402
from weights_import import torch_to_h5  # noqa: E402


def torch_model(name):
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return net


def inputs(size):
    """An RGB uint8 batch, normalised by torchvision's transforms and by rlrp_ref.preprocess (NHWC)."""
    from torchvision.transforms import functional as TF

    images = np.random.default_rng(3).integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    theirs = torch.stack([TF.normalize(TF.to_tensor(img), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) for img in images])
    ours = torchvision_normalize(images)
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-5)
    return ours, theirs


def assert_logits_equal(ours, theirs):
    scale = np.abs(theirs).max()
    assert scale > 0 and np.ptp(theirs) > 1e-3 * scale, "degenerate torch logits"
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    report = compare(theirs, ours, "logits", rtol=1e-4, atol=0.0)  # rlrp_ref.validate: per-sample max relative error
    assert report.passed, str(report)


@pytest.mark.parametrize("name,size", [("vgg16", 224), ("resnet50", 96)])
def test_torchvision_state_dict_gives_torch_logits(tmp_path, name, size):
    net = torch_model(name)
    x, x_torch = inputs(size)
    with torch.no_grad():
        expected = net(x_torch).numpy()
    pth, h5 = tmp_path / f"{name}.pth", tmp_path / f"{name}.h5"
    torch.save(net.state_dict(), pth)
    assert torch_to_h5.main([str(pth), str(h5)]) == 0
    assert weights_import.detect_layout(h5) == "torch_state_dict"
    model = models.build(name, variant="torchvision", input_shape=(size, size, 3), weights=h5)
    assert_logits_equal(model(x), expected)
    del model
    direct = models.build(name, variant="torchvision", input_shape=(size, size, 3), weights="random")
    weights_import.assign_state_dict(direct, net.state_dict())
    assert_logits_equal(direct(x), expected)
