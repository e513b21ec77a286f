"""Stress tests for R-LRP's robustness claim (RLRP_SPEC.md, C1 and the Bound), honest about where it applies.

- One-hot output relevance on a class whose logit is about 1e-12, in networks
  with an activation that is not zero at zero (softplus, sigmoid): LRP-0 and
  LRP-epsilon(1e-9) put at least 1e6 times the output relevance mass on some
  input feature; R-LRP stays within ``|R_i| <= ||R^(L)||_1``.
- A hidden pre-activation of about 1e-12 under a softplus, with the ordinary
  logit start: LRP-0 blows up as well.
- The same near-zero hidden unit in an all-ReLU network with the logit start:
  LRP-0 does NOT blow up (its division by z_j cancels against R_j, proportional
  to a_j = z_j; with zero biases it equals gradient x input), so the docs must
  not claim it does. Even a near-zero explained logit with the logit start
  leaves LRP-0 bounded by the weights (it is still gradient x input); it is
  only large *relative* to the tiny ``|f_c|``, where R-LRP's bound is stated.
"""

import numpy as np
import pytest

import rlrp_ref as rr

TINY = 1e-12


def _peak(e):
    return np.abs(e.relevance).reshape(len(e.relevance), -1).max(axis=1)


def _mass(start):
    return np.abs(start).sum(axis=1)


def _net(activation, rng, features=6, hidden=5, classes=4):
    layers = [rr.Dense(rng.standard_normal((features, hidden)), rng.standard_normal(hidden)), activation(),
              rr.Dense(rng.standard_normal((hidden, hidden)), rng.standard_normal(hidden)), activation(),
              rr.Dense(rng.standard_normal((hidden, classes)), rng.standard_normal(classes), name="logits")]
    return rr.Sequential(layers)


def _near_zero_logit(model, x, target):
    """Shift the target class's bias so its logit is about 1e-12 on ``x`` (one sample)."""
    head = model.get_layer("logits")
    logit = model.forward(x)[0, target]
    bias = head.bias.copy()
    bias[target] += TINY - logit
    head.set_params(bias=bias)
    value = model.forward(x)[0, target]
    assert 0 < abs(value) < 1e-11
    return value


@pytest.mark.parametrize("activation", [rr.Softplus, rr.Sigmoid])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_hot_on_a_near_zero_logit(activation, seed):
    rng = np.random.default_rng(seed)
    model = _net(activation, rng)
    x = rng.standard_normal((1, 6))
    target = 2
    _near_zero_logit(model, x, target)
    one_hot = np.zeros((1, 4))
    one_hot[0, target] = 1.0
    mass = _mass(one_hot)
    for method, params in [("lrp0", {}), ("epsilon", dict(eps=1e-9))]:
        e = rr.explain(model, x, target=one_hot, method=method, **params)
        assert np.all(_peak(e) >= 1e6 * mass), (method, _peak(e))
    e = rr.explain(model, x, target=one_hot)
    assert np.all(_peak(e) <= mass * (1 + 1e-12))
    np.testing.assert_allclose(np.abs(e.relevance).sum(axis=1), mass, rtol=1e-9)  # L3: the mass is kept, not inflated
    assert all(record.scale.max() < np.inf for record in e.ledger)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_zero_hidden_unit_under_softplus_blows_up_lrp0_even_with_the_logit_start(seed):
    rng = np.random.default_rng(seed)
    first = rr.Dense(rng.standard_normal((6, 5)), rng.standard_normal(5))
    model = rr.Sequential([first, rr.Softplus(), rr.Dense(rng.standard_normal((5, 3)), rng.standard_normal(3))])
    x = rng.standard_normal((1, 6))
    bias = first.bias.copy()
    bias[0] += TINY - first.forward(x)[0, 0]  # hidden unit 0: z ~ 1e-12, softplus(z) ~ log 2
    first.set_params(bias=bias)
    assert abs(first.forward(x)[0, 0]) < 1e-11
    lrp0 = rr.explain(model, x, method="lrp0")
    start_mass = _mass(lrp0.output_relevance)
    assert np.all(_peak(lrp0) >= 1e6 * start_mass)
    e = rr.explain(model, x)
    assert np.all(_peak(e) <= start_mass * (1 + 1e-12))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relu_net_with_logit_start_does_not_blow_up_lrp0(seed):
    """The honest counterpart: the near-zero hidden unit is harmless in an all-ReLU network."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((6, 5))
    x = rng.standard_normal((1, 6))
    w1[0, 0] += (TINY - x[0] @ w1[:, 0]) / x[0, 0]  # hidden unit 0: z = 1e-12 > 0 (zero biases)
    model = rr.Sequential([rr.Dense(w1), rr.ReLU(), rr.Dense(rng.standard_normal((5, 5))), rr.ReLU(),
                           rr.Dense(rng.standard_normal((5, 3)))])
    z0 = model.trace(x)[model.layers[0].name][0, 0]
    assert 0 < z0 < 1e-11
    lrp0 = rr.explain(model, x, method="lrp0")
    fc = np.abs(lrp0.logits[0, lrp0.target[0]])
    # no division survives: LRP-0 is gradient x input here, bounded by products of weights
    gxi = rr.explain(model, x, method="gradient_x_input", target=lrp0.target)
    np.testing.assert_allclose(lrp0.relevance, gxi.relevance, rtol=1e-8, atol=1e-12)
    bound = np.abs(x).max() * np.prod([np.abs(layer.kernel).sum(axis=0).max() for layer in model.layers if isinstance(layer, rr.Dense)])
    assert np.all(_peak(lrp0) <= bound)
    assert np.all(_peak(lrp0) < 1e3 * fc)
    # the explained logit itself near zero, with the logit start: still no division by a small value
    # (LRP-0 stays gradient x input, bounded by the weights), although relative to the tiny |f_c|
    # it is large: sum_i R_i = f_c with O(1) terms cancelling. R-LRP's bound is relative to |f_c|.
    head = model.layers[-1]
    logits = model.forward(x)[0]
    c = int(np.argmin(np.abs(logits)))
    kernel = head.kernel.copy()
    h = model.trace(x)[model.layers[-2].name][0]
    k = int(np.argmax(h))
    kernel[k, c] += (TINY - logits[c]) / h[k]
    head.set_params(kernel=kernel)
    assert abs(model.forward(x)[0, c]) < 1e-11
    tiny = rr.explain(model, x, method="lrp0", target=c)
    gxi = rr.explain(model, x, method="gradient_x_input", target=c)
    np.testing.assert_allclose(tiny.relevance, gxi.relevance, rtol=1e-6, atol=1e-12)
    bound = np.abs(x).max() * np.prod([np.abs(layer.kernel).sum(axis=0).max() for layer in model.layers if isinstance(layer, rr.Dense)])
    assert np.all(_peak(tiny) <= bound)
    np.testing.assert_allclose(tiny.relevance.sum(), tiny.logits[0, c], rtol=1e-3, atol=1e-14)
    rlrp = rr.explain(model, x, target=c)
    assert np.all(_peak(rlrp) <= np.abs(rlrp.logits[0, c]) * (1 + 1e-9))
