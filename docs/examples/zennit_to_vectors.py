"""Produce a "theirs" relevance file from Zennit, for ``rlrp-ref validate``.

Usage::

    python docs/examples/zennit_to_vectors.py --vectors VECTORS_DIR --out zennit.h5
    rlrp-ref validate --vectors VECTORS_DIR --theirs zennit.h5

It reads each case's network straight from the vectors' HDF5 files (h5py only,
no rlrp-ref import: this is what any other implementation has to do), builds
the same PyTorch model in float64, runs Zennit's rules and composites with the
parameters listed in ``manifest.json``, and writes ``/<case>/<method>``
datasets (NHWC, float64) for the methods Zennit has. See docs/validation.md.

Needs torch and zennit (``pip install rlrp-ref[crosscheck]``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from zennit.attribution import Gradient, IntegratedGradients
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
)
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, WSquare, ZBox, ZPlus
from zennit.types import Activation, AvgPool, Convolution, Linear

FORMAT, FORMAT_VERSION = "rlrp-ref-vectors", 1


# ---------------------------------------------------------------------------
# the network: HDF5 group -> torch module (NCHW inside, NHWC at the boundary)
# ---------------------------------------------------------------------------


class PaddedConv2d(torch.nn.Conv2d):
    """A convolution with asymmetric zero padding ((top, bottom), (left, right)), as TensorFlow's "same"
    padding can need. The padding happens inside ``forward`` so that Zennit's rules, which re-run a
    module's forward with modified inputs and weights, pad the modified input with zeros as well."""

    def __init__(self, *args, pads, **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        (top, bottom), (left, right) = pads
        self.pads = (left, right, top, bottom)

    def forward(self, x):
        return super().forward(F.pad(x, self.pads))


class FlattenNHWC(torch.nn.Module):
    """Flatten in (H, W, C) order, as the vectors' networks (Keras layout) do."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1) if x.dim() == 4 else x.flatten(1)


class ResidualBlock(torch.nn.Module):
    """``activation(skip(u) + branch(u))``; the sum goes through zennit's ``Sum`` so rules can split it."""

    def __init__(self, branch, skip, relu):
        super().__init__()
        self.skip = skip if skip is not None else torch.nn.Identity()
        self.branch = branch
        self.merge = Sum(dim=-1)
        self.activation = torch.nn.ReLU() if relu else torch.nn.Identity()

    def forward(self, x):
        return self.activation(self.merge(torch.stack([self.skip(x), self.branch(x)], dim=-1)))


def _text(group, key):
    value = group.attrs[key]
    return value.decode() if isinstance(value, bytes) else str(value)


def _param(group, key):
    return torch.tensor(np.asarray(group[key][()], dtype=np.float64))


def _symmetric(pads):
    (top, bottom), (left, right) = pads
    return (top, left) if top == bottom and left == right else None


def build_module(group, rank):
    """``(modules, rank after)``: torch modules for the layer in ``group``, fed a tensor of ``rank`` (4 or 2)."""
    kind = _text(group, "kind")
    if kind == "sequential":
        children = []
        for key in sorted(group.keys()):
            modules, rank = build_module(group[key], rank)
            children += modules
        return [torch.nn.Sequential(*children)], rank
    if kind == "residual":
        (branch,), rank_out = build_module(group["branch"], rank)
        skip = build_module(group["skip"], rank)[0][0] if "skip" in group else None
        return [ResidualBlock(branch, skip, _text(group, "activation") == "relu")], rank_out
    if kind in ("global_average_pooling2d", "flatten"):
        flat = [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()] if kind != "flatten" else [FlattenNHWC()]
        return flat, 2
    return _leaf(group, kind, rank), rank


def _leaf(group, kind, rank):
    if kind == "dense":
        kernel = _param(group, "kernel")
        layer = torch.nn.Linear(kernel.shape[0], kernel.shape[1], bias="bias" in group, dtype=torch.float64)
        layer.weight.data = kernel.T.contiguous()
        if "bias" in group:
            layer.bias.data = _param(group, "bias")
        return [layer]
    if kind == "conv2d":
        kernel = _param(group, "kernel")  # (kh, kw, cin, cout) -> (cout, cin, kh, kw)
        kh, kw, cin, cout = kernel.shape
        strides = tuple(int(s) for s in group.attrs["strides"])
        pads = np.asarray(group.attrs["resolved_pads"]).tolist()
        common = dict(stride=strides, bias="bias" in group, dtype=torch.float64)
        if _symmetric(pads) is not None:
            layer = torch.nn.Conv2d(cin, cout, (kh, kw), padding=_symmetric(pads), **common)
        else:
            layer = PaddedConv2d(cin, cout, (kh, kw), pads=pads, **common)
        layer.weight.data = kernel.permute(3, 2, 0, 1).contiguous()
        if "bias" in group:
            layer.bias.data = _param(group, "bias")
        return [layer]
    if kind in ("max_pooling2d", "average_pooling2d"):
        pool = tuple(int(s) for s in group.attrs["pool_size"])
        strides = tuple(int(s) for s in group.attrs["strides"])
        pads = np.asarray(group.attrs["resolved_pads"]).tolist()
        if _symmetric(pads) is None:
            raise ValueError(f"{group.name}: asymmetric pooling padding {pads} has no torch equivalent here")
        if kind == "max_pooling2d":
            return [torch.nn.MaxPool2d(pool, strides, padding=_symmetric(pads))]
        return [torch.nn.AvgPool2d(pool, strides, padding=_symmetric(pads), count_include_pad=False)]
    if kind == "zero_padding2d":
        (top, bottom), (left, right) = np.asarray(group.attrs["pads"]).tolist()
        return [torch.nn.ZeroPad2d((left, right, top, bottom))]
    if kind == "batch_normalization":
        gamma = _param(group, "gamma")
        layer_type = torch.nn.BatchNorm2d if rank == 4 else torch.nn.BatchNorm1d
        layer = layer_type(gamma.shape[0], eps=float(group.attrs["epsilon"]), dtype=torch.float64)
        layer.weight.data, layer.bias.data = gamma, _param(group, "beta")
        layer.running_mean.data, layer.running_var.data = _param(group, "moving_mean"), _param(group, "moving_variance")
        return [layer]
    simple = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "softplus": torch.nn.Softplus,
              "identity": torch.nn.Identity}
    if kind in simple:
        return [simple[kind]()]
    raise ValueError(f"{group.name}: unknown layer kind {kind!r}")


class NHWCModel(torch.nn.Module):
    """The case's network, taking and explaining NHWC inputs like the vectors."""

    def __init__(self, body, image):
        super().__init__()
        self.body = body
        self.image = image

    def forward(self, x):
        return self.body(x.permute(0, 3, 1, 2) if self.image else x)


def fold_batchnorm(module):
    """Fold every BatchNorm into the Linear/Conv2d right before it in the same Sequential (in place).

    ``BN(z) = z * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``, so the layer becomes
    ``weight * s`` (per output channel) and ``bias * s + beta - mean * s``; the BatchNorm is replaced by
    an identity. (Zennit 0.5.1's ``SequentialMergeBatchNorm`` leaves ``eps`` in the BatchNorm it turns
    into an identity, which then scales by ``1 / sqrt(1 + eps)``: off by 5e-4 for Keras' eps 1e-3.)
    """
    for child in module.children():
        fold_batchnorm(child)
    if not isinstance(module, torch.nn.Sequential):
        return module
    for index in range(1, len(module)):
        linear, norm = module[index - 1], module[index]
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) and isinstance(linear, (torch.nn.Linear, torch.nn.Conv2d)):
            with torch.no_grad():
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                shape = (-1,) + (1,) * (linear.weight.dim() - 1)
                bias = linear.bias if linear.bias is not None else torch.zeros_like(scale)
                new_bias = bias * scale + norm.bias - norm.running_mean * scale
                linear.weight.mul_(scale.reshape(shape))
                linear.bias = torch.nn.Parameter(new_bias)
            module[index] = torch.nn.Identity()
    return module


def load_torch_model(case_file):
    """The case's network as a float64 torch module taking NHWC inputs, BatchNorm folded."""
    with h5py.File(case_file, "r") as fh:
        network = fh["network"]
        image = len(network.attrs["input_shape"]) == 3
        body = build_module(network["model"], 4 if image else 2)[0][0]
    return NHWCModel(fold_batchnorm(body), image).eval()


# ---------------------------------------------------------------------------
# the methods: manifest name and parameters -> zennit
# ---------------------------------------------------------------------------


def _base_map(stabilizer):
    # zennit's defaults for everything that is not a dense or conv layer
    return [(Activation, Pass()), (Sum, Norm(stabilizer=stabilizer)), (AvgPool, Norm(stabilizer=stabilizer))]


def _everywhere(rule, stabilizer):
    return LayerMapComposite(layer_map=_base_map(stabilizer) + [(Linear, rule)])


def _exact_zero_drops(z):
    """LRP-0's denominator: ``z`` itself, with exact zeros made infinite so that ``R / z`` is 0 there."""
    return torch.where(z == 0, torch.full_like(z, float("inf")), z)


def make_composite(method, params):
    """The zennit composite for an LRP method of the manifest (parameter names as in rlrp-ref's ``explain``),
    or None when zennit has no counterpart (R-LRP)."""
    p = dict(params)
    # LRP-0 adds nothing to any denominator (pooling and residual sums included) and, as rlrp-ref does,
    # drops the relevance of a neuron whose denominator is exactly 0 (zennit's Epsilon(0) would give NaN)
    stab = _exact_zero_drops if method == "lrp0" else 1e-6
    single = {
        "lrp0": lambda: Epsilon(epsilon=_exact_zero_drops),
        "epsilon": lambda: Epsilon(epsilon=p["eps"]),
        "gamma": lambda: Gamma(gamma=p["gamma"], stabilizer=stab),
        "alphabeta": lambda: AlphaBeta(alpha=p["alpha"], beta=p["beta"], stabilizer=stab),
        "zplus": lambda: ZPlus(stabilizer=stab),
        "zbox": lambda: ZBox(low=p["low"], high=p["high"], stabilizer=stab),
        "wsquare": lambda: WSquare(stabilizer=stab),
        "flat": lambda: Flat(stabilizer=stab),
    }
    if method in single:
        return _everywhere(single[method](), stab)
    if method == "epsilon_plus":
        return EpsilonPlus(epsilon=p["eps"], stabilizer=stab)
    if method == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=p["eps"], stabilizer=stab)
    if method == "epsilon_gamma_box":
        return EpsilonGammaBox(low=p["low"], high=p["high"], epsilon=p["eps"], gamma=p["gamma"], stabilizer=stab)
    if method == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(epsilon=p["eps"], stabilizer=stab)
    return None


GRADIENT_METHODS = ("gradient", "gradient_x_input", "integrated_gradients")


def relevance_for(model, x, targets, method, spec):
    """Zennit's relevance (NHWC numpy) for one case and method, or None when zennit has no counterpart."""
    params = spec.get("params", {})

    def start(output):
        # R^L = f_c e_c ("logit") or e_c ("onehot"), as the manifest says for this method
        onehot_full = torch.nn.functional.one_hot(targets, output.shape[1]).to(output)
        return onehot_full * output if spec.get("start", "logit") == "logit" else onehot_full

    inputs = torch.tensor(x, dtype=torch.float64)
    if method in ("gradient", "gradient_x_input"):
        with Gradient(model) as attributor:
            _, grad = attributor(inputs, start)
        rel = grad * inputs if method == "gradient_x_input" else grad
    elif method == "integrated_gradients":
        if params.get("baseline", 0.0) != 0.0:
            return None
        with IntegratedGradients(model, n_iter=int(params["steps"])) as attributor:
            _, rel = attributor(inputs, start)
    else:
        composite = make_composite(method, params)
        if composite is None:
            return None
        with Gradient(model, composite) as attributor:
            _, rel = attributor(inputs, start)
    return rel.detach().numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", required=True, help="vectors folder (rlrp-ref vectors --out DIR)")
    parser.add_argument("--out", required=True, help="relevance file to write (HDF5)")
    parser.add_argument("--methods", nargs="+", help="only these methods (default: every one zennit has)")
    args = parser.parse_args(argv)

    folder = Path(args.vectors)
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        sys.exit(f"{folder}: expected {FORMAT} version {FORMAT_VERSION}, found "
                 f"{manifest.get('format')} version {manifest.get('format_version')}")
    methods = args.methods or list(manifest["methods"])
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they give
    written = {}
    with h5py.File(args.out, "w") as out:
        for entry in manifest["cases"]:
            case_file = folder / entry["file"]
            model = load_torch_model(case_file)
            with h5py.File(case_file, "r") as fh:
                x = np.asarray(fh["inputs"][()])
                targets = torch.tensor(np.asarray(fh["targets"][()]), dtype=torch.int64)
            group = out.create_group(entry["name"])
            for method in methods:
                rel = relevance_for(model, x, targets, method, manifest["methods"][method])
                if rel is not None:
                    group.create_dataset(method, data=rel.astype(np.float64))
                    written.setdefault(entry["name"], []).append(method)
    kinds = sorted({m for ms in written.values() for m in ms})
    print(f"wrote {len(written)} cases x {len(kinds)} methods ({', '.join(kinds)}) to {args.out}")


if __name__ == "__main__":
    main()
