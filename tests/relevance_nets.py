"""Random small networks for the relevance property tests, and a naive R-LRP written from the spec.

The naive R-LRP never calls a ``vjp``: each linear map is turned into its
explicit matrix (columns from the bias-free forward of unit vectors; max pooling
from the loop oracle's winners, a selection) and docs/spec.md is followed one
sample at a time.
"""

from __future__ import annotations

import numpy as np

import rlrp_ref as rr
from oracles import pool


def _w(rng, shape, fan_in, dtype):
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)


def _b(rng, n, dtype, zero_bias):
    return None if zero_bias else (0.1 * rng.standard_normal(n)).astype(dtype)


def _act(rng, allow_smooth):
    if allow_smooth and rng.random() < 0.3:
        return rr.Sigmoid() if rng.random() < 0.5 else rr.Softplus()
    return rr.ReLU()


def dense_net(seed, dtype=np.float64, zero_bias=False, allow_smooth=True):
    """Dense / activation stack; returns ``(model, x)``."""
    rng = np.random.default_rng(seed)
    widths = [int(rng.integers(2, 7))] + [int(rng.integers(2, 7)) for _ in range(int(rng.integers(1, 4)))]
    classes = int(rng.integers(2, 5))
    layers = []
    for fin, fout in zip(widths[:-1], widths[1:]):
        layers += [rr.Dense(_w(rng, (fin, fout), fin, dtype), _b(rng, fout, dtype, zero_bias)), _act(rng, allow_smooth)]
    layers.append(rr.Dense(_w(rng, (widths[-1], classes), widths[-1], dtype), _b(rng, classes, dtype, zero_bias)))
    x = rng.standard_normal((int(rng.integers(1, 4)), widths[0])).astype(dtype)
    return rr.Sequential(layers), x


def conv_net(seed, dtype=np.float64, zero_bias=False, allow_smooth=True):
    """Conv / pooling / padding stack ending in a Dense; returns ``(model, x)``."""
    rng = np.random.default_rng(seed)
    h, w, c = int(rng.integers(4, 8)), int(rng.integers(4, 8)), int(rng.integers(1, 4))
    f1, f2 = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    k = int(rng.integers(1, 4))
    layers = [
        rr.Conv2D(_w(rng, (k, k, c, f1), k * k * c, dtype), _b(rng, f1, dtype, zero_bias),
                  strides=int(rng.integers(1, 3)), padding="same"),
        _act(rng, allow_smooth),
    ]
    pool_cls = rr.MaxPool2D if rng.random() < 0.6 else rr.AvgPool2D
    layers.append(pool_cls(2, padding=str(rng.choice(["valid", "same"])) if min(h, w) >= 4 else "same"))
    if rng.random() < 0.5:
        layers.append(rr.ZeroPad2D(1))
        padding = "valid"
    else:
        padding = "same"
    layers += [rr.Conv2D(_w(rng, (2, 2, f1, f2), 4 * f1, dtype), _b(rng, f2, dtype, zero_bias), padding=padding), rr.ReLU()]
    if rng.random() < 0.5:
        layers.append(rr.GlobalAvgPool2D())
        feat = f2
    else:
        layers.append(rr.Flatten())
        feat = None
    model_head = rr.Sequential(layers)
    x = rng.standard_normal((int(rng.integers(1, 4)), h, w, c)).astype(dtype)
    if feat is None:
        feat = model_head.forward(x).shape[1]
    classes = int(rng.integers(2, 5))
    layers.append(rr.Dense(_w(rng, (feat, classes), feat, dtype), _b(rng, classes, dtype, zero_bias)))
    return rr.Sequential(layers), x


def residual_net(seed, dtype=np.float64, zero_bias=False, projection=None, dense=None):
    """A stem, one or two residual blocks (identity or projection skips), a head; returns ``(model, x)``."""
    rng = np.random.default_rng(seed)
    dense = bool(rng.random() < 0.3) if dense is None else dense
    n = int(rng.integers(1, 4))
    if dense:
        fin, width, classes = int(rng.integers(2, 6)), int(rng.integers(2, 6)), int(rng.integers(2, 5))
        layers = [rr.Dense(_w(rng, (fin, width), fin, dtype), _b(rng, width, dtype, zero_bias)), rr.ReLU()]
        for _ in range(int(rng.integers(1, 3))):
            proj = bool(rng.random() < 0.5) if projection is None else projection
            out = int(rng.integers(2, 6)) if proj else width
            branch = rr.Sequential([rr.Dense(_w(rng, (width, width), width, dtype), _b(rng, width, dtype, zero_bias)), rr.ReLU(),
                                    rr.Dense(_w(rng, (width, out), width, dtype), _b(rng, out, dtype, zero_bias))])
            skip = rr.Dense(_w(rng, (width, out), width, dtype), _b(rng, out, dtype, zero_bias)) if proj else None
            layers.append(rr.Residual(branch, skip, activation="relu" if rng.random() < 0.8 else None))
            width = out
        layers.append(rr.Dense(_w(rng, (width, classes), width, dtype), _b(rng, classes, dtype, zero_bias)))
        return rr.Sequential(layers), rng.standard_normal((n, fin)).astype(dtype)
    h = w = int(rng.integers(3, 7))
    c, width, classes = int(rng.integers(1, 4)), int(rng.integers(2, 5)), int(rng.integers(2, 5))
    layers = [rr.Conv2D(_w(rng, (3, 3, c, width), 9 * c, dtype), _b(rng, width, dtype, zero_bias), padding="same"), rr.ReLU()]
    for _ in range(int(rng.integers(1, 3))):
        proj = bool(rng.random() < 0.5) if projection is None else projection
        out = int(rng.integers(2, 5)) if proj else width
        stride = int(rng.integers(1, 3)) if proj else 1
        branch = rr.Sequential([
            rr.Conv2D(_w(rng, (3, 3, width, width), 9 * width, dtype), _b(rng, width, dtype, zero_bias), strides=stride, padding="same"),
            rr.ReLU(),
            rr.Conv2D(_w(rng, (3, 3, width, out), 9 * width, dtype), _b(rng, out, dtype, zero_bias), padding="same"),
        ])
        skip = rr.Sequential([rr.Conv2D(_w(rng, (1, 1, width, out), width, dtype), _b(rng, out, dtype, zero_bias), strides=stride)]) if proj else None
        layers.append(rr.Residual(branch, skip, activation="relu" if rng.random() < 0.8 else None))
        width = out
    layers += [rr.GlobalAvgPool2D(), rr.Dense(_w(rng, (width, classes), width, dtype), _b(rng, classes, dtype, zero_bias))]
    return rr.Sequential(layers), rng.standard_normal((n, h, w, c)).astype(dtype)


# ---------------------------------------------------------------------------
# naive R-LRP from the spec
# ---------------------------------------------------------------------------


def _without_bias(layer):
    new = layer.copy()
    if hasattr(new, "bias"):
        new.bias = None
    return new


def linear_matrix(layer, a):
    """The explicit ``W[i, j]`` of the linear map a layer applies to one sample ``a`` (no batch axis)."""
    size = a.size
    if isinstance(layer, rr.MaxPool2D):
        (t, b), (l, r) = layer.pads(a.shape[:2])
        y, winners = pool(a[None].astype(np.float64), layer.pool_size, layer.strides, ((t, b), (l, r)), "max")
        out = np.zeros((size, y.size))
        for (ni, p, q, ci), (row, col) in winners.items():
            out[np.ravel_multi_index((row, col, ci), a.shape), np.ravel_multi_index((p, q, ci), y.shape[1:])] = 1.0
        return out
    basis = np.eye(size).reshape((size,) + a.shape)
    return _without_bias(layer).astype(np.float64).forward(basis).reshape(size, -1)


def naive_rlrp(layer, a, relevance, log):
    """R-LRP for ONE sample (no batch axis). ``log`` collects ``name -> dict(kappa, rhs, sum_in, ties, ...)``."""
    if isinstance(layer, rr.Sequential):
        inputs = [a]
        for child in layer.layers[:-1]:
            inputs.append(child.forward(inputs[-1][None])[0])
        for child, child_in in zip(reversed(layer.layers), reversed(inputs)):
            relevance = naive_rlrp(child, child_in, relevance, log)
        return relevance
    if isinstance(layer, rr.Residual):
        s = layer.skip.forward(a[None])[0] if layer.skip is not None else a
        f = layer.branch.forward(a[None])[0]
        y = s + f
        r_s, r_f = np.empty_like(relevance), np.empty_like(relevance)
        ties = 0
        for idx in np.ndindex(y.shape):
            if y[idx] != 0:
                r_s[idx] = s[idx] / y[idx] * relevance[idx]
                r_f[idx] = f[idx] / y[idx] * relevance[idx]
            else:
                r_s[idx] = r_f[idx] = relevance[idx] / 2
                ties += relevance[idx] != 0
        down_f = naive_rlrp(layer.branch, a, r_f, log)
        down_s = naive_rlrp(layer.skip, a, r_s, log) if layer.skip is not None else r_s
        total = down_f + down_s
        mass, tmass = np.abs(relevance).sum(), np.abs(total).sum()
        out = total * (mass / tmass) if tmass > 0 else np.zeros_like(total)
        log[layer.name] = dict(kappa=mass / tmass if tmass > 0 else 0.0, ties=ties, r_skip=r_s, r_branch=r_f, sum_in=out.sum())
        return out
    if layer.elementwise:
        return relevance
    if isinstance(layer, rr.Flatten):
        return relevance.reshape(a.shape)
    if isinstance(layer, rr.ZeroPad2D):
        (t, b), (l, r) = layer.padding
        return relevance[t : relevance.shape[0] - b, l : relevance.shape[1] - r]
    w = linear_matrix(layer, a)
    if isinstance(layer, rr.MaxPool2D):
        # a selection, like ReLU: each window's relevance to its winner (no product with a), then the rescale
        r = relevance.reshape(-1)
        rt = w @ r
        mass, tmass = np.abs(r).sum(), np.abs(rt).sum()
        out = rt * (mass / tmass) if tmass > 0 else np.zeros_like(rt)
        log[layer.name] = dict(kappa=mass / tmass if tmass > 0 else 0.0, rhs=float(r.sum()), sum_in=out.sum())
        return out.reshape(a.shape)
    contributions = a.reshape(-1, 1) * w                   # z_ij = a_i w_ij
    z = layer.forward(a[None])[0].reshape(-1)
    bias = getattr(layer, "bias", None)
    z_minus_b = z - (np.broadcast_to(bias, relevance.shape).reshape(-1) if bias is not None else 0)
    r = relevance.reshape(-1)
    rt = (contributions * r[None, :]).sum(axis=1)          # Rt_i = sum_j z_ij R_j
    mass, tmass = np.abs(r).sum(), np.abs(rt).sum()
    out = rt * (mass / tmass) if tmass > 0 else np.zeros_like(rt)
    log[layer.name] = dict(
        kappa=mass / tmass if tmass > 0 else 0.0,
        rhs=float((z_minus_b * r).sum()),
        neuron_law=(contributions.sum(axis=0), z_minus_b),   # L1: sum_i z_ij == z_j - b_j
        sum_in=out.sum(),
    )
    return out.reshape(a.shape)


#: every random-net family, by name
BUILDERS_CLASSICAL = {"dense": dense_net, "conv": conv_net, "residual": residual_net}
