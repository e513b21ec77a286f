"""The ``demo``, ``explain`` and ``trace`` subcommands, driven in a subprocess as a user runs them."""

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

PIL = pytest.importorskip("PIL", reason="the CLI's image reading and PNG writing need Pillow (viz extra)")
pytest.importorskip("matplotlib", reason="heatmap rendering needs matplotlib (viz extra)")
from PIL import Image  # noqa: E402

from rlrp_ref.data import imagenet_classes, shapes  # noqa: E402
from rlrp_ref.models.simple_cnn import bundled_weights  # noqa: E402


def rlrp_ref(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "RLRP_REF_DEBUG"}
    return subprocess.run([sys.executable, "-m", "rlrp_ref", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def png_size(path):
    with Image.open(path) as image:
        return image.size


def png_array(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def leftovers(folder):
    """Staging folders or files an interrupted write would leave behind."""
    return [p.name for p in Path(folder).rglob("*") if ".partial-" in p.name]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """Shape PNGs from the test split (with their labels), an RGB JPEG, and broken files."""
    root = tmp_path_factory.mktemp("inputs")
    x, labels, _ = shapes.load_split("test", n=4)
    paths = []
    for i in range(4):
        path = root / f"shape{i}.png"
        Image.fromarray(np.round(x[i, :, :, 0] * 255).astype(np.uint8)).save(path)
        paths.append(path)
    photo = root / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
    (root / "not_an_image.png").write_text("this is text, not a PNG")
    (root / "not_hdf5.h5").write_text("this is text, not HDF5")
    (root / "a_file").write_text("a file where a folder is expected")
    with h5py.File(root / "tiny.h5", "w") as f:  # a Keras-layout file whose layers are not the simple CNN's
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = np.array([b"other"])
        layer = group.create_group("other")
        layer.attrs["weight_names"] = np.array([b"other/kernel:0"])
        layer.create_dataset("other/kernel:0", data=np.zeros((3, 2), np.float32))
    return {"root": root, "shapes": paths, "labels": labels, "photo": photo}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    return cwd, rlrp_ref("demo", cwd=cwd)


# ---------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------


def test_demo_writes_grids_and_one_png_per_heatmap(demo_run):
    cwd, result = demo_run
    assert result.returncode == 0, result.stderr
    out = cwd / "rlrp-demo"
    assert png_size(out / "shapes_grid.png") == (1000, 800)  # 5 columns x 4 rows of 2-inch cells at 100 dpi
    assert png_size(out / "digits_grid.png") == (1000, 800)
    singles = sorted(p.name for p in out.glob("*_*_*.png") if "grid" not in p.name)
    methods = ("rlrp", "epsilon_plus_flat", "epsilon_gamma_box", "gradient_x_input")
    assert singles == sorted(f"{d}_{i}_{m}.png" for d in ("shapes", "digits") for i in range(4) for m in methods)
    for name in singles:
        assert png_size(out / name) == (128, 128)  # 32 x 32 enlarged 4x, 8 x 8 enlarged 16x
    assert leftovers(cwd) == []


def test_demo_heatmaps_differ_between_methods(demo_run):
    cwd, _ = demo_run
    out = cwd / "rlrp-demo"
    for dataset in ("shapes", "digits"):
        images = {m: png_array(out / f"{dataset}_0_{m}.png") for m in ("rlrp", "epsilon_plus_flat", "epsilon_gamma_box", "gradient_x_input")}
        names = list(images)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                assert not np.array_equal(images[a], images[b]), f"{dataset}: {a} and {b} heatmaps are identical"


def test_demo_prints_the_conservation_law(demo_run):
    _, result = demo_run
    text = result.stdout
    assert "R-LRP ledger" in text and "|R|_1 out" in text and "scale" in text
    match = re.search(r"\|R\|_1 == \|f_c\(x\)\| at every layer boundary of all (\d+) samples \(largest relative gap ([0-9.e+-]+)\)", text)
    assert match, text
    assert int(match.group(1)) == 8 and float(match.group(2)) < 1e-9
    # every ledger row of the printed table carries the same L1 mass in and out: |logit| of sample 0
    logit = float(re.search(r"R-LRP ledger, shapes sample 0 \(class \w+, logit ([+-][0-9.e+-]+)\)", text).group(1))
    rows = [line.split() for line in text.splitlines() if re.match(r"^(conv2d|dense|flatten|max_pooling2d)", line)]
    assert len(rows) == 10
    for row in rows:
        assert float(row[-1]) == pytest.approx(abs(logit), rel=1e-4) and float(row[-2]) == pytest.approx(abs(logit), rel=1e-4)


def test_demo_out_option(tmp_path):
    result = rlrp_ref("demo", "--out", tmp_path / "elsewhere", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elsewhere" / "digits_grid.png").is_file()
    assert not (tmp_path / "rlrp-demo").exists()


# ---------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------


def test_explain_simple_cnn_on_shape_pngs(fixtures, tmp_path):
    out = tmp_path / "heat"
    pytest.importorskip("tqdm", reason="the progress bar needs tqdm (viz extra)")
    result = rlrp_ref("explain", *fixtures["shapes"], "--arch", "simple_cnn", "--weights", "shapes",
                      "--out", out, "--overlay", "--save-npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    explained = re.findall(r"explained: (\w+) \((\d)\), logit ([+-][0-9.e+-]+)", result.stdout)
    assert [int(c) for _, c, _ in explained] == list(fixtures["labels"])  # the PNG round trip keeps the predictions right
    assert [name for name, _, _ in explained] == [shapes.CLASS_NAMES[c] for c in fixtures["labels"]]
    assert "100%" in result.stderr and "4/4" in result.stderr  # tqdm progress bar on stderr
    for i, (_, _, logit) in enumerate(explained):
        assert png_size(out / f"shape{i}_rlrp.png") == (128, 128)
        assert png_size(out / f"shape{i}_rlrp_overlay.png") == (128, 128)
        relevance = np.load(out / f"shape{i}_rlrp.npy")
        assert relevance.shape == (32, 32, 1)
        assert np.abs(relevance).sum() == pytest.approx(abs(float(logit)), rel=1e-3)  # L3 at the input
    assert leftovers(tmp_path) == []


def test_explain_methods_and_target(fixtures, tmp_path):
    image = fixtures["shapes"][0]
    first = rlrp_ref("explain", image, "--arch", "simple_cnn", "--weights", "shapes", "--out", tmp_path / "a", cwd=tmp_path)
    other = rlrp_ref("explain", image, "--arch", "simple_cnn", "--weights", "shapes", "--out", tmp_path / "b",
                     "--method", "epsilon_gamma_box", "--target", "2", cwd=tmp_path)
    assert first.returncode == 0 and other.returncode == 0, first.stderr + other.stderr
    assert "explained: triangle (2)" in other.stdout
    a = png_array(tmp_path / "a" / "shape0_rlrp.png")
    b = png_array(tmp_path / "b" / "shape0_epsilon_gamma_box.png")
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_explain_digits_resizes_a_colour_image(fixtures, tmp_path):
    result = rlrp_ref("explain", fixtures["photo"], "--arch", "simple_cnn", "--weights", "digits", "--out", tmp_path / "o",
                      "--save-npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^  \d\. p=", result.stdout, flags=re.M)) == 5
    assert np.load(tmp_path / "o" / "photo_rlrp.npy").shape == (8, 8, 1)
    assert png_size(tmp_path / "o" / "photo_rlrp.png") == (128, 128)


def test_explain_duplicate_names_get_prefixes(fixtures, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub in ("a", "b"):
        Image.open(fixtures["shapes"][0]).save(tmp_path / sub / "same.png")
    result = rlrp_ref("explain", tmp_path / "a" / "same.png", tmp_path / "b" / "same.png", "--arch", "simple_cnn",
                      "--weights", "shapes", "--out", tmp_path / "o", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["0_same_rlrp.png", "1_same_rlrp.png"]


def test_explain_imagenet_arch_small_random(fixtures, tmp_path):
    result = rlrp_ref("explain", fixtures["photo"], "--arch", "resnet50", "--weights", "random", "--size", "32",
                      "--out", tmp_path / "o", "--overlay", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    top = re.findall(r"^  \d\. p=\S+  logit=\S+  (.+) \((\d+)\)$", result.stdout, flags=re.M)
    assert len(top) == 5
    names = imagenet_classes()
    assert all(names[int(i)] == name for name, i in top)
    assert png_size(tmp_path / "o" / "photo_rlrp.png") == (128, 128)
    assert png_size(tmp_path / "o" / "photo_rlrp_overlay.png") == (128, 128)


def test_explain_vgg16_torchvision_at_224(fixtures, tmp_path):
    """The one full-size run: the torchvision pipeline (resize 256, centre crop 224) on a 48 x 64 JPEG."""
    result = rlrp_ref("explain", fixtures["photo"], "--arch", "vgg16", "--weights", "random", "--variant", "torchvision",
                      "--save-npy", "--out", tmp_path / "o", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert png_size(tmp_path / "o" / "photo_rlrp.png") == (224, 224)
    relevance = np.load(tmp_path / "o" / "photo_rlrp.npy")
    assert relevance.shape == (224, 224, 3) and np.all(np.isfinite(relevance)) and np.abs(relevance).sum() > 0


# ---------------------------------------------------------------------------
# trace
# ---------------------------------------------------------------------------


def test_trace_default_bundled_sample(tmp_path):
    result = rlrp_ref("trace", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("layer"))
    for column in ("kind", "rule", "output shape", "sum(Rt)", "law rhs", "scale", "|R|_1 out", "|R|_1 in"):
        assert column in header
    assert "start: R = |f_c| e_c" in lines
    rows = {line.split()[0]: line.split() for line in lines if re.match(r"^(conv2d|dense|flatten|max_pooling2d)", line)}
    assert list(rows) == ["dense_1", "dense_relu", "dense", "flatten", "max_pooling2d_1", "conv2d_1_relu", "conv2d_1",
                          "max_pooling2d", "conv2d_relu", "conv2d"]
    assert rows["conv2d"][3] == "32x32x8" and rows["dense_1"][3] == "4"
    assert rows["conv2d"][2] == "rlrp" and rows["max_pooling2d"][2] == "rlrp_select" and rows["conv2d_relu"][2] == "pass"
    for name in ("dense_1", "dense", "conv2d_1", "conv2d", "max_pooling2d"):
        assert float(rows[name][4]) == pytest.approx(float(rows[name][5]), rel=1e-4)  # sum(Rt) == law rhs (L2)
    assert "(holds)" in result.stdout
    assert list(tmp_path.iterdir()) == []  # trace writes nothing


def test_trace_options(fixtures, tmp_path):
    digits = rlrp_ref("trace", "--weights", "digits", "--sample", "3", "--method", "epsilon_plus_flat", cwd=tmp_path)
    assert digits.returncode == 0, digits.stderr
    assert "bundled digits test sample 3" in digits.stdout and "epsilon_plus_flat: |R|_1 goes from" in digits.stdout
    residual = rlrp_ref("trace", fixtures["photo"], "--arch", "resnet50", "--weights", "random", "--size", "32", cwd=tmp_path)
    assert residual.returncode == 0, residual.stderr
    assert "residual_split" in residual.stdout and "(holds)" in residual.stdout


# ---------------------------------------------------------------------------
# errors: one line on stderr, exit code 2, no traceback, no output
# ---------------------------------------------------------------------------


def _error_cases(f):
    img = str(f["shapes"][0])
    root = f["root"]
    base = ["--arch", "simple_cnn", "--weights", "shapes"]
    return {
        "missing image": (["explain", str(root / "absent.png"), *base], "absent.png"),
        "unreadable image": (["explain", img, str(root / "not_an_image.png"), *base], "not_an_image.png"),
        "weights not hdf5 (simple_cnn)": (["explain", img, "--arch", "simple_cnn", "--weights", str(root / "not_hdf5.h5")], "HDF5"),
        "weights not hdf5 (vgg16)": (["explain", img, "--arch", "vgg16", "--weights", str(root / "not_hdf5.h5")], "HDF5"),
        "weights missing": (["explain", img, "--arch", "resnet50", "--weights", str(root / "absent.h5")], "absent.h5"),
        "weights for another arch": (["explain", img, "--arch", "vgg16", "--weights", bundled_weights("shapes")], "conv2d"),
        "weights of another network": (["explain", img, "--arch", "simple_cnn", "--weights", str(root / "tiny.h5")], "tiny.h5"),
        "unknown arch": (["explain", img, "--arch", "vgg11", "--weights", "random"], "vgg11"),
        "unknown method": (["explain", img, *base, "--method", "lrp_magic"], "lrp_magic"),
        "target out of range": (["explain", img, *base, "--target", "4"], "out of range"),
        "negative target": (["explain", img, *base, "--target", "-1"], "out of range"),
        "target not a number": (["explain", img, *base, "--target", "cat"], "cat"),
        "out is a file": (["explain", img, *base, "--out", str(root / "a_file")], "a_file"),
        "trace missing image": (["trace", str(root / "absent.png")], "absent.png"),
        "trace unreadable image": (["trace", str(root / "not_an_image.png")], "not_an_image.png"),
        "trace unknown arch": (["trace", "--arch", "alexnet"], "alexnet"),
        "trace target out of range": (["trace", "--weights", "digits", "--target", "10"], "out of range"),
        "trace weights not hdf5": (["trace", "--weights", str(root / "not_hdf5.h5")], "HDF5"),
        "trace sample out of range": (["trace", "--sample", "5000"], "5000"),
        "trace imagenet arch without image": (["trace", "--arch", "vgg16", "--weights", "random", "--size", "32"], "IMAGE"),
        "demo out parent missing": (["demo", "--out", str(root / "no" / "such" / "dir")], "does not exist"),
    }


CASES = list(_error_cases({"shapes": [Path("names-only")], "root": Path("names-only")}))


@pytest.mark.parametrize("case", CASES)
def test_errors_are_one_line_exit_2_and_leave_no_output(case, fixtures, tmp_path):
    args, needle = _error_cases(fixtures)[case]
    command = args[0]
    out = tmp_path / "out"
    if command == "explain" and "--out" not in args:
        args = [*args, "--out", str(out)]
    result = rlrp_ref(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"rlrp-ref {command}: error:")
    assert needle in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "rlrp-demo").exists() and not (tmp_path / "rlrp-heatmaps").exists()
    assert leftovers(tmp_path) == [] and leftovers(fixtures["root"]) == []
