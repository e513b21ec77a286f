"""R-LRP's definition choices (docs/spec.md): the start |f_c| e_c, max pooling as a selection, and the limits.

Each limit of the rule that the docs state is shown here by a counterexample that
runs: the cancellation inside the L1 rescale, the identity Dense, the
bias-dominated logit, and the closed form in sequential ReLU nets.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlrp_ref as rr
from rlrp_ref.data import digits, shapes
from rlrp_ref.models.simple_cnn import load_bundled
from relevance_nets import conv_net, dense_net


def _sums(e):
    return e.relevance.reshape(len(e.relevance), -1).sum(axis=1)


# --- the start: a negative logit keeps its sign -----------------------------------


@pytest.mark.parametrize("dataset", ["digits", "shapes"])
def test_negative_logits_are_explained_with_their_sign(dataset):
    """Explaining the lowest class (a negative logit) on the test split: the heatmap sums to the logit's sign."""
    model = load_bundled(dataset, dtype="float64")
    if dataset == "digits":
        x, _ = digits.load_split("test", dtype=np.float64)
    else:
        x = shapes.load_split("test", n=400, dtype=np.float64)[0]
    logits = model.forward(x)
    lowest = logits.argmin(axis=1)
    chosen = logits[np.arange(len(x)), lowest]
    negative = chosen < 0
    assert negative.sum() >= 100  # enough negative logits to measure on
    e = rr.explain(model, x[negative], target=lowest[negative])
    np.testing.assert_array_equal(e.output_relevance[np.arange(negative.sum()), lowest[negative]], np.abs(chosen[negative]))
    agree = np.mean(np.sign(_sums(e)) == np.sign(chosen[negative]))
    assert agree >= 0.95, f"{dataset}: {agree:.3f} of negative-logit explanations sum to the logit's sign"
    # L3 with the magnitude of the logit as mass
    np.testing.assert_allclose(np.abs(e.relevance).reshape(len(e.relevance), -1).sum(axis=1), np.abs(chosen[negative]), rtol=1e-10)
    # the signed start f_c e_c, given explicitly, multiplies the sign in twice: the opposite sign everywhere
    signed = np.zeros_like(logits[negative])
    signed[np.arange(negative.sum()), lowest[negative]] = chosen[negative]
    flipped = rr.explain(model, x[negative], target=signed)
    np.testing.assert_allclose(flipped.relevance, -e.relevance, rtol=1e-12, atol=1e-15)


def test_classical_rules_keep_the_signed_start():
    model, x = dense_net(3)
    e = rr.explain(model, x, method="epsilon")
    rows = np.arange(len(x))
    np.testing.assert_array_equal(e.output_relevance[rows, e.target], e.logits[rows, e.target])
    assert e.ledger.start == "logit"
    r = rr.explain(model, x)
    assert r.ledger.start == "abs_logit" and "start: R = |f_c| e_c" in r.ledger.table()
    given_start = np.ones_like(e.logits)
    assert rr.explain(model, x, target=given_start).ledger.start == "explicit"


# --- max pooling is a selection --------------------------------------------------


def _insert_unit_pools(model, rng):
    """The same network with MaxPool2D(1) after some rank-4 layers (each one an identity)."""
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if not isinstance(layer, (rr.Flatten, rr.GlobalAvgPool2D, rr.Dense)) and rng.random() < 0.7:
            layers.append(rr.MaxPool2D(1))
    return rr.Sequential(layers)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), dtype=st.sampled_from([np.float64, np.float32]))
def test_a_unit_max_pool_changes_no_rlrp_heatmap(seed, dtype):
    model, x = conv_net(seed, dtype=dtype)
    padded = _insert_unit_pools(model, np.random.default_rng(seed))
    np.testing.assert_array_equal(padded.forward(x), model.forward(x))
    want = rr.explain(model, x).relevance
    got = rr.explain(padded, x).relevance
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_max_pooling_does_not_multiply_by_the_winner():
    # one window, winner 3.0: the relevance of the pooled unit goes to it unchanged (R-LRP multiplies only at the Dense)
    x = np.array([[[[1.0], [3.0]], [[2.0], [0.5]]]])
    model = rr.Sequential([rr.MaxPool2D(2, name="mp"), rr.Flatten(name="fl"), rr.Dense(np.array([[-2.0]]), name="d")])
    e = rr.explain(model, x)
    assert e.logits[0, 0] == -6.0
    np.testing.assert_array_equal(e.relevance[0, :, :, 0], [[0.0, -6.0], [0.0, 0.0]])
    record = e.ledger.by_name("mp")
    assert record.rule == "rlrp_select" and record.scale[0] == 1.0 and record.law_rhs[0] == -6.0


def test_overlapping_windows_of_opposite_sign_are_rescaled():
    # 3 inputs, windows [0,1] and [1,2] of size 2 stride 1, both won by x1; the parts +a and -b meet there
    x = np.array([[[[0.0], [5.0], [1.0]]]])
    model = rr.Sequential([rr.MaxPool2D((1, 2), strides=1, name="mp"), rr.Flatten(), rr.Dense(np.array([[1.0], [-0.5]]))])
    e = rr.explain(model, x)  # f = 5 - 2.5 = 2.5; R at the pool: [5, -2.5] rescaled to |f| = 2.5 -> [5/3, -5/6]
    record = e.ledger.by_name("mp")
    np.testing.assert_allclose(record.sum_contributions[0], 2.5 * (2 / 3 - 1 / 3), rtol=1e-15)
    np.testing.assert_allclose(e.relevance[0, 0, :, 0], [0.0, 2.5, 0.0], rtol=1e-15)
    np.testing.assert_allclose(record.scale[0], 3.0, rtol=1e-15)


# --- the limits ----------------------------------------------------------------------


def _cancelling_net(d):
    """Two identical hidden units h = relu(x1 + x2) with output weights 1 and -1 + d; bias keeps f = 5 at x = (1, 1)."""
    hidden = rr.Dense(np.array([[1.0, 1.0], [1.0, 1.0]]), name="hidden")
    out = rr.Dense(np.array([[1.0], [-1.0 + d]]), np.array([5.0 - 2.0 * d]), name="out")
    return rr.Sequential([hidden, rr.ReLU(name="relu"), out])


def test_cancellation_in_the_rescale_flips_the_heatmap_while_the_logit_stays():
    x = np.array([[1.0, 1.0]])
    results = {}
    for d in (1e-3, -1e-3, 1e-6, -1e-6):
        e = rr.explain(_cancelling_net(d), x)
        assert abs(e.logits[0, 0] - 5.0) < 1e-12
        results[d] = e
        kappa = e.ledger.by_name("hidden").scale[0]
        # ||Rt||_1 at the input layer is |d| times what it would be without the cancellation: kappa ~ 1/|d|
        assert 0.2 / abs(d) < kappa < 2.0 / abs(d)
        # the bound still holds: |R_i| <= |f_c|
        assert np.abs(e.relevance).max() <= 5.0 * (1 + 1e-12)
    np.testing.assert_allclose(results[1e-3].relevance, -results[-1e-3].relevance, rtol=1e-9)
    assert np.all(results[1e-6].relevance > 0) and np.all(results[-1e-6].relevance < 0)


def test_an_identity_dense_changes_rlrp_but_not_lrp0():
    model, x = dense_net(11, zero_bias=True, allow_smooth=False)
    layers = list(model.layers)
    width = layers[0].kernel.shape[1]
    with_identity = rr.Sequential(layers[:2] + [rr.Dense(np.eye(width)), rr.ReLU()] + layers[2:])
    np.testing.assert_allclose(with_identity.forward(x), model.forward(x), rtol=1e-14)
    lrp0 = rr.explain(model, x, method="lrp0").relevance
    np.testing.assert_allclose(rr.explain(with_identity, x, method="lrp0").relevance, lrp0, rtol=1e-10, atol=1e-12)
    plain, doubled = rr.explain(model, x).relevance, rr.explain(with_identity, x).relevance
    assert np.abs(plain - doubled).max() > 1e-3 * np.abs(plain).max()


def test_a_bias_dominated_logit_is_explained_by_its_weight_contributions():
    # one Dense: f = x . w + b with b dominant; R = |f| (x * w) / ||x * w||_1 whatever b is
    x = np.array([[1.0, -2.0, 0.5]])
    w = np.array([[0.1], [0.05], [-0.2]])
    for b in (10.0, -10.0, 0.0):
        e = rr.explain(rr.Sequential([rr.Dense(w, np.array([b]))]), x)
        f = float(e.logits[0, 0])
        contributions = (x * w[:, 0])[0]
        np.testing.assert_allclose(e.relevance[0], abs(f) * contributions / np.abs(contributions).sum(), rtol=1e-14)
    # with b = 10, f = 9.9 > 0 although sum_i x_i w_i = -0.1 < 0: the heatmap sums to 9.9 * (-0.1 / 0.3) < 0
    e = rr.explain(rr.Sequential([rr.Dense(w, np.array([10.0]))]), x)
    np.testing.assert_allclose(e.logits[0, 0], 9.9, rtol=1e-15)
    np.testing.assert_allclose(e.relevance.sum(), -3.3, rtol=1e-13)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_closed_form_in_sequential_relu_nets_with_zero_biases(seed):
    """R^(0) = |f_c| (x * v) / ||x * v||_1, v = W_1 diag(a_1) ... W_L e_c; gradient x input with diag(1[a > 0])."""
    model, x = dense_net(seed, zero_bias=True, allow_smooth=False)
    e = rr.explain(model, x)
    gxi = rr.explain(model, x, method="gradient_x_input", target=e.target).relevance
    lrp0 = rr.explain(model, x, method="lrp0", target=e.target).relevance
    denses = [layer for layer in model.layers if isinstance(layer, rr.Dense)]
    for n in range(len(x)):
        acts, a = [], x[n]
        for layer in denses[:-1]:
            a = np.maximum(a @ layer.kernel, 0)
            acts.append(a)
        v = denses[-1].kernel[:, e.target[n]]
        g = v.copy()
        for layer, act in zip(reversed(denses[:-1]), reversed(acts)):
            v = layer.kernel @ (act * v)
            g = layer.kernel @ ((act > 0) * g)
        f = abs(e.logits[n, e.target[n]])
        xv = x[n] * v
        if np.abs(xv).sum() == 0:
            continue
        np.testing.assert_allclose(e.relevance[n], f * xv / np.abs(xv).sum(), rtol=1e-9, atol=1e-12 * f)
        np.testing.assert_allclose(gxi[n], x[n] * g, rtol=1e-9, atol=1e-12 * f)
        # LRP-0 from f_c e_c divides by z_j = the relevance's own factor: it equals gradient x input here
        np.testing.assert_allclose(lrp0[n], gxi[n], rtol=1e-8, atol=1e-10 * f)
