"""R-LRP's laws (RLRP_SPEC.md) as property tests over random nets, shapes, weights and inputs.

Each law is checked twice: from the ledger ``explain`` returns, and against a
naive R-LRP recomputed in the test from explicit matrices (``relevance_nets``).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rlrp_ref as rr
from relevance_nets import conv_net, dense_net, linear_matrix, naive_rlrp, residual_net

SEEDS = st.integers(0, 2**31 - 1)
BUILDERS = {"dense": dense_net, "conv": conv_net, "residual": residual_net}
NETS = st.sampled_from(sorted(BUILDERS))
TOL = {np.float64: dict(rtol=1e-9, atol=1e-10), np.float32: dict(rtol=2e-3, atol=1e-4)}


def _top_inputs_relevance(model, e):
    """Relevance at the input of each top-level layer, read from keep_layers."""
    out = {}
    for k, layer in enumerate(model.layers):
        out[layer.name] = e.relevance if k == 0 else e.layers[model.layers[k - 1].name]
    return out


def _f_c(e):
    return np.abs(e.logits[np.arange(len(e.target)), e.target])


# --- against the naive recomputation ------------------------------------------


@given(kind=NETS, seed=SEEDS)
def test_rlrp_matches_naive_spec_and_ledger(kind, seed):
    model, x = BUILDERS[kind](seed)
    e = rr.explain(model, x, keep_layers=True)
    assert e.relevance.shape == x.shape and e.relevance.dtype == x.dtype
    for n in range(x.shape[0]):
        start = e.output_relevance[n]
        # the start is |f_c| e_c (docs/spec.md, "Start")
        assert np.count_nonzero(start) == 1 and start[e.target[n]] == abs(e.logits[n, e.target[n]])
        log = {}
        want = naive_rlrp(model, x[n], start, log)
        np.testing.assert_allclose(e.relevance[n], want, rtol=1e-8, atol=1e-10 * np.abs(start).sum())
        for record in e.ledger:
            if record.name not in log:
                continue
            entry = log[record.name]
            if record.kind == "residual_split":
                assert record.residual_ties[n] == entry["ties"]
                continue
            np.testing.assert_allclose(record.scale[n], entry["kappa"], rtol=1e-8)
            if "neuron_law" in entry:
                # L1, neuron law, from explicit contributions z_ij = a_i w_ij
                col_sums, z_minus_b = entry["neuron_law"]
                np.testing.assert_allclose(col_sums, z_minus_b, rtol=1e-9, atol=1e-10)
                # L2 from the ledger: sum(Rt) == sum_j (z_j - b_j) R_j, checked against the naive value
                scale_rhs = max(1.0, abs(entry["rhs"]))
                assert abs(record.law_rhs[n] - entry["rhs"]) <= 1e-9 * scale_rhs
                assert abs(record.sum_contributions[n] - record.law_rhs[n]) <= 1e-9 * scale_rhs
                # L2: sum_i R_i = kappa * sum_j (z_j - b_j) R_j
                assert abs(entry["sum_in"] - record.scale[n] * record.law_rhs[n]) <= 1e-8 * max(1.0, abs(entry["sum_in"]))
            elif "rhs" in entry:
                # max pooling, a selection: sum(Rt) == sum_j R_j, and sum_i R_i = kappa * sum_j R_j
                assert record.rule == "rlrp_select"
                scale_rhs = max(1.0, abs(entry["rhs"]))
                assert abs(record.law_rhs[n] - entry["rhs"]) <= 1e-9 * scale_rhs
                assert abs(record.sum_contributions[n] - record.law_rhs[n]) <= 1e-9 * scale_rhs
                assert abs(entry["sum_in"] - record.scale[n] * record.law_rhs[n]) <= 1e-8 * max(1.0, abs(entry["sum_in"]))
    # L2 once more on the arrays explain returned, for the top-level linear maps
    inputs = _top_inputs_relevance(model, e)
    for record in e.ledger:
        if record.path == () and record.rule in ("rlrp", "rlrp_select", "rlrp_residual") and record.kind != "residual_split":
            sums = inputs[record.name].reshape(len(x), -1).sum(axis=1)
            np.testing.assert_allclose(sums, record.scale * record.law_rhs, rtol=1e-8, atol=1e-10 * np.abs(e.output_relevance).max())


@given(kind=NETS, seed=SEEDS, dtype=st.sampled_from([np.float64, np.float32]))
def test_mass_law_and_bound(kind, seed, dtype):
    """L3 at every top-level boundary and per residual path, and the bound |R_i^(0)| <= ||R^(L)||_1."""
    model, x = BUILDERS[kind](seed, dtype=dtype)
    e = rr.explain(model, x, keep_layers=True)
    assert e.relevance.dtype == dtype
    fc = _f_c(e)
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    alive = np.ones(len(x), dtype=bool)
    for record in e.ledger:
        if record.kind == "residual_split":
            continue
        if record.path == ():
            np.testing.assert_allclose(record.l1_out, np.where(alive, fc, 0), rtol=rtol)
            alive &= ~record.absorbed
            np.testing.assert_allclose(record.l1_in, np.where(alive, fc, 0), rtol=rtol)
        else:
            # inside a residual path each path keeps its own mass
            np.testing.assert_allclose(record.l1_in, np.where(record.absorbed, 0, record.l1_out), rtol=rtol)
    # independently of the ledger: the arrays themselves
    for layer in model.layers:
        mass = np.abs(e.layers[layer.name]).reshape(len(x), -1).sum(axis=1)
        assert np.all((np.abs(mass - fc) <= rtol * fc + 1e-30) | (mass == 0))
    mass_in = np.abs(e.relevance.astype(np.float64)).reshape(len(x), -1).sum(axis=1)
    assert np.all((np.abs(mass_in - fc) <= rtol * fc) | (mass_in == 0))
    # the bound
    start_mass = np.abs(e.output_relevance.astype(np.float64)).sum(axis=1)
    peak = np.abs(e.relevance.astype(np.float64)).reshape(len(x), -1).max(axis=1)
    assert np.all(peak <= start_mass * (1 + rtol))


@given(seed=SEEDS, projection=st.booleans(), dense=st.booleans())
def test_residual_split_law(seed, projection, dense):
    """L4: R_s + R_F = R_y exactly where s + F != 0, with R_s = s / (s + F) R_y."""
    model, x = residual_net(seed, projection=projection, dense=dense)
    e = rr.explain(model, x, keep_layers=True)
    trace = model.trace(x)
    inputs = dict(zip([layer.name for layer in model.layers], [x] + [trace[layer.name] for layer in model.layers[:-1]]))
    for block in [layer for layer in model.layers if isinstance(layer, rr.Residual)]:
        u = inputs[block.name]
        s = trace[block.skip.name] if block.skip is not None else u
        f = trace[block.branch.name]
        r_y = e.layers[block.name]
        r_f = e.layers[block.branch.name]
        nonzero = (s + f) != 0
        np.testing.assert_allclose(r_f[nonzero], (f / np.where(nonzero, s + f, 1) * r_y)[nonzero], rtol=1e-12, atol=1e-300)
        if block.skip is not None:
            r_s = e.layers[block.skip.name]
            lhs, scale = (r_s + r_f)[nonzero], (np.abs(r_s) + np.abs(r_f))[nonzero]
            assert np.all(np.abs(lhs - r_y[nonzero]) <= 1e-12 * np.maximum(scale, np.abs(r_y[nonzero])))
        split = e.ledger.by_name(block.name, "residual_split")
        assert np.all(split.residual_ties == 0)
        np.testing.assert_allclose(split.sum_contributions, split.law_rhs, rtol=1e-10, atol=1e-12 * np.abs(split.law_rhs).max())


def test_residual_ties_split_half_and_half_and_are_counted():
    rng = np.random.default_rng(3)
    width = 4
    block = rr.Residual(rr.Sequential([rr.Dense(-np.eye(width))]), None, activation=None)  # s + F == 0 everywhere
    model = rr.Sequential([rr.Dense(rng.standard_normal((3, width))), block])
    x = rng.standard_normal((2, 3))
    start = rng.standard_normal((2, width))
    start[1, 0] = 0.0
    e = rr.explain(model, x, target=start, keep_layers=True)
    split = e.ledger.by_name(block.name, "residual_split")
    np.testing.assert_array_equal(split.residual_ties, [4, 3])
    np.testing.assert_array_equal(e.layers[block.branch.name], start / 2)
    assert e.target is None
    # the block rescale then restores the block's mass
    merge = e.ledger.by_name(block.name, "residual")
    np.testing.assert_allclose(merge.l1_in, np.abs(start).sum(axis=1), rtol=1e-12)


# --- homogeneity, batch independence, absorption --------------------------------


@given(kind=NETS, seed=SEEDS, alpha=st.floats(0.01, 100.0))
def test_homogeneity_with_zero_biases(kind, seed, alpha):
    build = BUILDERS[kind]
    kwargs = dict(zero_bias=True)
    if kind != "residual":
        kwargs["allow_smooth"] = False
    model, x = build(seed, **kwargs)
    e = rr.explain(model, x)
    linear = [layer for layer in model.layers if isinstance(layer, (rr.Dense, rr.Conv2D))]
    pick = linear[seed % len(linear)]
    scaled = model.copy()
    scaled.get_layer(pick.name).kernel = pick.kernel * alpha
    e2 = rr.explain(scaled, x, target=e.target)
    np.testing.assert_allclose(e2.relevance, alpha * e.relevance, rtol=1e-9, atol=1e-12 * alpha * np.abs(e.relevance).max())
    mass = np.abs(e.relevance).reshape(len(x), -1).sum(axis=1, keepdims=True)
    mass2 = np.abs(e2.relevance).reshape(len(x), -1).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(e2.relevance.reshape(len(x), -1) / np.where(mass2 > 0, mass2, 1),
                               e.relevance.reshape(len(x), -1) / np.where(mass > 0, mass, 1), rtol=1e-9, atol=1e-12)


@given(kind=NETS, seed=SEEDS, method=st.sampled_from(["rlrp", "epsilon", "zplus", "gradient"]))
def test_batch_independence(kind, seed, method):
    model, x = BUILDERS[kind](seed)
    e = rr.explain(model, x, method=method)
    for n in range(len(x)):
        alone = rr.explain(model, x[n : n + 1], method=method)
        np.testing.assert_allclose(alone.relevance[0], e.relevance[n], rtol=1e-10, atol=1e-12 * max(1.0, np.abs(e.relevance).max()))
        assert alone.target[0] == e.target[n]
        for rec_alone, rec in zip(alone.ledger, e.ledger):
            assert rec_alone.name == rec.name
            np.testing.assert_allclose(rec_alone.scale[0], rec.scale[n], rtol=1e-10)


def test_absorbed_layer_gives_zero_and_the_ledger_says_so():
    rng = np.random.default_rng(0)
    head = rr.Dense(np.zeros((3, 2)), np.array([1.5, -2.0]), name="head")  # logits are pure bias
    model = rr.Sequential([rr.Dense(rng.standard_normal((4, 3))), rr.ReLU(), head])
    x = rng.standard_normal((2, 4))
    e = rr.explain(model, x)
    np.testing.assert_array_equal(e.relevance, 0)
    record = e.ledger.by_name("head")
    assert record.absorbed.all() and np.all(record.scale == 0) and np.all(record.l1_in == 0)
    assert np.all(record.l1_out == np.abs(e.logits[np.arange(2), e.target]))
    assert "absorbed" in e.ledger.table(0)


# --- float32 fast mode, API --------------------------------------------------------


@given(kind=NETS, seed=SEEDS)
def test_float32_stays_float32_and_close_to_float64(kind, seed):
    model64, x64 = BUILDERS[kind](seed)
    e64 = rr.explain(model64, x64)
    e32 = rr.explain(model64.astype(np.float32), x64.astype(np.float32), target=e64.target)
    assert e32.relevance.dtype == np.float32 and e32.logits.dtype == np.float32
    # the same normalized heatmap where float64 shows no cancellation at a residual sum
    if kind != "residual":
        mass = np.abs(e64.relevance).reshape(len(x64), -1).sum(axis=1)
        diff = np.abs(e32.relevance - e64.relevance).reshape(len(x64), -1).max(axis=1)
        assert np.all(diff <= 1e-3 * mass)


def test_float32_input_with_float64_model_runs_in_float32():
    model, x = conv_net(1)
    e = rr.explain(model, x.astype(np.float32))
    assert e.relevance.dtype == np.float32 and e.logits.dtype == np.float32
    assert model.dtype == np.float64  # the user's model is untouched


def test_rlrp_takes_no_parameter():
    model, x = dense_net(0)
    with pytest.raises(TypeError, match="no parameters.*'eps'"):
        rr.explain(model, x, eps=1e-6)
    with pytest.raises(TypeError, match="gamma"):
        rr.explain(model, x, method="rlrp", gamma=0.25)


def test_targets_int_per_sample_and_explicit():
    model, x = dense_net(5)
    x = np.repeat(x[:1], 3, axis=0)
    classes = model.forward(x).shape[1]
    e_int = rr.explain(model, x, target=1)
    np.testing.assert_array_equal(e_int.target, [1, 1, 1])
    e_list = rr.explain(model, x, target=[0, 1, classes - 1])
    np.testing.assert_array_equal(e_list.target, [0, 1, classes - 1])
    np.testing.assert_allclose(e_list.relevance[1], e_int.relevance[1], rtol=1e-12)
    start = np.zeros((3, classes))
    start[np.arange(3), [0, 1, classes - 1]] = np.abs(e_list.logits[np.arange(3), [0, 1, classes - 1]])
    e_arr = rr.explain(model, x, target=start)
    assert e_arr.target is None
    np.testing.assert_allclose(e_arr.relevance, e_list.relevance, rtol=1e-12)
    e_default = rr.explain(model, x)
    np.testing.assert_array_equal(e_default.target, e_default.logits.argmax(axis=1))


def test_target_errors():
    model, x = dense_net(5)
    classes = model.forward(x).shape[1]
    with pytest.raises(ValueError, match=rf"\[0, {classes - 1}\].*found {classes}"):
        rr.explain(model, x, target=classes)
    with pytest.raises(ValueError, match=r"found -1"):
        rr.explain(model, x, target=-1)
    with pytest.raises(ValueError, match="shape"):
        rr.explain(model, x, target=np.zeros((len(x) + 1,), dtype=int))
    with pytest.raises(ValueError, match="logits' shape"):
        rr.explain(model, x, target=np.zeros((len(x), classes + 1)))
    with pytest.raises(ValueError, match="unknown method.*rlrp.*epsilon_gamma_box.*smoothgrad"):
        rr.explain(model, x, method="lrp-magic")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        rr.explain(model, bad)


def test_batchnorm_folded_on_a_copy():
    rng = np.random.default_rng(7)
    bn = rr.BatchNorm(rng.uniform(0.5, 2, 3), rng.standard_normal(3), rng.standard_normal(3), rng.uniform(0.5, 2, 3))
    model = rr.Sequential([rr.Conv2D(rng.standard_normal((3, 3, 2, 3)), rng.standard_normal(3), padding="same"), bn, rr.ReLU(),
                           rr.GlobalAvgPool2D(), rr.Dense(rng.standard_normal((3, 2)))])
    before = {k: v.copy() for k, v in bn.params.items()}
    x = rng.standard_normal((2, 5, 5, 2))
    e = rr.explain(model, x)
    folded = rr.canonize.fold_batchnorm(model)
    np.testing.assert_allclose(e.relevance, rr.explain(folded, x).relevance, rtol=1e-12)
    np.testing.assert_allclose(e.logits, model.forward(x), rtol=1e-10)
    assert any(isinstance(layer, rr.BatchNorm) for layer in model.layers)
    for k, v in bn.params.items():
        np.testing.assert_array_equal(v, before[k])
    assert all(r.kind != "batch_normalization" for r in e.ledger)


def test_keep_layers_shapes_follow_the_trace():
    model, x = residual_net(11, projection=True, dense=False)
    e = rr.explain(model, x, keep_layers=True)
    trace = model.trace(x)
    for name, relevance in e.layers.items():
        assert relevance.shape == trace[name].shape, name
    assert rr.explain(model, x).layers is None


def test_maxpool_is_a_selection_with_first_index_ties():
    # a window with a tie: the first in row-major order takes all of it
    x = np.array([[[[2.0], [2.0]], [[1.0], [2.0]]]])
    model = rr.Sequential([rr.MaxPool2D(2), rr.Flatten(), rr.Dense(np.array([[1.0]]))])
    e = rr.explain(model, x)
    np.testing.assert_array_equal(e.relevance[0, :, :, 0], [[2.0, 0.0], [0.0, 0.0]])
    w = linear_matrix(model.layers[0], x[0])
    np.testing.assert_array_equal(w[:, 0], [1, 0, 0, 0])


def test_a_bare_layer_is_explained_as_a_one_layer_model():
    rng = np.random.default_rng(2)
    layer = rr.Dense(rng.standard_normal((4, 3)), rng.standard_normal(3))
    x = rng.standard_normal((2, 4))
    e = rr.explain(layer, x)
    np.testing.assert_allclose(e.relevance, rr.explain(rr.Sequential([layer.copy()]), x).relevance, rtol=1e-12)
    np.testing.assert_allclose(np.abs(e.relevance).sum(axis=1), np.abs(e.logits[np.arange(2), e.target]), rtol=1e-12)


@pytest.mark.parametrize("method", ["rlrp", "epsilon", "lrp0", "gradient", "gradient_x_input"])
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_one_forward_pass_per_explanation(kind, method):
    """Every rule reads the one trace: each layer runs forward exactly once (nothing is recomputed)."""
    build = BUILDERS[kind]
    model, x = build(3) if kind == "residual" else build(3, allow_smooth=False)
    calls = {}
    for layer in model.iter_layers():
        def counting(inp, _layer=layer, _forward=layer.forward):
            calls[_layer.name] = calls.get(_layer.name, 0) + 1
            return _forward(inp)
        layer.forward = counting
    rr.explain(model, x, method=method)
    assert calls == {layer.name: 1 for layer in model.iter_layers()}
