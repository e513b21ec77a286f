"""Issue 17's hostile inputs one by one: each is a one-line error (exit 2, nothing written) or a correct result.

Weight files (a byte changed in the bundled file, a scalar kernel, huge and
never-written declarations, weights that overflow a layer) and images (headers
declaring 400 million pixels or more, a 144-megapixel PNG, a truncated file),
plus the digits CNN saved in the Keras 3 and torch layouts, which
``explain --arch simple_cnn`` must load as it loads the bundled file.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import tracemalloc
import zlib

import h5py
import numpy as np
import pytest

import weights_import
from rlrp_ref import models
from rlrp_ref.cli import _common
from rlrp_ref.cli import main as cli_main
from rlrp_ref.models.simple_cnn import bundled_weights, load_bundled
from weights_import import WeightsError

Image = pytest.importorskip("PIL.Image", reason="image loading needs Pillow (rlrp-ref[viz] extra)")


def run_cli(capsys, argv):
    code = cli_main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_exit_2(capsys, argv, *patterns, out_dir=None):
    code, _, err = run_cli(capsys, argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"rlrp-ref {argv[0]}: error: "), err
    for pattern in patterns:
        assert pattern in err, (pattern, err)
    if out_dir is not None:
        assert not out_dir.exists()
    return err


def small_png(path, side=16):
    Image.fromarray((np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)).save(path)


# ---------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------


def png_header_only(path, width, height):
    """A PNG whose header declares ``width x height`` and whose pixel data is a few bytes: opening it decodes nothing."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def jpeg_declaring(path, width, height):
    """A real 8x8 JPEG whose frame header (SOF0) is changed to declare ``width x height``."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["png_20000", "jpeg_65500", "png_12000"])
def test_cli_refuses_huge_images_before_decoding(tmp_path, capsys, case):
    image = tmp_path / ("big.jpg" if case.startswith("jpeg") else "big.png")
    side = {"png_20000": 20000, "jpeg_65500": 65500, "png_12000": 12000}[case]
    (jpeg_declaring if case.startswith("jpeg") else png_header_only)(image, side, side)
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        err = assert_one_line_exit_2(capsys, ["explain", str(image), "--arch", "simple_cnn", "--weights", "digits",
                                              "--out", str(out)], f"{side * side:,} pixels", "--max-pixels", out_dir=out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "40,000,000" in err and str(image) in err
    assert peak < 50 * 2**20  # nothing decoded


def test_max_pixels_raises_the_limit_and_pillow_is_left_as_it_was(tmp_path, capsys):
    from rlrp_ref.preprocess import load_image

    image = tmp_path / "wide.png"
    small_png(image, side=40)  # 1600 pixels
    with pytest.raises(ValueError, match=r"at most 1,000 pixels, found 40x40 = 1,600 pixels \(raise the limit with --max-pixels"):
        load_image(image, max_pixels=1000)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    assert load_image(image, max_pixels=10**12).shape == (40, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit
    out = tmp_path / "out"
    assert_one_line_exit_2(capsys, ["explain", str(image), "--arch", "simple_cnn", "--weights", "digits", "--out", str(out),
                                    "--max-pixels", "1000"], "1,600 pixels", out_dir=out)
    code, stdout, err = run_cli(capsys, ["explain", str(image), "--arch", "simple_cnn", "--weights", "digits",
                                         "--out", str(out), "--max-pixels", "1600"])
    assert code == 0 and err == "" and "wrote 1 file(s)" in stdout


def test_cli_truncated_image_is_one_line(tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    small_png(good, side=64)
    bad.write_bytes(good.read_bytes()[:200])
    out = tmp_path / "out"
    assert_one_line_exit_2(capsys, ["explain", str(bad), "--arch", "simple_cnn", "--weights", "digits", "--out", str(out)],
                           "cannot read", str(bad), out_dir=out)


# ---------------------------------------------------------------------------
# weight files
# ---------------------------------------------------------------------------


def test_one_byte_in_the_bundled_file(tmp_path, capsys):
    """Byte 1197 of simple_cnn_shapes.h5 from 0x0b to 0x4b made models.build raise RuntimeError."""
    data = bytearray(open(bundled_weights("shapes"), "rb").read())
    assert data[1197] == 0x0B
    data[1197] = 0x4B
    path = tmp_path / "shapes_1197.h5"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as info:
        models.build("simple_cnn", input_shape=(32, 32, 1), num_classes=4, weights=str(path))
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))
    image, out = tmp_path / "x.png", tmp_path / "out"
    small_png(image)
    assert_one_line_exit_2(capsys, ["explain", str(image), "--arch", "simple_cnn", "--weights", str(path), "--out", str(out)],
                           str(path), out_dir=out)


def _digits_copy(tmp_path, name):
    path = tmp_path / name
    shutil.copy(bundled_weights("digits"), path)
    return path


def test_cli_scalar_kernel_is_one_line(tmp_path, capsys):
    path = _digits_copy(tmp_path, "scalar.h5")
    with h5py.File(path, "a") as f:
        del f["model_weights/conv2d/conv2d/kernel:0"]
        f["model_weights/conv2d/conv2d/kernel:0"] = np.float32(0.5)
    image, out = tmp_path / "x.png", tmp_path / "out"
    small_png(image)
    assert_one_line_exit_2(capsys, ["explain", str(image), "--arch", "simple_cnn", "--weights", str(path), "--out", str(out)],
                           "layer 'conv2d' kernel", "found ()", out_dir=out)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cli_overflow_names_the_layer_and_keeps_stderr_to_one_line(tmp_path, capsys, dtype):
    path = _digits_copy(tmp_path, "huge.h5")
    with h5py.File(path, "a") as f:
        kernel = f["model_weights/conv2d_1/conv2d_1/kernel:0"][()].astype("f8")
        del f["model_weights/conv2d_1/conv2d_1/kernel:0"]
        f["model_weights/conv2d_1/conv2d_1/kernel:0"] = kernel * (1e300 if dtype == "float64" else 1e36)
    image, out = tmp_path / "x.png", tmp_path / "out"
    small_png(image)
    for command in (["explain", str(image), "--out", str(out)], ["trace", str(image)]):
        err = assert_one_line_exit_2(capsys, command + ["--arch", "simple_cnn", "--weights", str(path), "--dtype", dtype],
                                     "NaN or inf", f"in {dtype}", out_dir=out)
        assert "layer '" in err


def test_huge_declarations_allocate_nothing(tmp_path):
    """A ~50 KB file declaring a never-written 30000x30000 kernel, or (64, 1000000): refused by read and load, shown by inspect."""
    for shape in [(30000, 30000), (64, 1_000_000), (10, 2**31)]:
        path = _digits_copy(tmp_path, "declared.h5")
        with h5py.File(path, "a") as f:
            del f["model_weights/dense_1/dense_1/kernel:0"]
            f.create_dataset("model_weights/dense_1/dense_1/kernel:0", shape=shape, dtype="f4")
        tracemalloc.start()
        try:
            with pytest.raises(WeightsError, match=r"found \d+ bytes declared"):
                weights_import.read(path)
            with pytest.raises(WeightsError, match=rf"expected shape \(64, 10\), found {re.escape(str(shape))}"):
                weights_import.load(path, load_bundled("digits", dtype="float64"))
            info = weights_import.inspect(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert dict(info["layers"])["dense_1"][0] == ("kernel:0", shape, "float32")
        assert peak < 50 * 2**20, peak


# ---------------------------------------------------------------------------
# the digits CNN in every layout
# ---------------------------------------------------------------------------


def write_digits_keras3(path, model):
    with h5py.File(path, "w") as f:
        for layer in (layer for layer in model.iter_layers() if layer.params):
            group = f.create_group(f"layers/{layer.name}/vars")  # Sequential auto-names: conv2d, conv2d_1, dense, dense_1
            group.attrs["name"] = layer.name
            for j, value in enumerate(layer.params.values()):
                group.create_dataset(str(j), data=value)


def write_digits_torch(path, model, channels):
    """The state dict torch would hold: conv (out, in, kh, kw), Linear (out, in) with the flatten in (C, H, W) order."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "torch_state_dict"
        for layer in (layer for layer in model.iter_layers() if layer.params):
            kernel = layer.kernel
            if kernel.ndim == 4:
                weight = kernel.transpose(3, 2, 0, 1)
            elif layer.name == "dense":  # rows in (H, W, C) order -> columns in (C, H, W) order
                spatial = kernel.shape[0] // channels
                weight = kernel.reshape(spatial, channels, -1).transpose(2, 1, 0).reshape(kernel.shape[1], -1)
            else:
                weight = kernel.T
            f[f"{layer.name}.weight"] = np.ascontiguousarray(weight)
            f[f"{layer.name}.bias"] = layer.bias


@pytest.mark.parametrize("layout", ["keras3_weights", "torch_state_dict"])
def test_cli_explains_the_digits_cnn_saved_in_any_layout(tmp_path, capsys, layout):
    bundled = load_bundled("digits", dtype="float64")
    path = tmp_path / f"digits_{layout}.h5"
    if layout == "keras3_weights":
        write_digits_keras3(path, bundled)
    else:
        write_digits_torch(path, bundled, channels=bundled.get_layer("conv2d_1").filters)
    assert weights_import.detect_layout(path) == layout
    loaded = _common.load_model("simple_cnn", str(path))
    assert loaded.input_shape == (8, 8, 1) and loaded.num_classes == 10
    for layer in bundled.iter_layers():
        for name, value in layer.params.items():
            np.testing.assert_array_equal(loaded.model.get_layer(layer.name).params[name], value, err_msg=f"{layer.name}.{name}")
    image, out = tmp_path / "x.png", tmp_path / "out"
    small_png(image)
    code, stdout, err = run_cli(capsys, ["explain", str(image), "--arch", "simple_cnn", "--weights", str(path), "--out", str(out)])
    assert code == 0 and err == "", err
    code_ref, stdout_ref, _ = run_cli(capsys, ["explain", str(image), "--arch", "simple_cnn", "--weights", "digits",
                                               "--out", str(tmp_path / "ref")])
    # the same classes, probabilities, logits and relevance; a file without dataset names labels them 'class <i>'
    assert code_ref == 0 and [re.sub(r"class (\d)", r"\1", line) for line in stdout.splitlines()[1:-1]] == stdout_ref.splitlines()[1:-1]


# ---------------------------------------------------------------------------
# damaged images: a decoded RGB array or a one-line ValueError naming the file
# ---------------------------------------------------------------------------


def test_damaged_images_decode_or_fail_in_one_line(tmp_path):
    import warnings

    from rlrp_ref.preprocess import load_image

    rng = np.random.default_rng(17)
    pixels = (rng.random((24, 20, 3)) * 255).astype(np.uint8)
    outcomes = {"decoded": 0, "refused": 0}
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt)
        data = buf.getvalue()
        for i in range(40):
            mutant = bytearray(data)
            if i % 3 == 0:
                del mutant[int(rng.integers(1, len(data))):]
            else:
                for pos in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
                    mutant[pos] = int(rng.integers(0, 256))
            path = tmp_path / f"m_{fmt}_{i}.img"
            path.write_bytes(bytes(mutant))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    image = load_image(path, max_pixels=10_000)
                except ValueError as err:
                    message = str(err)
                    assert "\n" not in message and str(path) in message, message
                    outcomes["refused"] += 1
                else:
                    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                    assert image.shape[0] * image.shape[1] <= 10_000
                    outcomes["decoded"] += 1
            assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert outcomes["decoded"] and outcomes["refused"], outcomes
