"""Evaluation metrics on constructed cases whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlrp_ref import Conv2D, Dense, Flatten, ReLU, Sequential
from rlrp_ref.evaluate import (
    blowup_ratio,
    cascading_randomization,
    input_noise_robustness,
    local_lipschitz,
    max_sensitivity,
    nonfinite_share,
    numerical_robustness,
    perturbation_baseline,
    perturbation_curves,
    region_perturbation,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    spearman_rows,
)
from rlrp_ref.evaluate.perturbation import patch_order
from rlrp_ref.evaluate.randomization import parameter_layers


def linear_model(rng, h=6, w=6, c=1, classes=3):
    kernel = rng.normal(size=(h * w * c, classes))
    return Sequential([Flatten(), Dense(kernel, np.zeros(classes))])


def grad_x_input(model):
    """Gradient x input through ``model.vjp``: the exact contributions ``w_i x_i`` of a linear model."""

    def explain(x, target):
        logits = model.forward(x)
        onehot = np.zeros_like(logits)
        onehot[np.arange(len(target)), target] = 1.0
        return x * model.vjp(x, onehot)

    return explain


# ---------------------------------------------------------------------------
# localization
# ---------------------------------------------------------------------------


def test_mask_as_heatmap_scores_one(rng):
    masks = rng.random((5, 8, 8)) < 0.3
    masks[:, 0, 0] = True  # no empty mask
    relevance = masks[..., None].astype(np.float64)
    for pooling in ("sum,pos", "sum,abs", "l2-norm,sq"):
        np.testing.assert_array_equal(relevance_mass_accuracy(relevance, masks, pooling), 1.0)
        np.testing.assert_array_equal(relevance_rank_accuracy(relevance, masks, pooling), 1.0)


def test_localization_hand_example():
    # 2 x 2 image, mask on the left column; relevance [[3, -1], [1, 4]].
    relevance = np.array([[[3.0, -1.0], [1.0, 4.0]]])[..., None]
    mask = np.array([[[True, False], [True, False]]])
    # sum,pos: within = 3 + 1, total = 3 + 1 + 4
    np.testing.assert_allclose(relevance_mass_accuracy(relevance, mask), [4 / 8])
    # sum,abs: total = 3 + 1 + 1 + 4
    np.testing.assert_allclose(relevance_mass_accuracy(relevance, mask, "sum,abs"), [4 / 9])
    # K = 2, the two highest are 4 (off) and 3 (on)
    np.testing.assert_allclose(relevance_rank_accuracy(relevance, mask), [0.5])
    # channel pooling happens before the metric: two channels that cancel on the right column
    two = np.concatenate([relevance, np.array([[[0.0, 1.0], [0.0, -4.0]]])[..., None]], axis=-1)
    np.testing.assert_allclose(relevance_mass_accuracy(two, mask), [1.0])


def test_localization_undefined_is_nan_and_flat_map_is_chance(rng):
    mask = np.zeros((3, 16, 16), bool)
    mask[:, 4:8, 4:12] = True  # 32 of 256 pixels
    mask[2] = False
    negative = -np.ones((3, 16, 16, 1))
    mass = relevance_mass_accuracy(negative, mask)
    assert np.isnan(mass).all()  # no positive relevance at all
    flat = np.ones((3, 16, 16, 1))
    rank = relevance_rank_accuracy(flat, mask)
    assert np.isnan(rank[2])  # empty mask
    np.testing.assert_allclose(relevance_mass_accuracy(flat, mask)[:2], 32 / 256)
    many = np.ones((400, 16, 16, 1))
    chance = relevance_rank_accuracy(many, np.broadcast_to(mask[0], (400, 16, 16)), seed=3)
    assert abs(chance.mean() - 32 / 256) < 0.02  # random tie-break -> chance level


# ---------------------------------------------------------------------------
# perturbation
# ---------------------------------------------------------------------------


def test_true_contributions_give_best_aopc_on_linear_model(rng):
    model = linear_model(rng)
    x = rng.random((16, 6, 6, 1))
    target = rng.integers(0, 3, size=16)
    true_map = grad_x_input(model)(x, target)  # exact contribution of every pixel under a zero baseline
    curves = perturbation_curves(model.forward, x, true_map, target, kind="zero", seed=1)
    reversed_curves = perturbation_curves(model.forward, x, -true_map, target, kind="zero", seed=1)
    random_aopc = [
        perturbation_curves(model.forward, x, rng.normal(size=x.shape), target, kind="zero", seed=s)
        for s in range(5)
    ]
    # removing the largest remaining contributions first is the best any ordering can do at every step
    for other in random_aopc + [reversed_curves]:
        assert curves["aopc_morf"] > other["aopc_morf"]
        assert curves["aopc_lerf"] < other["aopc_lerf"]
        assert curves["abpc"] > other["abpc"]
        assert np.all(curves["morf"].mean_curve <= other["morf"].mean_curve + 1e-12)
    # reversing the map swaps MoRF and LeRF exactly (no ties among continuous contributions)
    np.testing.assert_allclose(reversed_curves["aopc_morf"], curves["aopc_lerf"], rtol=1e-12)
    # the curve starts at the logit and, with every pixel zeroed, ends at the bias (0)
    logits = model.forward(x)[np.arange(16), target]
    np.testing.assert_allclose(curves["morf"].scores[:, 0], logits)
    np.testing.assert_allclose(curves["morf"].scores[:, -1], 0.0, atol=1e-12)
    # AOPC by hand for one image: mean over k of the sum of the k largest contributions
    c = np.sort(true_map[0].ravel())[::-1]
    by_hand = np.concatenate([[0.0], np.cumsum(c)]).mean()
    np.testing.assert_allclose(curves["morf"].aopc_per_image[0], by_hand)


def test_patches_steps_and_fraction(rng):
    model = linear_model(rng)
    x = rng.random((4, 6, 6, 1))
    target = np.zeros(4, dtype=int)
    relevance = grad_x_input(model)(x, target)
    curve = region_perturbation(model.forward, x, relevance, target, patch=2, steps=3, fraction=0.5)
    # 9 patches of 2 x 2, half of them -> 4 or 5 (round(4.5) = 4), curve at 0, 1, 3, 4 patches
    np.testing.assert_allclose(curve.fraction, np.array([0, 1, 3, 4]) / 9)
    assert curve.scores.shape == (4, 4)
    # patch ranks are whole 2 x 2 tiles, ordered by their summed relevance
    ranks = patch_order(relevance[..., 0], patch=2)
    tiles = ranks.reshape(4, 3, 2, 3, 2)
    assert np.all(tiles == tiles[:, :, :1, :, :1])
    tile_sums = relevance[..., 0].reshape(4, 3, 2, 3, 2).sum(axis=(2, 4)).reshape(4, 9)
    first = tiles[:, :, 0, :, 0].reshape(4, 9).argmin(axis=1)
    np.testing.assert_array_equal(first, tile_sums.argmax(axis=1))
    # uneven tiles: a 5 x 5 map with 2 x 2 patches has 9 patches, edge ones smaller
    assert patch_order(rng.random((2, 5, 5)), patch=2).max() == 8


def test_features_input(rng):
    kernel = rng.normal(size=(10, 2))
    model = Sequential([Dense(kernel)])
    x = rng.random((3, 10))
    target = np.array([0, 1, 0])
    relevance = x * kernel[:, target].T
    curves = perturbation_curves(model.forward, x, relevance, target)
    assert curves["morf"].scores.shape == (3, 11)
    assert curves["abpc"] > 0


def test_perturbation_baselines(rng):
    x = rng.random((2, 8, 8, 3))
    assert not perturbation_baseline(x, "zero").any()
    np.testing.assert_allclose(perturbation_baseline(x, "mean")[:, 3, 5], x.mean(axis=(1, 2)))
    noise = perturbation_baseline(x, "uniform", seed=7)
    np.testing.assert_array_equal(noise, perturbation_baseline(x, "uniform", seed=7))
    assert x.min() <= noise.min() and noise.max() <= x.max()
    assert not np.array_equal(noise, perturbation_baseline(x, "uniform", seed=8))
    flat = np.full((1, 8, 8, 2), 0.25)
    np.testing.assert_allclose(perturbation_baseline(flat, "blur", blur_sigma=2.0), flat)
    blurred = perturbation_baseline(x, "blur", blur_sigma=1.0)
    assert blurred.std() < x.std()  # smoothing lowers the variance
    np.testing.assert_allclose(blurred.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=0.05)
    with pytest.raises(ValueError, match="perturbation kind"):
        perturbation_baseline(x, "salt")


# ---------------------------------------------------------------------------
# randomization
# ---------------------------------------------------------------------------


def small_cnn(rng):
    return Sequential([
        Conv2D(rng.normal(size=(3, 3, 1, 4)) * 0.5, rng.normal(size=4) * 0.1, padding="same"),
        ReLU(),
        Flatten(),
        Dense(rng.normal(size=(8 * 8 * 4, 6)) * 0.1, rng.normal(size=6) * 0.1),
        ReLU(),
        Dense(rng.normal(size=(6, 3)), np.zeros(3)),
    ])


def test_spearman_rows():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    b = np.array([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    result = spearman_rows(a, b)
    np.testing.assert_allclose(result[:2], [1.0, -1.0])
    assert np.isnan(result[2])  # constant map: undefined


def test_random_map_gives_randomization_correlation_near_zero(rng):
    model = small_cnn(rng)
    x = rng.random((20, 8, 8, 1))
    target = np.zeros(20, dtype=int)
    noise = np.random.default_rng(5)

    def random_explainer(model, x, target):
        return noise.normal(size=x.shape)

    result = cascading_randomization(random_explainer, model, x, target, seed=0)
    assert result.layers == [layer.name for layer in parameter_layers(model)][::-1]
    assert result.spearman.shape == (3, 20)
    assert abs(result.spearman.mean()) < 0.05
    assert abs(result.spearman_abs.mean()) < 0.05
    assert np.all(np.abs(result.spearman) < 0.5)


def test_model_independent_explainer_fails_and_gradient_passes(rng):
    model = small_cnn(rng)
    x = rng.random((10, 8, 8, 1))
    target = np.ones(10, dtype=int)
    layer_names = [layer.name for layer in parameter_layers(model)]
    kernels_before = [layer.kernel.copy() for layer in parameter_layers(model)]

    def input_as_explanation(model, x, target):  # an "edge detector": ignores the model
        return x.copy()

    stuck = cascading_randomization(input_as_explanation, model, x, target)
    np.testing.assert_allclose(stuck.spearman, 1.0)
    assert stuck.layers == layer_names[::-1]

    def gradient(model, x, target):
        return grad_x_input(model)(x, target)

    sane = cascading_randomization(gradient, model, x, target, seed=1)
    means = sane.mean()
    assert means[-1] < 0.5  # fully randomized: far from the original
    # the model handed in is untouched
    for layer, before in zip(parameter_layers(model), kernels_before):
        np.testing.assert_array_equal(layer.kernel, before)


# ---------------------------------------------------------------------------
# robustness
# ---------------------------------------------------------------------------


def test_constant_explainer_has_zero_sensitivity(rng):
    x = rng.random((4, 8, 8, 1))
    target = np.zeros(4, dtype=int)
    fixed = rng.normal(size=x.shape)

    def constant(x, target):
        return fixed

    result = input_noise_robustness(constant, x, target, radius=0.1, n_samples=5)
    np.testing.assert_array_equal(result.sensitivity, 0.0)
    np.testing.assert_array_equal(result.relative_sensitivity, 0.0)
    np.testing.assert_array_equal(result.lipschitz, 0.0)


def test_identity_explainer_sensitivity_is_noise_norm(rng):
    x = rng.random((6, 32, 32, 1))
    target = np.zeros(6, dtype=int)
    d, radius = x[0].size, 0.05

    def identity(x, target):
        return x

    sens = max_sensitivity(identity, x, target, radius=radius, n_samples=8, seed=2)
    # ||delta||_2 for delta ~ U([-r, r]^d) concentrates at r sqrt(d / 3); it can never exceed r sqrt(d)
    np.testing.assert_allclose(sens, radius * np.sqrt(d / 3), rtol=0.05)
    assert np.all(sens <= radius * np.sqrt(d))
    np.testing.assert_allclose(local_lipschitz(identity, x, target, radius=radius, n_samples=8), 1.0, rtol=1e-12)
    relative = max_sensitivity(identity, x, target, radius=radius, n_samples=8, seed=2, relative=True)
    np.testing.assert_allclose(relative, sens / np.sqrt((x.reshape(6, -1) ** 2).sum(axis=1)))
    # scaling the explainer scales the absolute numbers and leaves the relative one
    doubled = max_sensitivity(lambda x, t: 2 * x, x, target, radius=radius, n_samples=8, seed=2, relative=True)
    np.testing.assert_allclose(doubled, relative)


def test_linear_gradient_x_input_lipschitz_is_weight_norm(rng):
    # Phi(x) = w_c * x on a linear model: ||Phi(x + delta) - Phi(x)|| / ||delta|| <= max_i |w_ic|
    model = linear_model(rng)
    x = rng.random((5, 6, 6, 1))
    target = np.full(5, 2)
    lip = local_lipschitz(grad_x_input(model), x, target, radius=0.1, n_samples=20)
    w = np.abs(model[1].kernel[:, 2])
    assert np.all(lip <= w.max() + 1e-12)
    assert np.all(lip >= np.sqrt((w**2).mean()) * 0.8)


def test_nonfinite_share_counting():
    relevance = np.ones((5, 3, 3, 1))
    relevance[1, 0, 0, 0] = np.nan
    relevance[3, 2, 1, 0] = np.inf
    relevance[3, 0, 1, 0] = -np.inf
    assert nonfinite_share(relevance) == 2 / 5
    summary = numerical_robustness(relevance, np.array([2.0, 1.0, 0.5, 1.0, 4.0]))
    assert summary["nonfinite_count"] == 2
    assert summary["n"] == 5
    # finite images 0, 2, 4: ratios 1/2, 1/0.5, 1/4
    assert summary["ratio_max"] == 2.0
    assert summary["ratio_median"] == 0.5
    assert summary["ratio_over_1"] == pytest.approx(1 / 3)


def test_blowup_ratio_edge_cases():
    relevance = np.array([[3.0, -6.0], [0.0, 0.0], [1.0, 0.0], [np.nan, 1.0]])
    ratio = blowup_ratio(relevance, np.array([-2.0, 0.0, 0.0, 1.0]))
    np.testing.assert_array_equal(ratio, [3.0, 0.0, np.inf, np.inf])


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def _run_cli(argv, capsys):
    from rlrp_ref.cli import main

    code = main(argv)
    return code, capsys.readouterr()


def test_cli_evaluate_smoke(tmp_path, capsys):
    import json

    out = tmp_path / "eval"
    argv = ["evaluate", "--model", "shapes", "--methods", "rlrp,epsilon,gradient_x_input", "--n", "6",
            "--steps", "4", "--noise-samples", "2", "--out", str(out), "--no-plots"]
    code, captured = _run_cli(argv, capsys)
    assert code == 0, captured.err
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["n"] == 6
    assert set(report["methods"]) == {"rlrp", "epsilon", "gradient_x_input", "random (reference)"}
    rlrp = report["methods"]["rlrp"]
    assert 0 <= rlrp["mass_accuracy"] <= 1 and 0 <= rlrp["rank_accuracy"] <= 1
    assert rlrp["numerical"]["nonfinite_share"] == 0
    assert rlrp["numerical"]["ratio_max"] <= 1 + 1e-9  # R-LRP's bound |R_i| <= |f_c(x)|
    assert len(rlrp["randomization"]["spearman"]) == len(report["parameter_layers"]) == 4
    assert -1 <= rlrp["randomization"]["input_spearman_abs"] <= 1
    assert len(rlrp["curve_morf"]) == len(rlrp["curve_fraction"]) == 5
    table = (out / "metrics.md").read_text()
    assert "| rlrp |" in table and "mass accuracy" in table and "random (reference)" in table
    # the same settings give the same numbers (fixed seeds)
    again = tmp_path / "again"
    code, _ = _run_cli(argv[:-2] + [str(again), "--no-plots"], capsys)
    assert code == 0
    assert json.loads((again / "metrics.json").read_text()) == report


def test_cli_evaluate_digits_has_no_localization(tmp_path, capsys):
    import json

    out = tmp_path / "digits"
    code, captured = _run_cli(["evaluate", "--model", "digits", "--methods", "rlrp", "--n", "4", "--steps", "2",
                               "--noise-samples", "1", "--out", str(out), "--no-plots"], capsys)
    assert code == 0, captured.err
    report = json.loads((out / "metrics.json").read_text())
    assert "mass_accuracy" not in report["methods"]["rlrp"]
    assert "n/a (no masks)" in (out / "metrics.md").read_text()


def test_cli_evaluate_metric_families(tmp_path, capsys):
    import json

    out = tmp_path / "loc"
    code, captured = _run_cli(["evaluate", "--model", "shapes", "--methods", "rlrp,epsilon", "--n", "5",
                               "--metrics", "localization", "--out", str(out), "--no-plots"], capsys)
    assert code == 0, captured.err
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["metrics"] == ["localization"]
    rlrp = report["methods"]["rlrp"]
    assert set(rlrp) == {"numerical", "mass_accuracy", "rank_accuracy", "mass_accuracy_undefined"}
    table = (out / "metrics.md").read_text()
    assert "mass accuracy" in table and "AOPC" not in table and "randomization" not in table
    assert "| rlrp | 0.000 |" in table  # numerical robustness is always there: no non-finite relevance


def test_cli_evaluate_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (rlrp-ref[viz])")
    out = tmp_path / "plots"
    code, captured = _run_cli(["evaluate", "--model", "shapes", "--methods", "gradient_x_input", "--n", "3",
                               "--steps", "2", "--noise-samples", "1", "--out", str(out)], capsys)
    assert code == 0, captured.err
    for name in ("perturbation_curves.png", "randomization.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flag, value, message", [
    ("--methods", "rlrp,bogus", "unknown method 'bogus'"),
    ("--model", "cifar", "unknown model 'cifar'"),
    ("--perturbation", "salt", "unknown perturbation 'salt'"),
    ("--out", "missing/parent/out", "parent folder"),
    ("--metrics", "perturbation,speed", "unknown metric family 'speed'"),
    ("--n", "2001", "the shapes test split has 2000 images"),
])
def test_cli_evaluate_bad_input_one_line_no_output(tmp_path, capsys, flag, value, message):
    out = tmp_path / "never"
    argv = ["evaluate", "--model", "shapes", "--methods", "rlrp", "--perturbation", "zero", "--n", "3",
            "--metrics", "noise", "--out", str(out), "--no-plots"]
    argv[argv.index(flag) + 1] = value if flag != "--out" else str(tmp_path / value)
    code, captured = _run_cli(argv, capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind either


def test_method_explainer_runs_rlrp_explain(rng):
    from rlrp_ref.evaluate import bind_model, method_explainer

    model = linear_model(rng)
    x = rng.random((4, 6, 6, 1))
    target = np.array([0, 1, 2, 0])
    by_method = bind_model(method_explainer("gradient_x_input"), model)(x, target)
    np.testing.assert_allclose(by_method, grad_x_input(model)(x, target), rtol=1e-12)
    # R-LRP through the same adapter: its bound max |R_i| <= |f_c(x)| holds on a small CNN
    cnn = small_cnn(rng)
    images = rng.random((6, 8, 8, 1))
    relevance = bind_model(method_explainer("rlrp"), cnn)(images, np.zeros(6, dtype=int))
    logits = cnn.forward(images)[:, 0]
    summary = numerical_robustness(relevance, logits)
    assert summary["nonfinite_count"] == 0 and summary["ratio_max"] <= 1 + 1e-9


# ---------------------------------------------------------------------------
# invariances (property tests)
# ---------------------------------------------------------------------------

@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
def test_localization_ignores_positive_scale(seed, scale):
    rng = np.random.default_rng(seed)
    relevance = rng.normal(size=(3, 6, 6, 2))
    mask = rng.random((3, 6, 6)) < 0.4
    mask[:, 0, 0] = True
    for metric in (relevance_mass_accuracy, relevance_rank_accuracy):
        np.testing.assert_allclose(metric(scale * relevance, mask), metric(relevance, mask), rtol=1e-9)


@given(seed=st.integers(0, 2**31 - 1))
def test_spearman_ignores_monotone_maps_and_flips_with_sign(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, 4, 30))
    rho = spearman_rows(a, b)
    np.testing.assert_allclose(spearman_rows(np.exp(a), b ** 3), rho, atol=1e-12)
    np.testing.assert_allclose(spearman_rows(-a, b), -rho, atol=1e-12)
    np.testing.assert_allclose(spearman_rows(a, a), 1.0)


@given(seed=st.integers(0, 2**31 - 1), patch=st.integers(1, 3))
def test_reversed_map_swaps_morf_and_lerf(seed, patch):
    rng = np.random.default_rng(seed)
    model = linear_model(rng)
    x = rng.random((3, 6, 6, 1))
    target = rng.integers(0, 3, size=3)
    relevance = rng.normal(size=x.shape)  # continuous: no ties between patch sums
    forward = perturbation_curves(model.forward, x, relevance, target, patch=patch, kind="mean")
    backward = perturbation_curves(model.forward, x, -relevance, target, patch=patch, kind="mean")
    np.testing.assert_allclose(forward["morf"].scores, backward["lerf"].scores, rtol=1e-12)
    np.testing.assert_allclose(forward["abpc"], -backward["abpc"], rtol=1e-9, atol=1e-12)
