"""Validation kit: compare on cases with known answers, the shipped vectors, the network schema, the CLI."""

import json
import shutil

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlrp_ref import layers as L
from rlrp_ref.cli import main
from rlrp_ref.model import Residual, Sequential
from rlrp_ref.validate import (
    CASES,
    FORMAT_VERSION,
    PACKAGED_DIR,
    compare,
    load_manifest,
    load_model,
    read_case,
    read_network,
    validate,
    write_network,
    write_vectors,
)
from rlrp_ref.validate.vectors import expected_relevance, sha256_of

# ---------------------------------------------------------------------------
# compare on constructed cases
# ---------------------------------------------------------------------------


def test_identical_arrays_pass_with_zero_error(rng):
    expected = rng.normal(size=(3, 4, 4, 2))
    report = compare(expected, expected.copy(), "epsilon")
    assert report.passed and report.close
    assert report.max_abs_error == 0.0 and report.max_rel_error == 0.0
    assert report.pearson == pytest.approx(1.0) and report.spearman == pytest.approx(1.0)
    assert report.topk_overlap == 1.0 and report.k == 4  # 10 % of 32 features, rounded up
    assert "PASS" in str(report) and str(report).startswith("| case")


def test_perturbation_beyond_tolerance_fails_and_within_passes(rng):
    expected = rng.normal(size=(2, 50))
    scale = np.abs(expected).max(axis=1, keepdims=True)
    inside = expected + 0.5 * 1e-6 * scale * np.sign(rng.normal(size=expected.shape))
    outside = expected.copy()
    outside[1, 7] += 3e-6 * scale[1, 0]
    assert compare(expected, inside, "gamma", rtol=1e-6, atol=0).passed
    report = compare(expected, outside, "gamma", rtol=1e-6, atol=0)
    assert not report.passed and not report.close
    assert report.max_abs_error == pytest.approx(3e-6 * scale[1, 0])
    assert report.max_rel_error == pytest.approx(3e-6)
    assert "FAIL" in str(report)


def test_reversed_ranks_give_spearman_minus_one_and_no_topk_overlap():
    expected = np.arange(20.0)[None]
    theirs = expected[:, ::-1].copy()
    report = compare(expected, theirs, "lrp0", k=5)
    assert report.spearman == pytest.approx(-1.0)
    assert report.pearson == pytest.approx(-1.0)
    assert report.topk_overlap == 0.0
    assert not report.passed


@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-6, 1e6), noise=st.floats(0.0, 1e-3))
def test_compare_is_scale_free(seed, scale, noise):
    """Relative error, correlations, overlap and the verdict (atol 0) do not depend on the relevance's unit."""
    rng = np.random.default_rng(seed)
    expected = rng.normal(size=(3, 40))
    theirs = expected + noise * rng.normal(size=expected.shape)
    base = compare(expected, theirs, "epsilon", rtol=1e-4, atol=0)
    scaled = compare(scale * expected, scale * theirs, "epsilon", rtol=1e-4, atol=0)
    assert scaled.passed == base.passed
    assert scaled.max_rel_error == pytest.approx(base.max_rel_error, rel=1e-9, abs=1e-15)
    assert scaled.spearman == base.spearman and scaled.topk_overlap == base.topk_overlap
    assert scaled.pearson == pytest.approx(base.pearson, rel=1e-9)
    assert base.passed == bool(base.max_rel_error <= 1e-4)


def test_topk_overlap_counts_shared_top_features():
    expected = np.array([[9.0, 8.0, 7.0, 1.0, 0.0]])
    theirs = np.array([[9.0, 0.0, 7.0, 8.5, 1.0]])  # top-3 {0, 3, 2} vs expected {0, 1, 2}
    assert compare(expected, theirs, "lrp0", k=3).topk_overlap == pytest.approx(2 / 3)


def test_conservation_violation_is_flagged_for_lrp0_without_bias():
    relevance = np.array([[0.5, 0.25, 0.25], [1.0, -0.5, 0.0]])
    logits = np.array([1.0, 0.5])
    ok = compare(relevance, relevance, "lrp0", target_logits=logits, bias_free=True)
    assert ok.passed and [law.name for law in ok.laws] == ["conservation"]
    leaky = relevance.copy()
    leaky[1] *= 0.9  # sums to 0.45, not 0.5
    # even when our own expected relevance is the leaky one, their relevance breaks the law
    report = compare(leaky, leaky, "lrp0", target_logits=logits, bias_free=True)
    assert report.close and not report.passed
    law = report.laws[0]
    assert not law.passed and law.value == pytest.approx(0.05)
    assert "conservation FAIL" in str(report)
    # with biases, LRP-0 does not conserve: no law is checked
    assert compare(leaky, leaky, "lrp0", target_logits=logits, bias_free=False).laws == []


def test_rlrp_mass_and_bound_are_checked():
    logits = np.array([2.0, -1.0])
    good = np.array([[1.5, -0.5, 0.0], [0.25, 0.25, -0.5]])
    report = compare(good, good, "rlrp", target_logits=logits)
    assert report.passed and {law.name for law in report.laws} == {"mass", "bound"}
    heavy = good * 1.1  # mass 2.2 instead of |f_c| = 2
    masses = {law.name: law.passed for law in compare(heavy, heavy, "rlrp", target_logits=logits).laws}
    assert masses == {"mass": False, "bound": True}
    spike = np.array([[2.5, -0.5, 0.0], [0.25, 0.25, -0.5]])  # |R_i| = 2.5 > ||R^L||_1 = 2
    laws = {law.name: law.passed for law in compare(spike, spike, "rlrp", target_logits=logits).laws}
    assert laws["bound"] is False


def test_non_finite_relevance_fails_and_bad_shapes_raise(rng):
    expected = rng.normal(size=(2, 6))
    theirs = expected.copy()
    theirs[0, 1] = np.nan
    report = compare(expected, theirs, "epsilon")
    assert not report.passed and report.laws[0].name == "finite"
    assert np.isnan(report.topk_overlap) and "n/a (k=" in str(report)  # not computed, so not printed as a number
    with pytest.raises(ValueError, match=r"expected relevance of shape \(2, 6\), found \(2, 5\)"):
        compare(expected, expected[:, :5], "epsilon")
    with pytest.raises(ValueError, match="target_logits"):
        compare(expected, expected, "rlrp", target_logits=[1.0, 2.0, 3.0])


# ---------------------------------------------------------------------------
# the network schema
# ---------------------------------------------------------------------------


def test_network_round_trip_keeps_every_kind(tmp_path, rng):
    conv = L.Conv2D(rng.normal(size=(3, 3, 2, 4)), rng.normal(size=4), strides=(1, 2), padding=((1, 0), (2, 1)), name="c")
    bn = L.BatchNorm(rng.uniform(0.5, 1, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 1, 4), epsilon=1e-5, name="bn")
    branch = Sequential([L.Conv2D(rng.normal(size=(3, 3, 4, 4)), None, padding="same", name="b1"), L.Sigmoid(name="s"),
                         L.Conv2D(rng.normal(size=(1, 1, 4, 4)), name="b2")], name="branch")
    model = Sequential([
        conv, bn, L.ReLU(name="r"), L.ZeroPad2D(((0, 1), (1, 0)), name="zp"),
        Residual(branch, skip=L.Identity(name="id"), activation=None, name="res"),
        L.AvgPool2D(2, strides=1, padding="same", name="ap"), L.MaxPool2D((2, 1), name="mp"), L.Softplus(name="sp"),
        L.GlobalAvgPool2D(name="gap"), L.Dense(rng.normal(size=(4, 3)), name="d"),
    ], name="net")
    x = rng.normal(size=(2, 7, 8, 2))
    with h5py.File(tmp_path / "net.h5", "w") as fh:
        write_network(fh.create_group("network"), model, x.shape[1:])
    with h5py.File(tmp_path / "net.h5", "r") as fh:
        rebuilt = read_network(fh["network"])
        assert fh["network/model/000"].attrs["resolved_pads"].tolist() == [[1, 0], [2, 1]]
        assert fh["network/model/004/branch/000"].attrs["padding"] == "same"
    assert [layer.name for layer in rebuilt.iter_all()] == [layer.name for layer in model.iter_all()]
    np.testing.assert_array_equal(rebuilt.forward(x), model.forward(x))
    assert rebuilt.get_layer("res").activation is None and rebuilt.get_layer("d").bias is None


def test_network_reader_rejects_an_unknown_kind(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as fh:
        net = fh.create_group("network")
        net.attrs["schema_version"] = 1
        layer = net.create_group("model")
        layer.attrs["kind"], layer.attrs["name"] = "lstm", "x"
        with pytest.raises(ValueError, match="unknown layer kind 'lstm'"):
            read_network(net)


# ---------------------------------------------------------------------------
# the shipped vectors
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(PACKAGED_DIR)


def test_shipped_vectors_are_small_and_complete(manifest):
    total = sum(p.stat().st_size for p in PACKAGED_DIR.iterdir())
    assert total < 5 * 2**20
    assert manifest["format_version"] == FORMAT_VERSION
    assert [entry["name"] for entry in manifest["cases"]] == [case.name for case in CASES]
    for entry in manifest["cases"]:
        data = read_case(PACKAGED_DIR, entry["name"], manifest)
        assert sorted(data.relevance) == sorted(manifest["methods"])
        assert data.inputs.dtype == np.float64 and data.inputs.shape[1:] == tuple(entry["input_shape"])


def test_models_rebuilt_from_the_files_reproduce_the_stored_logits(manifest):
    for entry in manifest["cases"]:
        data = read_case(PACKAGED_DIR, entry["name"], manifest)
        model = load_model(data.path)
        np.testing.assert_allclose(model.forward(data.inputs), data.logits, rtol=0, atol=1e-12)


def test_engine_reproduces_the_shipped_vectors(manifest):
    for entry in manifest["cases"]:
        data = read_case(PACKAGED_DIR, entry["name"], manifest)
        model = load_model(data.path)
        for method, spec in manifest["methods"].items():
            ours = expected_relevance(model, data.inputs, data.targets, method, spec["params"])
            np.testing.assert_allclose(ours, data.relevance[method], rtol=0, atol=1e-12, err_msg=(
                f"{entry['name']}/{method} changed; if the engine change is intended, regenerate the shipped copy: "
                "rlrp-ref vectors --out rlrp_ref/validate/vectors"))


def test_shipped_rlrp_vectors_match_the_naive_spec(manifest):
    """Independently of the engine that wrote them: the R-LRP vectors against the explicit-matrix recomputation."""
    from relevance_nets import naive_rlrp

    from rlrp_ref.canonize import fold_batchnorm

    for entry in manifest["cases"]:
        data = read_case(PACKAGED_DIR, entry["name"], manifest)
        model = fold_batchnorm(load_model(data.path))  # RLRP_SPEC.md: BatchNorm is folded before any relevance pass
        for n, target in enumerate(data.targets):
            start = np.zeros(data.logits.shape[1])
            start[target] = abs(data.logits[n, target])  # |f_c| e_c (docs/spec.md, "Start")
            want = naive_rlrp(model, data.inputs[n], start, {})
            np.testing.assert_allclose(data.relevance["rlrp"][n], want, rtol=1e-8, atol=1e-10 * abs(start[target]),
                                       err_msg=f"{entry['name']} sample {n}")


def test_smoothgrad_is_reproducible_from_the_stored_draws(manifest):
    """The recipe docs/validation.md gives to implementations with another random generator."""
    params = manifest["methods"]["smoothgrad"]["params"]
    for entry in manifest["cases"][:4]:
        data = read_case(PACKAGED_DIR, entry["name"], manifest)
        with h5py.File(data.path, "r") as fh:
            draws = fh["smoothgrad_draws"][()]
        x = data.inputs
        axes = tuple(range(1, x.ndim))
        std = params["sigma"] * (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True))
        model = load_model(data.path)
        onehot = np.eye(data.logits.shape[1])[data.targets]
        grads = [model.vjp(x + d * std, onehot) for d in draws]
        assert draws.shape == (params["n"], *x.shape)
        np.testing.assert_allclose(np.mean(grads, axis=0), data.relevance["smoothgrad"], rtol=0, atol=1e-12)


def _h5_content(path):
    items = {}
    with h5py.File(path, "r") as fh:
        def visit(name, obj):
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            items[name] = (attrs, np.asarray(obj[()]) if isinstance(obj, h5py.Dataset) else None)
        visit("/", fh)
        fh.visititems(visit)
    return items


def test_regenerating_gives_identical_content(tmp_path, manifest):
    write_vectors(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())
    strip = lambda m: {**m, "cases": [{k: v for k, v in e.items() if k != "sha256"} for e in m["cases"]]}  # noqa: E731
    assert strip(again) == strip(manifest)
    for entry in manifest["cases"]:
        ours, shipped = _h5_content(tmp_path / "again" / entry["file"]), _h5_content(PACKAGED_DIR / entry["file"])
        assert ours.keys() == shipped.keys()
        for key, (attrs, values) in shipped.items():
            assert ours[key][0] == attrs, key
            if values is not None and key.startswith(("relevance", "logits")):
                np.testing.assert_allclose(ours[key][1], values, rtol=0, atol=1e-12, err_msg=key)
            elif values is not None:
                np.testing.assert_array_equal(ours[key][1], values, err_msg=key)


def test_validate_of_the_vectors_against_themselves_passes(manifest):
    theirs = {e["name"]: read_case(PACKAGED_DIR, e["name"], manifest).relevance for e in manifest["cases"]}
    suite = validate(PACKAGED_DIR, theirs)
    assert suite.passed and len(suite.reports) == len(manifest["cases"]) * len(manifest["methods"])
    assert all(r.max_abs_error == 0.0 for r in suite.reports)
    assert suite.summary().startswith("PASS")


# ---------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------


def _write_theirs(path, manifest, tweak=None):
    with h5py.File(path, "w") as fh:
        for entry in manifest["cases"]:
            for method, values in read_case(PACKAGED_DIR, entry["name"], manifest).relevance.items():
                if tweak is not None:
                    values = tweak(entry["name"], method, values)
                if values is not None:
                    fh[f"{entry['name']}/{method}"] = values
    return path


def _one_line_error(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert pattern in err, err
    return err


def test_cli_exit_codes(tmp_path, capsys, manifest):
    good = _write_theirs(tmp_path / "good.h5", manifest)
    assert main(["validate", "--vectors", str(PACKAGED_DIR), "--theirs", str(good), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "| case" in out and "FAIL" not in out
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True

    first = manifest["cases"][0]["name"]
    method = next(iter(manifest["methods"]))
    bad = _write_theirs(tmp_path / "bad.h5", manifest,
                        lambda c, m, v: v * 1.01 if (c, m) == (first, method) else v)
    assert main(["validate", "--theirs", str(bad)]) == 1  # default: the shipped vectors
    out = capsys.readouterr().out
    assert out.count("FAIL") == 2 and f"{first}" in out  # the failing row and the summary

    nan = _write_theirs(tmp_path / "nan.h5", manifest, lambda c, m, v: v * np.nan if (c, m) == (first, method) else v)
    assert main(["validate", "--theirs", str(nan), "--json", str(tmp_path / "nan.json")]) == 1
    capsys.readouterr()
    strict = json.loads((tmp_path / "nan.json").read_text(), parse_constant=lambda token: pytest.fail(f"JSON has {token}"))
    row = next(r for r in strict["reports"] if (r["case"], r["method"]) == (first, method))
    assert row["max_abs_error"] == "inf" and row["pearson"] is None and not row["passed"]


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, manifest):
    first = manifest["cases"][0]["name"]
    missing = _write_theirs(tmp_path / "missing.h5", manifest, lambda c, m, v: None if c == first else v)
    _one_line_error(capsys, ["validate", "--theirs", str(missing)], f"missing case '{first}'")

    shape = _write_theirs(tmp_path / "shape.h5", manifest, lambda c, m, v: v[:, ..., :1] if c == first else v)
    _one_line_error(capsys, ["validate", "--theirs", str(shape)], "expected shape")

    _one_line_error(capsys, ["validate", "--theirs", str(tmp_path / "nowhere.h5")], "does not exist")

    old = tmp_path / "old"
    shutil.copytree(PACKAGED_DIR, old)
    text = json.loads((old / "manifest.json").read_text())
    text["format_version"] = FORMAT_VERSION + 1
    (old / "manifest.json").write_text(json.dumps(text))
    good = _write_theirs(tmp_path / "good.h5", manifest)
    _one_line_error(capsys, ["validate", "--vectors", str(old), "--theirs", str(good)],
                    f"expected format_version {FORMAT_VERSION}, found {FORMAT_VERSION + 1}")

    gone = tmp_path / "gone"
    shutil.copytree(PACKAGED_DIR, gone)
    (gone / manifest["cases"][1]["file"]).unlink()
    _one_line_error(capsys, ["validate", "--vectors", str(gone), "--theirs", str(good)], "is missing")

    _one_line_error(capsys, ["validate", "--theirs", str(good), "--methods", "nonsense"], "unknown method 'nonsense'")


def test_manifest_version_and_tampering_are_refused(tmp_path):
    folder = tmp_path / "v"
    shutil.copytree(PACKAGED_DIR, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["cases"][0]
    with h5py.File(folder / entry["file"], "a") as fh:
        fh["inputs"][0, ...] = 0.0
    assert sha256_of(folder / entry["file"]) != entry["sha256"]
    with pytest.raises(ValueError, match="sha256"):
        load_manifest(folder)
    manifest["format"] = "something-else"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="expected format 'rlrp-ref-vectors'"):
        load_manifest(folder, verify=False)


def test_cli_vectors_writes_a_loadable_set(tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["vectors", "--out", str(out), "--cases", "dense_relu", "conv_maxpool"]) == 0
    assert "wrote 2 cases" in capsys.readouterr().out
    manifest = load_manifest(out)
    assert [e["name"] for e in manifest["cases"]] == ["dense_relu", "conv_maxpool"]
    _one_line_error(capsys, ["vectors", "--out", str(tmp_path / "w"), "--cases", "nope"], "unknown case 'nope'")
    assert not (tmp_path / "w").exists()


def test_old_definition_vectors_are_read_and_reported_as_such(tmp_path):
    """A vectors set written before definition_version existed is read as R-LRP definition 1, and the report says so."""
    import json
    import shutil

    from rlrp_ref.validate import DEFINITION_VERSION, DEFINITIONS, validate

    folder = tmp_path / "old"
    shutil.copytree(PACKAGED_DIR, folder)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["definition_version"]
    manifest_path.write_text(json.dumps(manifest))
    assert load_manifest(folder)["definition_version"] == 1
    theirs = {e["name"]: {"gradient": read_case(folder, e["name"]).relevance["gradient"]} for e in manifest["cases"]}
    summary = validate(folder, theirs).summary()
    assert DEFINITIONS[1] in summary and "old definition" in summary
    current = validate(PACKAGED_DIR, theirs).summary()
    assert DEFINITIONS[DEFINITION_VERSION] in current and "old definition" not in current
    manifest["definition_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="definition_version"):
        load_manifest(folder)
