"""Conformance vectors: small networks with fixed seeds, their inputs and expected relevance.

A vectors set is a folder with ``manifest.json`` and one HDF5 file per case.

``manifest.json``::

    {"format": "rlrp-ref-vectors", "format_version": 1, "definition_version": 2,
     "generator": "rlrp-ref 0.1.0", "dtype": "float64", "topk": null,
     "methods": {"<method>": {"params": {...}, "rtol": ..., "atol": ...}, ...},
     "cases": [{"name": ..., "file": "<name>.h5", "sha256": ..., "description": ...,
                "input_shape": [...], "num_samples": N, "num_classes": C,
                "bias_free": bool}, ...]}

Each case file (HDF5)::

    /               attributes format, format_version, definition_version, case, description, seed
    /network        the model (schema in :mod:`rlrp_ref.validate.network`)
    /inputs         (N, *input_shape) float64
    /targets        (N,) int64, the explained class of each sample
    /logits         (N, C) float64, the model's output (checks a reader's forward pass)
    /relevance/<method>   (N, *input_shape) float64
    /smoothgrad_draws     (n, N, *input_shape) float64, the standard-normal draws of SmoothGrad

The expected relevance is computed by :func:`rlrp_ref.explain` in float64 with
the parameters listed in the manifest. ``definition_version`` names the R-LRP
definition of the ``rlrp`` vectors (:data:`DEFINITIONS`); a set written before it
existed has none and is read as definition 1, and reports say so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from .. import layers as L
from ..model import Residual, Sequential
from .network import read_network, write_network

FORMAT = "rlrp-ref-vectors"
#: Version of the vectors format (the files' layout); a reader refuses any other.
FORMAT_VERSION = 1
#: Version of the R-LRP definition the expected ``rlrp`` relevance follows (docs/spec.md).
#: A manifest without ``definition_version`` was written before it existed: definition 1.
DEFINITION_VERSION = 2
#: What each definition version of R-LRP means (docs/validation.md says why it changed).
DEFINITIONS = {
    1: "R-LRP definition 1 (before 2026-12): start f_c e_c, max pooling multiplied by the winner's activation",
    2: "R-LRP definition 2: start |f_c| e_c, max pooling as a selection (relevance to the winner, then the rescale)",
}
MANIFEST = "manifest.json"
#: The copy that ships inside the package.
PACKAGED_DIR = Path(__file__).resolve().parent / "vectors"


# ---------------------------------------------------------------------------
# the networks
# ---------------------------------------------------------------------------


class _Builder:
    """Layers with seeded He-normal weights and per-case names (never the process-global auto names)."""

    def __init__(self, rng: np.random.Generator, bias: bool = True):
        self.rng = rng
        self.bias = bias
        self.counts: dict[str, int] = {}

    def name(self, kind: str) -> str:
        k = self.counts.get(kind, 0)
        self.counts[kind] = k + 1
        return kind if k == 0 else f"{kind}_{k}"

    def _bias(self, n):
        return self.rng.normal(0.0, 0.1, n) if self.bias else None

    def dense(self, n_in, n_out):
        kernel = self.rng.normal(0.0, np.sqrt(2.0 / n_in), (n_in, n_out))
        return L.Dense(kernel, self._bias(n_out), name=self.name("dense"))

    def conv(self, k, c_in, c_out, strides=1, padding="valid"):
        kernel = self.rng.normal(0.0, np.sqrt(2.0 / (k * k * c_in)), (k, k, c_in, c_out))
        return L.Conv2D(kernel, self._bias(c_out), strides=strides, padding=padding, name=self.name("conv2d"))

    def bn(self, c):
        rng = self.rng
        return L.BatchNorm(rng.uniform(0.5, 1.5, c), rng.normal(0.0, 0.1, c), rng.normal(0.0, 0.1, c),
                           rng.uniform(0.5, 1.5, c), epsilon=1e-3, name=self.name("batch_normalization"))

    def relu(self):
        return L.ReLU(name=self.name("relu"))

    def seq(self, layers):
        return Sequential(layers, name=self.name("sequential"))

    def maxpool(self, size=2, strides=None):
        return L.MaxPool2D(size, strides=strides, name=self.name("max_pooling2d"))

    def avgpool(self, size=2, strides=None):
        return L.AvgPool2D(size, strides=strides, name=self.name("average_pooling2d"))

    def gap(self):
        return L.GlobalAvgPool2D(name=self.name("global_average_pooling2d"))

    def flatten(self):
        return L.Flatten(name=self.name("flatten"))


def _dense_relu(b):
    return [b.dense(12, 16), b.relu(), b.dense(16, 10), b.relu(), b.dense(10, 4)]


def _dense_sigmoid(b):
    return [b.dense(8, 10), L.Sigmoid(name=b.name("sigmoid")), b.dense(10, 6), L.Softplus(name=b.name("softplus")), b.dense(6, 3)]


def _conv_maxpool(b):
    return [b.conv(3, 3, 6), b.relu(), b.maxpool(2), b.conv(2, 6, 8), b.relu(), b.flatten(), b.dense(32, 5)]


def _conv_nobias(b):
    return [b.conv(3, 2, 4, padding="same"), b.relu(), b.maxpool(2), b.conv(3, 4, 6), b.relu(), b.flatten(), b.dense(6, 3)]


def _conv_avgpool(b):
    return [b.conv(3, 2, 5, padding="same"), b.relu(), b.avgpool(2), b.conv(3, 5, 6), b.relu(), b.avgpool(2),
            b.flatten(), b.dense(6, 4)]


def _conv_strided_same(b):
    # 9 -> 5 (stride 2, "same": pads 1/1); 5 -> 5 ("same" 2x2: pads 0/1, the odd one bottom/right);
    # explicit zero padding 5 -> 6; 6 -> 2 (stride 2, valid)
    return [b.conv(3, 3, 6, strides=2, padding="same"), b.relu(), b.conv(2, 6, 6, padding="same"), b.relu(),
            L.ZeroPad2D(((1, 0), (1, 0)), name=b.name("zero_padding2d")), b.conv(3, 6, 8, strides=2), b.relu(),
            b.gap(), b.dense(8, 4)]


def _bn_fold(b):
    return [b.conv(3, 3, 6), b.bn(6), b.relu(), b.maxpool(2), b.conv(3, 6, 8, padding="same"), b.bn(8), b.relu(),
            b.gap(), b.dense(8, 6), b.bn(6), b.relu(), b.dense(6, 4)]


def _residual_identity(b):
    branch = b.seq([b.conv(3, 6, 6, padding="same"), b.relu(), b.conv(3, 6, 6, padding="same")])
    block = Residual(branch, skip=None, activation="relu", name=b.name("residual"))
    return [b.conv(3, 4, 6, padding="same"), b.relu(), block, b.gap(), b.dense(6, 4)]


def _residual_projection(b):
    branch = b.seq([b.conv(3, 6, 8, strides=2, padding="same"), b.bn(8), b.relu(),
                    b.conv(3, 8, 8, padding="same"), b.bn(8)])
    skip = b.seq([b.conv(1, 6, 8, strides=2), b.bn(8)])
    down = Residual(branch, skip=skip, activation="relu", name=b.name("residual"))
    branch2 = b.seq([b.conv(3, 8, 8, padding="same"), b.relu(), b.conv(3, 8, 8, padding="same")])
    ident = Residual(branch2, skip=None, activation="relu", name=b.name("residual"))
    return [b.conv(3, 3, 6, padding="same"), b.relu(), down, ident, b.gap(), b.dense(8, 5)]


@dataclass(frozen=True)
class Case:
    """One conformance case: a seeded network and seeded inputs."""

    name: str
    description: str
    seed: int
    input_shape: tuple[int, ...]
    input_range: tuple[float, float]
    layers: Callable[[_Builder], list]
    bias: bool = True
    num_samples: int = 3

    def build(self):
        """``(model, inputs, targets)``, identical on every call."""
        rng = np.random.default_rng(self.seed)
        model = Sequential(self.layers(_Builder(rng, bias=self.bias)), name=self.name)
        x = rng.uniform(*self.input_range, (self.num_samples, *self.input_shape))
        logits = model.forward(x)
        # the first sample explains its top class, the others seeded classes (often not the top one)
        targets = rng.integers(0, logits.shape[1], self.num_samples)
        targets[0] = int(np.argmax(logits[0]))
        return model, x, targets.astype(np.int64)


CASES: tuple[Case, ...] = (
    Case("dense_relu", "dense 12-16-10-4, ReLU, biases", 101, (12,), (-1.0, 1.0), _dense_relu),
    Case("dense_nobias", "dense 12-16-10-4, ReLU, no biases (LRP-0 conserves)", 102, (12,), (-1.0, 1.0),
         _dense_relu, bias=False),
    Case("dense_sigmoid", "dense 8-10-6-3 with sigmoid and softplus activations", 103, (8,), (-1.0, 1.0),
         _dense_sigmoid),
    Case("conv_maxpool", "conv 3x3 valid, max pool 2, conv 2x2, flatten, dense", 104, (8, 8, 3), (0.0, 1.0),
         _conv_maxpool),
    Case("conv_nobias", "conv same, max pool over an odd size, conv, dense, no biases (LRP-0 conserves)", 105,
         (7, 7, 2), (-1.0, 1.0), _conv_nobias, bias=False),
    Case("conv_avgpool", "conv same, average pool 2, conv valid, average pool 2, dense", 106, (8, 8, 2),
         (0.0, 1.0), _conv_avgpool),
    Case("conv_strided_same", "strided same-padded conv, asymmetric same padding, zero padding, global average pool",
         107, (9, 9, 3), (-1.0, 1.0), _conv_strided_same),
    Case("bn_fold", "conv/dense followed by BatchNorm (folded before any relevance pass)", 108, (8, 8, 3),
         (0.0, 1.0), _bn_fold),
    Case("residual_identity", "stem conv, residual block with identity skip, global average pool, dense", 109,
         (6, 6, 4), (-1.0, 1.0), _residual_identity),
    Case("residual_projection", "residual block with projection skip (1x1 conv stride 2 + BatchNorm), then an "
         "identity block", 110, (8, 8, 3), (0.0, 1.0), _residual_projection),
)


def get_case(name: str) -> Case:
    """The case called ``name`` (ValueError listing the known ones otherwise)."""
    for case in CASES:
        if case.name == name:
            return case
    raise ValueError(f"unknown case {name!r}; known cases {[c.name for c in CASES]}")


# ---------------------------------------------------------------------------
# the methods
# ---------------------------------------------------------------------------

_EXACT = {"rtol": 1e-7, "atol": 1e-10}
_BOUNDS = {"low": -1.0, "high": 1.0}  # every case's inputs lie in [-1, 1]

#: Method -> parameters passed to :func:`rlrp_ref.explain` by name, the output
#: relevance it starts from (``"abs_logit"``: ``|f_c| e_c``; ``"logit"``: ``f_c e_c``; ``"onehot"``: ``e_c``)
#: and the PASS tolerance. Epsilon is 0.01 rather than Zennit's 1e-6 so that
#: it visibly differs from LRP-0 (and a misplaced epsilon shows).
METHODS: dict[str, dict] = {
    "rlrp": {"params": {}, "start": "abs_logit", **_EXACT},
    "lrp0": {"params": {}, "start": "logit", **_EXACT},
    "epsilon": {"params": {"eps": 0.01}, "start": "logit", **_EXACT},
    "gamma": {"params": {"gamma": 0.25}, "start": "logit", **_EXACT},
    "alphabeta": {"params": {"alpha": 2.0, "beta": 1.0}, "start": "logit", **_EXACT},
    "zplus": {"params": {}, "start": "logit", **_EXACT},
    "zbox": {"params": dict(_BOUNDS), "start": "logit", **_EXACT},
    "wsquare": {"params": {}, "start": "logit", **_EXACT},
    "flat": {"params": {}, "start": "logit", **_EXACT},
    "epsilon_plus": {"params": {"eps": 0.01}, "start": "logit", **_EXACT},
    "epsilon_plus_flat": {"params": {"eps": 0.01}, "start": "logit", **_EXACT},
    "epsilon_gamma_box": {"params": {**_BOUNDS, "eps": 0.01, "gamma": 0.25}, "start": "logit", **_EXACT},
    "epsilon_alpha2_beta1": {"params": {"eps": 0.01}, "start": "logit", **_EXACT},
    "gradient": {"params": {}, "start": "onehot", **_EXACT},
    "gradient_x_input": {"params": {}, "start": "onehot", **_EXACT},
    "integrated_gradients": {"params": {"steps": 16}, "start": "onehot", **_EXACT},
    "smoothgrad": {"params": {"n": 8, "sigma": 0.1, "seed": 0}, "start": "onehot", **_EXACT},
}


def expected_relevance(model, x, targets, method: str, params: dict) -> np.ndarray:
    """The expected relevance of ``method`` for ``x`` (float64), explaining ``targets``: :func:`rlrp_ref.explain`."""
    from ..explain import explain

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known methods {sorted(METHODS)}")
    return explain(model, np.asarray(x, dtype=np.float64), target=np.asarray(targets), method=method, **params).relevance


def smoothgrad_draws(x, n: int, seed) -> np.ndarray:
    """The standard-normal draws SmoothGrad uses, ``(n, N, *features)``, in the order it draws them.

    ``rlrp_ref.attribution.smoothgrad`` draws ``numpy.random.default_rng(seed).standard_normal(x.shape)``
    ``n`` times; noise sample ``k`` is ``draws[k] * sigma * (max x_s - min x_s)`` for each sample ``s``.
    Stored in the vectors so that implementations with another random generator can reproduce it.
    """
    rng = np.random.default_rng(seed)
    return np.stack([rng.standard_normal(np.shape(x)) for _ in range(n)])


# ---------------------------------------------------------------------------
# writing and reading
# ---------------------------------------------------------------------------


def sha256_of(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _case_is_bias_free(model) -> bool:
    return all(getattr(layer, "bias", None) is None for layer in model.iter_layers()) and not any(
        isinstance(layer, L.BatchNorm) for layer in model.iter_layers())


def write_case(path, case: Case, methods=None) -> dict:
    """Write one case file; return its manifest entry (without the sha256)."""
    methods = list(METHODS) if methods is None else list(methods)
    model, x, targets = case.build()
    logits = model.forward(x)
    with h5py.File(path, "w") as fh:
        fh.attrs["format"] = FORMAT
        fh.attrs["format_version"] = FORMAT_VERSION
        fh.attrs["definition_version"] = DEFINITION_VERSION
        fh.attrs["case"] = case.name
        fh.attrs["description"] = case.description
        fh.attrs["seed"] = case.seed
        write_network(fh.create_group("network"), model, case.input_shape)
        fh.create_dataset("inputs", data=x, track_times=False)
        fh.create_dataset("targets", data=targets, track_times=False)
        fh.create_dataset("logits", data=logits, track_times=False)
        if "smoothgrad" in methods:
            sg = METHODS["smoothgrad"]["params"]
            fh.create_dataset("smoothgrad_draws", data=smoothgrad_draws(x, sg["n"], sg["seed"]), track_times=False)
        rel = fh.create_group("relevance")
        for method in methods:
            values = expected_relevance(model, x, targets, method, METHODS[method]["params"])
            rel.create_dataset(method, data=np.asarray(values, dtype=np.float64), track_times=False)
    return {
        "name": case.name,
        "file": Path(path).name,
        "description": case.description,
        "input_shape": list(case.input_shape),
        "num_samples": case.num_samples,
        "num_classes": int(logits.shape[1]),
        "bias_free": _case_is_bias_free(model),
    }


def build_manifest(entries: list[dict], methods) -> dict:
    """The manifest of a vectors set: format, version, generator, the methods' entries and the cases."""
    from .. import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "definition_version": DEFINITION_VERSION,
        "generator": f"rlrp-ref {__version__}",
        "dtype": "float64",
        "methods": {m: dict(METHODS[m]) for m in methods},
        "cases": entries,
    }


def write_vectors(out_dir, cases=None, methods=None) -> Path:
    """Write the vectors set into ``out_dir`` (all or nothing); returns the manifest path."""
    from ..outputs import staged_dir

    cases = list(CASES) if cases is None else [get_case(c) if isinstance(c, str) else c for c in cases]
    methods = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known methods {sorted(METHODS)}")
    with staged_dir(out_dir) as tmp:
        entries = []
        for case in cases:
            path = tmp / f"{case.name}.h5"
            entry = write_case(path, case, methods)
            entry["sha256"] = sha256_of(path)
            entries.append(entry)
        manifest = build_manifest(entries, methods)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return Path(out_dir) / MANIFEST


def load_manifest(vectors_dir, verify: bool = True) -> dict:
    """Read and check ``manifest.json`` of a vectors folder (format, version, files, sha256)."""
    folder = Path(vectors_dir)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FileNotFoundError(f"vectors folder {folder} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"vectors folder {folder}: no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: expected format {FORMAT!r}, found {found!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: expected format_version {FORMAT_VERSION}, found {version!r} "
                         f"(regenerate with this rlrp-ref: rlrp-ref vectors --out DIR)")
    for key in ("methods", "cases"):
        if key not in manifest:
            raise ValueError(f"{path}: expected key {key!r}")
    definition = manifest.setdefault("definition_version", 1)  # written before the key existed: definition 1
    if definition not in DEFINITIONS:
        raise ValueError(f"{path}: expected definition_version in {sorted(DEFINITIONS)}, found {definition!r}")
    if verify:
        for entry in manifest["cases"]:
            file = folder / entry["file"]
            if not file.is_file():
                raise FileNotFoundError(f"vectors folder {folder}: case {entry['name']!r} file {entry['file']} is missing")
            digest = sha256_of(file)
            if digest != entry["sha256"]:
                raise ValueError(f"{file}: sha256 {digest} does not match the manifest's {entry['sha256']} (file changed)")
    return manifest


@dataclass
class CaseData:
    """One case read back from a vectors set."""

    name: str
    inputs: np.ndarray
    targets: np.ndarray
    logits: np.ndarray
    relevance: dict[str, np.ndarray]
    path: Path
    bias_free: bool

    @property
    def target_logits(self) -> np.ndarray:
        """``f_c``: the logit of the explained class of each sample, ``(N,)``."""
        return self.logits[np.arange(len(self.targets)), self.targets]

    def model(self):
        """The network rebuilt from the file alone."""
        return load_model(self.path)


def _case_entry(manifest: dict, name: str, folder) -> dict:
    for entry in manifest["cases"]:
        if entry["name"] == name:
            return entry
    raise ValueError(f"vectors folder {folder}: no case {name!r}; cases {[e['name'] for e in manifest['cases']]}")


def read_case(vectors_dir, name: str, manifest: dict | None = None) -> CaseData:
    """Read case ``name`` of a vectors folder."""
    folder = Path(vectors_dir)
    manifest = load_manifest(folder) if manifest is None else manifest
    entry = _case_entry(manifest, name, folder)
    path = folder / entry["file"]
    with h5py.File(path, "r") as fh:
        version = fh.attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: expected format_version {FORMAT_VERSION}, found {version!r}")
        relevance = {m: np.asarray(ds[()]) for m, ds in fh["relevance"].items()}
        return CaseData(name, np.asarray(fh["inputs"][()]), np.asarray(fh["targets"][()]),
                        np.asarray(fh["logits"][()]), relevance, path, bool(entry.get("bias_free", False)))


def load_model(path):
    """The rlrp-ref model of a case file, rebuilt from the HDF5 alone."""
    with h5py.File(path, "r") as fh:
        if "network" not in fh:
            raise ValueError(f"{path}: expected a /network group")
        return read_network(fh["network"])
