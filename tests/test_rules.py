"""The classical rules and composites: each rule against its formula written out with explicit
matrices, conservation of LRP-0, epsilon's absorption, the composites' layer mapping, bad parameters."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rlrp_ref as rr
from relevance_nets import BUILDERS_CLASSICAL, conv_net, dense_net, linear_matrix
from rlrp_ref import rules

SEEDS = st.integers(0, 2**31 - 1)


def sign0(z):
    return np.where(z >= 0, 1.0, -1.0)


def stab(z, eps=1e-6):
    return z + eps * sign0(z)


def naive_rule(rule, layer, a, relevance, low=None, high=None, gamma=0.25, alpha=2.0, beta=1.0, eps=1e-6):
    """One sample: the rule's formula with explicit ``W[i, j]``, ``b[j]`` (Zennit's variant, see rules.py)."""
    w = linear_matrix(layer, a)
    ai = a.reshape(-1)
    r = relevance.reshape(-1)
    b = np.broadcast_to(layer.bias, relevance.shape).reshape(-1) if layer.bias is not None else np.zeros(r.size)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    ap, an = np.maximum(ai, 0)[:, None], np.minimum(ai, 0)[:, None]
    bp, bn = np.maximum(b, 0), np.minimum(b, 0)
    if rule == "epsilon":
        z = ai[:, None] * w
        return (z * (r / stab(z.sum(0) + b, eps))).sum(1)
    if rule == "lrp0":
        z = ai[:, None] * w
        den = z.sum(0) + b
        return (z * np.where(den != 0, r / np.where(den != 0, den, 1), 0)).sum(1)
    if rule in ("zplus", "alphabeta"):
        zpos = ap * wp + an * wn
        zneg = ap * wn + an * wp
        pos = (zpos * (r / stab(zpos.sum(0) + bp))).sum(1)
        if rule == "zplus":
            return pos
        return alpha * pos - beta * (zneg * (r / stab(zneg.sum(0) + bn))).sum(1)
    if rule == "gamma":
        up, down = w + gamma * wp, w + gamma * wn
        z = ai @ w + b
        zpos = ap * up + an * down
        zneg = ap * down + an * up
        pos = (zpos * ((z > 0) * r / stab(zpos.sum(0) + b + gamma * bp))).sum(1)
        neg = (zneg * ((z < 0) * r / stab(zneg.sum(0) + b + gamma * bn))).sum(1)
        return pos + neg
    if rule == "zbox":
        lo = np.broadcast_to(low, a.shape).reshape(-1)[:, None]
        hi = np.broadcast_to(high, a.shape).reshape(-1)[:, None]
        z = ai[:, None] * w - lo * wp - hi * wn
        return (z * (r / stab(z.sum(0)))).sum(1)
    if rule == "wsquare":
        w2 = w**2
        return (w2 * (r / stab(w2.sum(0) + b**2))).sum(1)
    if rule == "flat":
        ones = (w != 0).astype(float)
        return (ones * (r / stab(ones.sum(0)))).sum(1)
    raise AssertionError(rule)


RULES = {
    "lrp0": lambda p: rules.LRP0(),
    "epsilon": lambda p: rules.Epsilon(p["eps"]),
    "zplus": lambda p: rules.ZPlus(),
    "alphabeta": lambda p: rules.AlphaBeta(p["alpha"], p["alpha"] - 1),
    "gamma": lambda p: rules.Gamma(p["gamma"]),
    "zbox": lambda p: rules.ZBox(p["low"], p["high"]),
    "wsquare": lambda p: rules.WSquare(),
    "flat": lambda p: rules.Flat(),
}


@st.composite
def single_layers(draw):
    seed = draw(SEEDS)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3))
    if draw(st.booleans()):
        fin, fout = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        layer = rr.Dense(rng.standard_normal((fin, fout)), rng.standard_normal(fout) if rng.random() < 0.7 else None)
        a = rng.standard_normal((n, fin))
    else:
        h, w, c, f = int(rng.integers(2, 6)), int(rng.integers(2, 6)), int(rng.integers(1, 3)), int(rng.integers(1, 4))
        k = int(rng.integers(1, 3))
        layer = rr.Conv2D(rng.standard_normal((k, k, c, f)), rng.standard_normal(f) if rng.random() < 0.7 else None,
                          strides=int(rng.integers(1, 3)), padding=str(rng.choice(["valid", "same"])))
        a = rng.standard_normal((n, h, w, c))
    if draw(st.booleans()):
        a = np.maximum(a, 0)  # post-ReLU input: the a- terms vanish
    relevance = rng.standard_normal(layer.forward(a).shape)
    return layer, a, relevance, rng


@pytest.mark.parametrize("rule", sorted(RULES))
@given(case=single_layers(), eps=st.sampled_from([1e-6, 1e-2, 0.5]),
       gamma=st.sampled_from([0.0, 0.25, 2.0]), alpha=st.sampled_from([1.0, 2.0, 3.5]))
def test_each_rule_matches_its_formula(case, rule, eps, gamma, alpha):
    layer, a, relevance, rng = case
    low = -1.5 - rng.random(a.shape[-1])
    high = 1.5 + rng.random(a.shape[-1])
    params = dict(eps=eps, gamma=gamma, alpha=alpha, low=low, high=high)
    before = {k: v.copy() for k, v in layer.params.items()}
    step = RULES[rule](params)(layer, a, layer.forward(a), relevance)
    assert step.relevance.shape == a.shape and step.relevance.dtype == a.dtype
    for n in range(len(a)):
        want = naive_rule(rule, layer, a[n], relevance[n], low=low, high=high, gamma=gamma, alpha=alpha,
                          beta=alpha - 1, eps=eps)
        scale = max(1.0, np.abs(want).max())
        np.testing.assert_allclose(step.relevance[n].reshape(-1), want, rtol=1e-9, atol=1e-9 * scale)
    for k, v in layer.params.items():
        np.testing.assert_array_equal(v, before[k])  # rules never touch the layer


@given(kind=st.sampled_from(sorted(BUILDERS_CLASSICAL)), seed=SEEDS)
def test_lrp0_with_zero_biases_conserves_layer_by_layer(kind, seed):
    # ReLU nets: with a softplus or sigmoid an all-zero layer input gives z_j == 0 exactly while R_j != 0,
    # and LRP-0 drops that relevance (see test_lrp0_drops_exact_zero_denominators_instead_of_nan)
    extra = {} if kind == "residual" else dict(allow_smooth=False)
    model, x = BUILDERS_CLASSICAL[kind](seed, zero_bias=True, **extra)
    e = rr.explain(model, x, method="lrp0", keep_layers=True)
    fc = e.logits[np.arange(len(x)), e.target]
    for record in e.ledger:
        np.testing.assert_allclose(record.sum_contributions, record.law_rhs, rtol=1e-9, atol=1e-12 * np.abs(fc).max())
    for layer in model.layers:
        np.testing.assert_allclose(e.layers[layer.name].reshape(len(x), -1).sum(axis=1), fc, rtol=1e-9)
    np.testing.assert_allclose(e.relevance.reshape(len(x), -1).sum(axis=1), fc, rtol=1e-9)


@given(kind=st.sampled_from(sorted(BUILDERS_CLASSICAL)), seed=SEEDS, eps=st.floats(1e-6, 10.0))
def test_epsilon_ledger_matches_closed_form_absorption(kind, seed, eps):
    """For every epsilon layer: sum_i R_i = sum_j R_j (z_j - b_j) / (z_j + eps sign0(z_j))."""
    model, x = BUILDERS_CLASSICAL[kind](seed)
    e = rr.explain(model, x, method="epsilon", eps=eps, keep_layers=True)
    trace = model.trace(x)
    for record in e.ledger:
        if record.rule != "epsilon":
            continue
        layer = model.get_layer(record.name)
        z = trace[record.name]
        b = layer.bias if layer.bias is not None else 0.0
        r = e.layers[record.name]
        want = (r * (z - b) / stab(z, eps)).reshape(len(x), -1).sum(axis=1)
        np.testing.assert_allclose(record.sum_contributions, want, rtol=1e-8, atol=1e-12 * max(1.0, np.abs(want).max()))


@given(case=single_layers(), eps=st.lists(st.floats(1e-8, 1e3), min_size=2, max_size=4, unique=True))
def test_epsilon_absorbs_more_as_eps_grows(case, eps):
    layer, a, _, rng = case
    if layer.bias is not None:
        layer = layer.with_params(bias=np.zeros_like(layer.bias))
    z = layer.forward(a)
    relevance = np.abs(rng.standard_normal(z.shape)) + 0.1  # a positive output relevance
    kept = []
    for value in sorted(eps):
        step = rules.Epsilon(value)(layer, a, z, relevance)
        kept.append(step.sum_contributions)
    kept = np.array(kept)
    mass = relevance.reshape(len(a), -1).sum(axis=1)
    assert np.all(kept <= mass * (1 + 1e-12))
    assert np.all(np.diff(kept, axis=0) <= 1e-12 * mass)  # more eps, less relevance kept
    live = np.any(z.reshape(len(a), -1) != 0, axis=1)
    assert np.all(kept[-1][live] < kept[0][live])  # strictly less wherever some z_j != 0
    assert np.all(kept[:, ~live] == 0)


def test_lrp0_drops_exact_zero_denominators_instead_of_nan():
    layer = rr.Dense(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    a = np.array([[2.0, 2.0]])  # z = (0, 0)
    step = rules.LRP0()(layer, a, layer.forward(a), np.array([[1.0, 1.0]]))
    np.testing.assert_array_equal(step.relevance, 0)


def test_stabilizer_sign_of_zero_is_plus():
    z = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(rules.stabilize(z, 0.5), [-1.5, 0.5, 2.5])
    np.testing.assert_array_equal(rules.stabilize(z, 0.0), z)


def _rules_by_name(e):
    return {r.name: r.rule for r in e.ledger if r.kind not in ("residual", "residual_split")}


def test_composites_map_layers_like_zennit():
    rng = np.random.default_rng(0)
    model = rr.Sequential([
        rr.Conv2D(rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4), padding="same", name="c1"), rr.ReLU(name="r1"),
        rr.MaxPool2D(2, name="mp"),
        rr.Conv2D(rng.standard_normal((3, 3, 4, 4)), rng.standard_normal(4), padding="same", name="c2"), rr.ReLU(name="r2"),
        rr.AvgPool2D(2, name="ap"), rr.Flatten(name="fl"),
        rr.Dense(rng.standard_normal((16, 5)), rng.standard_normal(5), name="d1"), rr.ReLU(name="r3"),
        rr.Dense(rng.standard_normal((5, 3)), name="d2"),
    ])
    x = rng.standard_normal((1, 8, 8, 3))
    base = dict(r1="pass", r2="pass", r3="pass", mp="gradient", ap="norm", fl="reshape")
    expect = {
        "epsilon_plus": dict(c1="zplus", c2="zplus", d1="epsilon", d2="epsilon"),
        "epsilon_plus_flat": dict(c1="flat", c2="zplus", d1="epsilon", d2="epsilon"),
        "epsilon_gamma_box": dict(c1="zbox", c2="gamma", d1="epsilon", d2="epsilon"),
        "epsilon_alpha2_beta1": dict(c1="alphabeta", c2="alphabeta", d1="epsilon", d2="epsilon"),
        "gamma": dict(c1="gamma", c2="gamma", d1="gamma", d2="gamma"),
    }
    for method, mapping in expect.items():
        kwargs = dict(low=-4.0, high=4.0) if method == "epsilon_gamma_box" else {}
        e = rr.explain(model, x, method=method, **kwargs)
        assert _rules_by_name(e) == {**base, **mapping}, method
    rlrp = _rules_by_name(rr.explain(model, x))
    assert rlrp == dict(c1="rlrp", c2="rlrp", d1="rlrp", d2="rlrp", mp="rlrp_select", ap="rlrp", r1="pass", r2="pass", r3="pass", fl="reshape")
    # a dense-only net: flat lands on the first Dense, z-box finds no conv
    dense, xd = dense_net(2)
    e = rr.explain(dense, xd, method="epsilon_plus_flat")
    first = next(r for r in reversed(e.ledger) if r.kind == "dense")
    assert first.rule == "flat"
    assert {r.rule for r in rr.explain(dense, xd, method="epsilon_gamma_box", low=0, high=1).ledger if r.kind == "dense"} == {"epsilon"}


def test_composite_parameters_reach_their_rules():
    model, x = conv_net(4)
    a = rr.explain(model, x, method="epsilon_gamma_box", low=-5.0, high=5.0, gamma=0.25, eps=1e-6).relevance
    b = rr.explain(model, x, method="epsilon_gamma_box", low=-5.0, high=5.0, gamma=1.0, eps=1e-6).relevance
    c = rr.explain(model, x, method="epsilon_gamma_box", low=-5.0, high=5.0, gamma=0.25, eps=1.0).relevance
    assert not np.allclose(a, b) and not np.allclose(a, c)


def test_composite_object_as_method():
    model, x = conv_net(6)
    comp = rr.composites.epsilon_plus(eps=0.1)
    np.testing.assert_allclose(rr.explain(model, x, method=comp).relevance,
                               rr.explain(model, x, method="epsilon_plus", eps=0.1).relevance, rtol=1e-12)


@pytest.mark.parametrize("method, kwargs, match", [
    ("alphabeta", dict(alpha=2.0, beta=0.5), "alpha - beta == 1"),
    ("alphabeta", dict(alpha=-1.0, beta=-2.0), "alpha"),
    ("epsilon", dict(eps=-1e-3), "eps"),
    ("epsilon_plus", dict(eps=float("nan")), "eps"),
    ("gamma", dict(gamma=-0.1), "gamma"),
    ("epsilon_gamma_box", dict(low=1.0, high=0.0), "low <= high"),
    ("epsilon_gamma_box", dict(low=-1.0), "low= and high="),
])
def test_bad_rule_parameters_are_value_errors(method, kwargs, match):
    model, x = conv_net(1)
    with pytest.raises(ValueError, match=match):
        rr.explain(model, x, method=method, **kwargs)


def test_unknown_parameter_is_a_type_error_naming_the_accepted_ones():
    model, x = conv_net(1)
    with pytest.raises(TypeError, match=r"\['eps'\].*'gamma'"):
        rr.explain(model, x, method="epsilon", gamma=0.3)
    with pytest.raises(TypeError, match="no parameters.*'eps'"):
        rr.explain(model, x, method="zplus", eps=0.3)


def test_zbox_bounds_that_do_not_broadcast_name_the_layer():
    model, x = conv_net(1)
    with pytest.raises(ValueError, match="conv2d.*do not broadcast"):
        rr.explain(model, x, method="epsilon_gamma_box", low=np.zeros(7), high=np.ones(7))


@given(kind=st.sampled_from(sorted(BUILDERS_CLASSICAL)), seed=SEEDS,
       method=st.sampled_from(["epsilon", "zplus", "alphabeta", "gamma", "epsilon_plus_flat", "wsquare", "flat"]))
def test_rules_keep_float32(kind, seed, method):
    model, x = BUILDERS_CLASSICAL[kind](seed, dtype=np.float32)
    e32 = rr.explain(model, x, method=method)
    assert e32.relevance.dtype == np.float32
    e64 = rr.explain(model.astype(np.float64), x.astype(np.float64), method=method, target=e32.target)
    scale = np.abs(e64.relevance).max()
    assert np.abs(e32.relevance - e64.relevance).max() <= 1e-2 * scale + 1e-6


def test_gamma_drops_relevance_where_z_is_exactly_zero():
    """Zennit's gamma gates R by z > 0 and z < 0: a neuron with z == 0 passes nothing."""
    layer = rr.Dense(np.array([[1.0], [-1.0]]))
    a = np.array([[1.0, 1.0]])
    step = rules.Gamma(0.25)(layer, a, layer.forward(a), np.array([[1.0]]))
    np.testing.assert_array_equal(step.relevance, 0)
