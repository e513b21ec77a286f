"""Gradient baselines: finite differences, their defining identities, and the explain() entry points."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rlrp_ref as rr
from oracles import numerical_vjp
from relevance_nets import BUILDERS_CLASSICAL, dense_net

SEEDS = st.integers(0, 2**31 - 1)
KINDS = st.sampled_from(sorted(BUILDERS_CLASSICAL))


@given(kind=KINDS, seed=SEEDS)
def test_gradient_agrees_with_finite_differences(kind, seed):
    model, x = BUILDERS_CLASSICAL[kind](seed)
    e = rr.explain(model, x, method="gradient")
    seed_vec = np.zeros_like(e.logits)
    seed_vec[np.arange(len(x)), e.target] = 1.0
    np.testing.assert_array_equal(e.output_relevance, seed_vec)
    want = numerical_vjp(model.forward, x, seed_vec, eps=1e-6)
    np.testing.assert_allclose(e.relevance, want, rtol=1e-4, atol=1e-6)


@given(kind=KINDS, seed=SEEDS)
def test_gradient_with_an_explicit_seed_and_gradient_x_input(kind, seed):
    model, x = BUILDERS_CLASSICAL[kind](seed)
    rng = np.random.default_rng(seed)
    classes = model.forward(x).shape[1]
    v = rng.standard_normal((len(x), classes))
    g = rr.explain(model, x, method="gradient", target=v)
    assert g.target is None
    np.testing.assert_allclose(g.relevance, numerical_vjp(model.forward, x, v), rtol=1e-4, atol=1e-6)
    gxi = rr.explain(model, x, method="gradient_x_input", target=v)
    np.testing.assert_allclose(gxi.relevance, x * g.relevance, rtol=1e-12)


@given(kind=KINDS, seed=SEEDS)
def test_integrated_gradients_one_step_is_gradient_x_input_and_completeness(kind, seed):
    model, x = BUILDERS_CLASSICAL[kind](seed)
    one = rr.explain(model, x, method="integrated_gradients", steps=1)
    gxi = rr.explain(model, x, method="gradient_x_input")
    np.testing.assert_allclose(one.relevance, gxi.relevance, rtol=1e-12, atol=1e-15)
    # with a baseline: (x - x0) * mean of gradients on the right Riemann points, computed here by hand
    x0 = np.full_like(x, 0.3)
    steps = 4
    ig = rr.explain(model, x, method="integrated_gradients", steps=steps, baseline=0.3, target=gxi.target)
    seed_vec = gxi.output_relevance
    grads = [model.vjp(x0 + k / steps * (x - x0), seed_vec) for k in range(1, steps + 1)]
    np.testing.assert_allclose(ig.relevance, (x - x0) * np.mean(grads, axis=0), rtol=1e-10, atol=1e-13)


def test_integrated_gradients_completeness_on_a_smooth_net():
    model, x = dense_net(3, allow_smooth=True)
    # a purely smooth net: softplus everywhere
    layers = [rr.Softplus() if isinstance(layer, rr.ReLU) else layer for layer in model.layers]
    model = rr.Sequential(layers)
    e = rr.explain(model, x, method="integrated_gradients", steps=400)
    logits0 = model.forward(np.zeros_like(x))
    delta = e.logits[np.arange(len(x)), e.target] - logits0[np.arange(len(x)), e.target]
    np.testing.assert_allclose(e.relevance.sum(axis=1), delta, rtol=2e-2, atol=1e-3 * np.abs(delta).max())


def test_integrated_gradients_is_exact_on_a_linear_model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3))
    model = rr.Sequential([rr.Dense(w, rng.standard_normal(3))])
    x = rng.standard_normal((4, 5))
    e = rr.explain(model, x, method="integrated_gradients", steps=3, target=1)
    np.testing.assert_allclose(e.relevance, x * w[:, 1], rtol=1e-12)


def test_smoothgrad_zero_noise_is_the_gradient_and_seeds_reproduce():
    model, x = BUILDERS_CLASSICAL["conv"](5)
    g = rr.explain(model, x, method="gradient")
    s0 = rr.explain(model, x, method="smoothgrad", n=3, sigma=0.0)
    np.testing.assert_allclose(s0.relevance, g.relevance, rtol=1e-12)
    a = rr.explain(model, x, method="smoothgrad", n=4, sigma=0.2, seed=7)
    b = rr.explain(model, x, method="smoothgrad", n=4, sigma=0.2, seed=7)
    c = rr.explain(model, x, method="smoothgrad", n=4, sigma=0.2, seed=8)
    np.testing.assert_array_equal(a.relevance, b.relevance)
    assert not np.allclose(a.relevance, c.relevance)
    # the mean of the gradients at the same noisy points, drawn here from the same generator
    rng = np.random.default_rng(7)
    std = 0.2 * (x.max(axis=(1, 2, 3), keepdims=True) - x.min(axis=(1, 2, 3), keepdims=True))
    want = np.mean([model.vjp(x + rng.standard_normal(x.shape) * std, g.output_relevance) for _ in range(4)], axis=0)
    np.testing.assert_allclose(a.relevance, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("method", ["gradient", "gradient_x_input", "integrated_gradients", "smoothgrad"])
def test_gradient_methods_keep_float32(method):
    model, x = BUILDERS_CLASSICAL["residual"](2, dtype=np.float32)
    e = rr.explain(model, x, method=method)
    assert e.relevance.dtype == np.float32 and e.relevance.shape == x.shape
    assert e.ledger == [] and e.layers is None


@pytest.mark.parametrize("method, kwargs, error", [
    ("integrated_gradients", dict(steps=0), ValueError),
    ("integrated_gradients", dict(baseline=np.zeros(7)), ValueError),
    ("smoothgrad", dict(sigma=-1.0), ValueError),
    ("smoothgrad", dict(n=0), ValueError),
    ("gradient", dict(eps=0.1), TypeError),
    ("gradient", dict(trace=None), TypeError),
    ("smoothgrad", dict(steps=3), TypeError),
])
def test_gradient_method_parameter_errors(method, kwargs, error):
    model, x = dense_net(1)
    with pytest.raises(error):
        rr.explain(model, x, method=method, **kwargs)


def test_attribution_functions_reuse_a_trace():
    model, x = BUILDERS_CLASSICAL["conv"](9)
    trace = model.trace(x)
    seed_vec = np.zeros_like(trace.output)
    seed_vec[:, 0] = 1
    np.testing.assert_allclose(rr.attribution.gradient(model, x, seed_vec, trace=trace), model.vjp(x, seed_vec), rtol=1e-12)
