"""Cross-checks against Zennit and torch autograd, both sides in float64.

The small torch models are converted by the tiny converter below; the
torchvision VGG16 and ResNet50 go through ``rlrp_ref.models.build(...,
variant="torchvision")`` and ``weights_import.assign_state_dict``. Each method
must agree to a relative max difference of 1e-6 (``max |ours - theirs| / max |theirs|``).
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (rlrp-ref[crosscheck] extra)")
zennit = pytest.importorskip("zennit", reason="needs zennit (rlrp-ref[crosscheck] extra)")
torchvision = pytest.importorskip("torchvision", reason="needs torchvision (rlrp-ref[crosscheck] extra)")

from torch import nn  # noqa: E402
from torchvision.models.resnet import BasicBlock  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import (  # noqa: E402
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.rules import AlphaBeta, Epsilon, ZPlus  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402
from zennit.types import Linear  # noqa: E402

import rlrp_ref as rr  # noqa: E402
from rlrp_ref.validate import compare  # noqa: E402

RTOL = 1e-6


# ---------------------------------------------------------------------------
# a tiny torch -> rlrp_ref converter (NCHW -> NHWC, OIHW -> HWIO)
# ---------------------------------------------------------------------------


def _np(t):
    return t.detach().cpu().numpy().astype(np.float64)


def _conv(m, name):
    assert m.groups == 1 and m.dilation == (1, 1)
    ph, pw = m.padding
    return rr.Conv2D(_np(m.weight).transpose(2, 3, 1, 0), None if m.bias is None else _np(m.bias),
                     strides=m.stride, padding=((ph, ph), (pw, pw)), name=name)


def _bn(m, name):
    return rr.BatchNorm(_np(m.weight), _np(m.bias), _np(m.running_mean), _np(m.running_var), epsilon=m.eps, name=name)


def convert(module, prefix, chw):
    """``(layers, chw)``: our layers for a torch module fed by ``chw = (C, H, W)`` (None after flattening)."""
    def name(suffix):
        return f"{prefix}.{suffix}" if prefix else suffix

    if isinstance(module, nn.Sequential):
        layers = []
        for key, child in module.named_children():
            sub, chw = convert(child, name(key), chw)
            layers += sub
        return layers, chw
    if isinstance(module, nn.Conv2d):
        layer = _conv(module, prefix)
        c, h, w = chw
        out = layer.forward(np.zeros((1, h, w, c)))
        return [layer], (out.shape[3], out.shape[1], out.shape[2])
    if isinstance(module, nn.BatchNorm2d):
        return [_bn(module, prefix)], chw
    if isinstance(module, nn.ReLU):
        return [rr.ReLU(name=prefix)], chw
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        assert not getattr(module, "ceil_mode", False)
        p = module.padding if isinstance(module.padding, tuple) else (module.padding, module.padding)
        cls = rr.MaxPool2D if isinstance(module, nn.MaxPool2d) else rr.AvgPool2D
        layer = cls(module.kernel_size, module.stride, padding=((p[0], p[0]), (p[1], p[1])), name=prefix)
        c, h, w = chw
        out = layer.forward(np.zeros((1, h, w, c)))
        return [layer], (c, out.shape[1], out.shape[2])
    if isinstance(module, nn.AdaptiveAvgPool2d):
        assert module.output_size in (1, (1, 1))
        return [rr.GlobalAvgPool2D(name=prefix)], (chw[0], 1, 1)
    if isinstance(module, nn.Flatten):
        return [rr.Flatten(name=prefix)], ("flat", chw)
    if isinstance(module, nn.Linear):
        weight = _np(module.weight)
        if isinstance(chw, tuple) and chw and chw[0] == "flat":
            c, h, w = chw[1]
            # torch flattens (C, H, W); ours flattens (H, W, C)
            weight = weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
        return [rr.Dense(weight.T, None if module.bias is None else _np(module.bias), name=prefix)], None
    if isinstance(module, BasicBlock):
        branch, out_chw = convert(nn.Sequential(module.conv1, module.bn1, nn.ReLU(), module.conv2, module.bn2), name("branch"), chw)
        skip = None
        if module.downsample is not None:
            skip, _ = convert(module.downsample, name("downsample"), chw)
            skip = rr.Sequential(skip, name=name("downsample"))
        return [rr.Residual(rr.Sequential(branch, name=name("branch")), skip, activation="relu", name=prefix)], out_chw
    raise TypeError(f"converter: unsupported module {type(module).__name__}")


def to_ours(torch_model, input_chw):
    layers, _ = convert(torch_model, "", input_chw)
    return rr.Sequential(layers, name="converted")


def small_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 5),
    )
    return _randomize(model), (3, 16, 16), [SequentialMergeBatchNorm()]


def small_resnet():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        BasicBlock(8, 8),
        BasicBlock(8, 12, stride=2, downsample=nn.Sequential(nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12))),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4),
    )
    return _randomize(model), (3, 12, 12), [ResNetCanonizer()]


def _randomize(model):
    """Random BatchNorm statistics and nonzero biases, so folding and bias handling are exercised."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return absorb_bn_eps(model.double().eval())


def absorb_bn_eps(model):
    """Move each BatchNorm's ``eps`` into its running variance: the same function, ``eps = 0``.

    Zennit's ``MergeBatchNorm`` folds BN into the conv before it, then leaves
    the BN as ``x / sqrt(1 + eps)`` (running_var = 1 with its eps kept), so with
    ``eps > 0`` Zennit explains a model whose every folded BN is scaled by
    ``(1 + eps)^(-1/2)`` (about 5e-6 per BN with torch's 1e-5). Moving eps into
    the variance makes its folded model exactly the model both sides explain.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.add_(m.eps)
                m.eps = 0.0
    return model


# ---------------------------------------------------------------------------
# running both sides
# ---------------------------------------------------------------------------


def zennit_composite(method, canonizers, low=None, high=None):
    if method == "epsilon":
        return LayerMapComposite(layer_map_base() + [(Linear, Epsilon(1e-3))], canonizers=canonizers)
    if method == "zplus":
        return LayerMapComposite(layer_map_base() + [(Linear, ZPlus())], canonizers=canonizers)
    if method == "alphabeta":
        return LayerMapComposite(layer_map_base() + [(Linear, AlphaBeta(2.0, 1.0))], canonizers=canonizers)
    if method == "epsilon_plus":
        return EpsilonPlus(canonizers=canonizers)
    if method == "epsilon_plus_flat":
        return EpsilonPlusFlat(canonizers=canonizers)
    if method == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(canonizers=canonizers)
    if method == "epsilon_gamma_box":
        return EpsilonGammaBox(low=torch.as_tensor(low), high=torch.as_tensor(high), canonizers=canonizers)
    raise AssertionError(method)


OUR_PARAMS = {"epsilon": dict(eps=1e-3)}


def zennit_relevance(torch_model, x_nhwc, method, canonizers, target, **bounds):
    x = torch.tensor(x_nhwc.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    if method == "gradient":
        out = torch_model(x)
        onehot = torch.nn.functional.one_hot(torch.as_tensor(target), out.shape[1]).double()
        (grad,) = torch.autograd.grad(out, x, grad_outputs=onehot)
        return grad.numpy().transpose(0, 2, 3, 1), out.detach().numpy()
    if "low" in bounds:
        bounds = {k: np.asarray(v, dtype=np.float64).reshape((1, -1, 1, 1)) if np.ndim(v) else v for k, v in bounds.items()}
    composite = zennit_composite(method, canonizers, **bounds)
    with torch.no_grad():
        logits = torch_model(x)
    start = torch.zeros_like(logits)
    start[torch.arange(len(target)), torch.as_tensor(target)] = logits[torch.arange(len(target)), torch.as_tensor(target)]
    with Gradient(model=torch_model, composite=composite) as attributor:
        out, relevance = attributor(x, start)
    return relevance.detach().numpy().transpose(0, 2, 3, 1), out.detach().numpy()


def assert_close(ours, theirs, what):
    assert np.abs(theirs).max() > 0, f"{what}: Zennit gave an all-zero attribution"
    report = compare(theirs, ours, what, rtol=RTOL, atol=0.0)  # rlrp_ref.validate: per-sample max relative error
    assert report.passed, f"{what}: relative max difference {report.max_rel_error:.3g} > {RTOL}\n{report}"
    return report.max_rel_error


SMALL_METHODS = ["epsilon", "zplus", "alphabeta", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box",
                 "epsilon_alpha2_beta1", "gradient"]


@pytest.mark.parametrize("net", ["small_cnn", "small_resnet"])
@pytest.mark.parametrize("method", SMALL_METHODS)
def test_small_models_match_zennit(net, method):
    torch_model, chw, canonizers = {"small_cnn": small_cnn, "small_resnet": small_resnet}[net]()
    ours = to_ours(torch_model, chw)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, chw[1], chw[2], chw[0]))
    bounds = {}
    if method == "epsilon_gamma_box":
        bounds = dict(low=np.array([-3.0, -2.5, -2.0]), high=np.array([3.0, 2.5, 2.0]))
    e = rr.explain(ours, x, method=method, **OUR_PARAMS.get(method, {}), **bounds)
    theirs, logits = zennit_relevance(torch_model, x, method, canonizers, e.target, **bounds)
    np.testing.assert_allclose(e.logits, logits, rtol=1e-10, atol=1e-12)
    assert_close(e.relevance, theirs, f"{net}/{method}")


def test_scalar_box_bounds_match_zennit():
    torch_model, chw, canonizers = small_cnn()
    ours = to_ours(torch_model, chw)
    x = np.random.default_rng(4).uniform(-1, 1, (1, chw[1], chw[2], chw[0]))
    e = rr.explain(ours, x, method="epsilon_gamma_box", low=-1.0, high=1.0, gamma=0.5)
    composite = EpsilonGammaBox(low=-1.0, high=1.0, gamma=0.5, canonizers=canonizers)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    with Gradient(model=torch_model, composite=composite) as attributor:
        _, relevance = attributor(xt, torch.as_tensor(e.output_relevance))
    assert_close(e.relevance, relevance.detach().numpy().transpose(0, 2, 3, 1), "small_cnn/gamma0.5")


# ---------------------------------------------------------------------------
# torchvision VGG16 and ResNet50 with seeded random weights
# ---------------------------------------------------------------------------


def _torchvision_pair(name, input_shape, canonizer):
    """``(torch model, our model, canonizers)``: the same seeded random weights on both sides, float64."""
    import weights_import
    from rlrp_ref import models

    torch.manual_seed(0)
    torch_model = absorb_bn_eps(_randomize(getattr(torchvision.models, name)(weights=None, num_classes=10)))
    init = models.ParamInit("shape", dtype="float64")
    ours = models.get_builder(name).func(variant="torchvision", num_classes=10, input_shape=input_shape,
                                         include_top=True, init=init)
    weights_import.assign_state_dict(ours, torch_model.state_dict())
    for layer in ours.iter_layers():
        if isinstance(layer, rr.BatchNorm):
            layer.epsilon = 0.0  # as absorb_bn_eps did on the torch side: the same function
    if "avgpool" in [layer.name for layer in ours.layers] and isinstance(ours.get_layer("avgpool"), rr.Identity):
        # torchvision's AdaptiveAvgPool2d((7, 7)) is the identity on a 7x7 map, but Zennit still gives it
        # the Norm rule (R * a / (a + 1e-6 sign0(a))): keep it as a 1x1 average pool so our composites do too
        index = [layer.name for layer in ours.layers].index("avgpool")
        ours.layers[index] = rr.AvgPool2D(1, name="avgpool")
    return torch_model, ours, [canonizer]


@pytest.fixture(scope="module")
def vgg16_pair():
    return _torchvision_pair("vgg16", (224, 224, 3), VGGCanonizer())


@pytest.fixture(scope="module")
def resnet50_pair():
    return _torchvision_pair("resnet50", (32, 32, 3), ResNetCanonizer())


TORCHVISION_METHODS = ["gradient", "epsilon", "zplus", "alphabeta", "epsilon_plus_flat", "epsilon_gamma_box"]
#: VGG16 runs at 224x224 (torchvision's 7x7 adaptive pool needs it) and Zennit takes 20-70 s per method
#: there on two cores: by default the gradient and the two composites that together use every rule
#: (flat, z+, epsilon; z-box, gamma); RLRP_CROSSCHECK_FULL=1 runs all six methods.
VGG16_METHODS = TORCHVISION_METHODS if os.environ.get("RLRP_CROSSCHECK_FULL") else ["gradient", "epsilon_plus_flat", "epsilon_gamma_box"]


def _run_pair(pair, method, hw):
    torch_model, ours, canonizers = pair
    x = np.random.default_rng(11).standard_normal((1,) + hw + (3,))
    bounds = dict(low=np.array([-2.2, -2.0, -1.8]), high=np.array([2.5, 2.4, 2.6])) if method == "epsilon_gamma_box" else {}
    e = rr.explain(ours, x, method=method, **OUR_PARAMS.get(method, {}), **bounds)
    theirs, logits = zennit_relevance(torch_model, x, method, canonizers, e.target, **bounds)
    np.testing.assert_allclose(e.logits, logits, rtol=1e-9, atol=1e-12 * np.abs(logits).max())
    assert_close(e.relevance, theirs, method)


@pytest.mark.parametrize("method", TORCHVISION_METHODS)
def test_resnet50_matches_zennit(resnet50_pair, method):
    _run_pair(resnet50_pair, method, (32, 32))


@pytest.mark.parametrize("method", VGG16_METHODS)
def test_vgg16_matches_zennit(vgg16_pair, method):
    _run_pair(vgg16_pair, method, (224, 224))
