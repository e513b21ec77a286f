"""The documented Zennit workflow (docs/validation.md) runs and passes, so the docs cannot rot."""

import subprocess
import sys
from pathlib import Path

import h5py
import pytest

pytest.importorskip("zennit", reason="needs zennit (rlrp-ref[crosscheck] extra)")
pytest.importorskip("torch", reason="needs torch (rlrp-ref[crosscheck] extra)")

from rlrp_ref.cli import main  # noqa: E402
from rlrp_ref.validate import PACKAGED_DIR, load_manifest, validate  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "examples" / "zennit_to_vectors.py"


@pytest.fixture(scope="module")
def zennit_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("zennit") / "zennit.h5"
    subprocess.run([sys.executable, str(SCRIPT), "--vectors", str(PACKAGED_DIR), "--out", str(out)],
                   check=True, capture_output=True, text=True)
    return out


def test_script_covers_every_case_and_the_classical_methods(zennit_file):
    manifest = load_manifest(PACKAGED_DIR)
    with h5py.File(zennit_file, "r") as fh:
        assert sorted(fh.keys()) == sorted(e["name"] for e in manifest["cases"])
        methods = set(fh[manifest["cases"][0]["name"]].keys())
    classical = {"lrp0", "epsilon", "gamma", "alphabeta", "zplus", "zbox", "wsquare", "flat", "epsilon_plus",
                 "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"}
    assert methods == classical | {"gradient", "gradient_x_input", "integrated_gradients"}
    assert "rlrp" not in methods  # zennit has no R-LRP (and its SmoothGrad noise cannot be reproduced)


def test_rlrp_ref_validate_passes_zennit(zennit_file, capsys):
    code = main(["validate", "--vectors", str(PACKAGED_DIR), "--theirs", str(zennit_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    suite = validate(PACKAGED_DIR, zennit_file)
    assert suite.passed and max(r.max_rel_error for r in suite.reports) < 1e-9
