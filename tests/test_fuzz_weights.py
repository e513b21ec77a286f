"""Fuzz weights_import with damaged and hostile HDF5 files: a correct load or a one-line WeightsError, nothing else.

Base files: the two bundled simple-CNN files (legacy full-model Keras layout)
and three written here with h5py (Keras application layout, Keras 3
``.weights.h5``, torch state dict) for the models of ``tests/fuzz_worker.py``.
Mutants, all from one seed:

- byte level: bytes flipped, ranges zeroed or set to 0xff, the file truncated;
- structure level: a group where a dataset should be and back, null
  dataspaces, array/string/compound/enum/vlen/big-endian datatypes, huge
  declared shapes without storage, never-written and half-written datasets,
  soft, external and extra hard links, a group linked into itself, virtual
  datasets (one reading another file, one reading itself), raw data in an
  external file, 2-D and non-string attributes, names that are not UTF-8.

Every case runs in a child process (``fuzz_worker.py``) with an address-space
limit and a per-case alarm. Each outcome must be a ``WeightsError`` with a
one-line message and the model untouched, or a load that is correct: equal
to the unmutated file's parameters when the mutation touched no stored array
bytes, otherwise finite and of the model's shapes. Structure mutants that put
values not stored in the file in reach (links, virtual or never-written
datasets) must be refused. No crash, no hang, peak memory growth per case
within 1.5x the model's weights plus a fixed allowance for libhdf5's own caches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from fuzz_worker import build
from rlrp_ref.models.simple_cnn import bundled_weights

SEED = int(os.environ.get("RLRP_FUZZ_SEED", "17"))
#: Byte-level mutants per base file (RLRP_FUZZ_MUTANTS=2000 for a longer run by hand).
BYTE_MUTANTS = int(os.environ.get("RLRP_FUZZ_MUTANTS", "300"))
#: Per-case alarm (s); address-space allowance over the worker's start-up size (MiB).
TIMEOUT_S = 20
LIMIT_MB = 512
#: Peak RSS growth a case may add beyond 1.5x the model's weights: libhdf5's metadata and chunk caches, h5py objects.
RSS_ALLOWANCE = 4 * 2**20


# ---------------------------------------------------------------------------
# base files
# ---------------------------------------------------------------------------


def write_keras_h5(path, model):
    with h5py.File(path, "w") as f:
        names = []
        for layer in model.iter_layers():
            names.append(layer.name)
            group = f.create_group(layer.name)
            weight_names = [f"{layer.name}/{p}:0" for p in layer.params]
            group.attrs["weight_names"] = np.array(weight_names, dtype="S")
            for wn, v in zip(weight_names, layer.params.values()):
                group.create_dataset(wn, data=v)
        f.attrs["layer_names"] = np.array(names, dtype="S")


KERAS3_ORDER = ["stem_conv", "b_1_conv", "b_2_conv", "b_2_bn", "b_0_conv", "predictions"]


def write_keras3(path, model):
    from weights_import.keras import keras_functional_order

    order = [layer.name for layer in keras_functional_order(model)]
    counters: dict[str, int] = {}
    with h5py.File(path, "w") as f:
        f.create_group("layers/input_layer/vars")
        for layer in (model.get_layer(n) for n in order):
            k = counters.get(layer.kind, 0)
            counters[layer.kind] = k + 1
            group = f.create_group(f"layers/{layer.kind if k == 0 else f'{layer.kind}_{k}'}/vars")
            group.attrs["name"] = layer.name
            for j, v in enumerate(layer.params.values()):
                group.create_dataset(str(j), data=v)
        f.create_group("vars")


def write_torch(path, model):
    names = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
             "moving_variance": "running_var"}
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "torch_state_dict"
        for layer in model.iter_layers():
            for p, v in layer.params.items():
                if p == "kernel" and v.ndim == 4:
                    v = v.transpose(3, 2, 0, 1)
                elif p == "kernel" and layer.name == "classifier.0":  # (H*W*C, out) -> torch (out, C*H*W) with C=4
                    v = v.reshape(3, 2, 4, -1).transpose(3, 2, 0, 1).reshape(v.shape[1], -1)
                elif p == "kernel":
                    v = v.T
                f.create_dataset(f"{layer.name}.{names[p]}", data=np.ascontiguousarray(v))
            if layer.kind == "batch_normalization":
                f.create_dataset(f"{layer.name}.num_batches_tracked", data=np.int64(3))


def data_ranges(path) -> list[tuple[int, int]]:
    """Byte ranges of every contiguous dataset's stored values (a mutation elsewhere must not change a loaded value)."""
    ranges = []
    with h5py.File(path, "r") as f:
        def visit(_, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                ranges.append((obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()))
        f.visititems(visit)
    return ranges


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """``{name: (path, model name, data ranges)}``."""
    root = tmp_path_factory.mktemp("fuzz_bases")
    out = {}
    for dataset in ("shapes", "digits"):
        path = root / f"simple_cnn_{dataset}.h5"
        shutil.copy(bundled_weights(dataset), path)
        out[dataset] = (path, dataset)
    for name, model_name, writer in (("chain_keras", "chain", write_keras_h5), ("block_keras3", "block", write_keras3),
                                     ("torch_sd", "torch", write_torch)):
        path = root / f"{name}.h5"
        writer(path, build(model_name))
        out[name] = (path, model_name)
    return {name: (path, model, data_ranges(path)) for name, (path, model) in out.items()}


# ---------------------------------------------------------------------------
# mutants
# ---------------------------------------------------------------------------


def byte_mutants(rng, name, base, ranges, root):
    data = base.read_bytes()
    n = len(data)
    out = []
    for i in range(BYTE_MUTANTS):
        buf = bytearray(data)
        kind = ("flip", "zero", "ones", "truncate")[i % 4]
        if kind == "flip":
            spans = []
            for pos in rng.integers(0, n, size=int(rng.integers(1, 5))):
                buf[pos] ^= int(rng.integers(1, 256))
                spans.append((int(pos), int(pos) + 1))
        elif kind in ("zero", "ones"):
            start, length = int(rng.integers(0, n)), int(rng.integers(1, 513))
            buf[start:start + length] = bytes([0 if kind == "zero" else 255]) * len(buf[start:start + length])
            spans = [(start, start + length)]
        else:
            cut = int(rng.integers(0, n))
            del buf[cut:]
            spans = [(cut, n)]
        if bytes(buf) == data:
            continue
        path = root / f"{name}_{kind}_{i}.h5"
        path.write_bytes(bytes(buf))
        touches = any(a < e and s < b for a, b in spans for s, e in ranges)
        out.append(dict(path=str(path), kind=f"byte:{kind}", touches_data=touches))
    return out


def _first_dataset(f, model):
    """``(group, name, dataset)`` of the first weight of the file's first layer with weights."""
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not found and obj.size > 1:
            found.append(name)
    f.visititems(visit)
    path = found[0]
    parent, _, leaf = path.rpartition("/")
    return (f[parent] if parent else f), leaf, f[path]


def _replace(group, leaf, **kwargs):
    del group[leaf]
    group.create_dataset(leaf, **kwargs)


def _layer_group(f):
    """A group holding weights (a Keras layer group or vars group) or None (a flat state dict)."""
    group, _, _ = _first_dataset(f, None)
    return group if group.name != "/" else None


# each: (name, function(file, other file path) -> None, layouts it applies to, must the load be refused?)
def _structure_mutations():
    def group_for_dataset(f, other):
        group, leaf, ds = _first_dataset(f, None)
        del group[leaf]
        group.create_group(leaf).create_dataset("x", data=np.ones(3))

    def dataset_for_group(f, other):
        group = _layer_group(f)
        if group is None:
            f.create_group("features.0.weight_group")  # a stray group in a state dict: nothing to load from it
            del f["features.0.weight"]
            f.create_group("features.0.weight").create_dataset("x", data=np.ones(3))
            return
        parent = f[group.parent.name]
        name = group.name.rsplit("/", 1)[-1]
        del parent[name]
        parent.create_dataset(name, data=np.ones(4))

    def null_space(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, data=h5py.Empty("f4"))

    def scalar(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, data=np.float32(1.5))

    def array_dtype(f, other):
        group, leaf, ds = _first_dataset(f, None)
        value = ds[()]
        _replace(group, leaf, shape=value.shape[:-1], dtype=np.dtype((value.dtype, value.shape[-1:])))
        group[leaf][...] = value

    def array_dtype_same_shape(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, shape=ds.shape, dtype=np.dtype(("f4", (2,))))

    def string_dtype(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, data=np.array([b"a" * 8] * ds.shape[0]))

    def vlen_str(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, data=np.array(["x"] * ds.shape[0], dtype=h5py.string_dtype()))

    def compound(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, shape=ds.shape, dtype=np.dtype([("a", "f4"), ("b", "f4")]))

    def enum_bool(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, data=np.ones(ds.shape, dtype=bool))

    def vlen_float(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, shape=ds.shape, dtype=h5py.vlen_dtype(np.float32))

    def big_endian(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, data=ds[()].astype(">f4"))

    def huge_never_written(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, shape=(30000, 30000), dtype="f4")

    def huge_2_31(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, shape=(10, 2**31), dtype="f4")

    def huge_chunked_fill(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, shape=(64, 10**6), dtype="f4", chunks=(64, 1024), fillvalue=1.0)

    def never_written(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, shape=ds.shape, dtype=ds.dtype)

    def never_written_fill(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, shape=ds.shape, dtype=ds.dtype, fillvalue=0.25)

    def half_chunks(f, other):
        group, leaf, ds = _first_dataset(f, None)
        value = ds[()]
        del group[leaf]
        new = group.create_dataset(leaf, shape=value.shape, dtype=value.dtype, chunks=(1,) + value.shape[1:])
        new[:1] = value[:1]

    def soft_link(f, other):
        group, leaf, ds = _first_dataset(f, None)
        f.create_dataset("spare", data=ds[()])
        del group[leaf]
        group[leaf] = h5py.SoftLink("/spare")

    def dangling_soft_link(f, other):
        group, leaf, ds = _first_dataset(f, None)
        del group[leaf]
        group[leaf] = h5py.SoftLink("/nowhere/at/all")

    def external_link(f, other):
        group, leaf, ds = _first_dataset(f, None)
        with h5py.File(other, "w") as g:
            g["w"] = ds[()]
        del group[leaf]
        group[leaf] = h5py.ExternalLink(str(other), "/w")

    def hard_link_out(f, other):
        group, leaf, ds = _first_dataset(f, None)
        f["spare"] = ds[()]
        del group[leaf]
        group[leaf] = f["spare"]

    def group_cycle(f, other):
        group = _layer_group(f) or f.create_group("sub")
        group["loop"] = group

    def external_raw(f, other):
        group, leaf, ds = _first_dataset(f, None)
        value = ds[()]
        Path(other).write_bytes(value.tobytes())
        _replace(group, leaf, shape=value.shape, dtype=value.dtype, external=[(str(other), 0, value.nbytes)])

    def virtual_other(f, other):
        group, leaf, ds = _first_dataset(f, None)
        value = ds[()]
        with h5py.File(other, "w") as g:
            g["w"] = value
        layout = h5py.VirtualLayout(shape=value.shape, dtype=value.dtype)
        layout[...] = h5py.VirtualSource(str(other), "w", shape=value.shape)
        del group[leaf]
        group.create_virtual_dataset(leaf, layout)

    def virtual_self(f, other):
        group, leaf, ds = _first_dataset(f, None)
        shape, dtype, full = ds.shape, ds.dtype, ds.name
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[...] = h5py.VirtualSource(".", full, shape=shape)
        del group[leaf]
        group.create_virtual_dataset(leaf, layout, fillvalue=0)

    def compressed(f, other):
        group, leaf, ds = _first_dataset(f, None)
        value = ds[()]
        _replace(group, leaf, data=value, compression="gzip", chunks=True)

    def float16(f, other):
        group, leaf, ds = _first_dataset(f, None)
        _replace(group, leaf, data=ds[()].astype("f2"))

    def attr_2d(f, other):
        for obj in _name_holders(f):
            key = _name_key(obj)
            names = [v if isinstance(v, bytes) else str(v).encode() for v in np.atleast_1d(obj.attrs[key])]
            obj.attrs[key] = np.array([names, names], dtype="S")
            return

    def attr_int(f, other):
        for obj in _name_holders(f):
            obj.attrs[_name_key(obj)] = np.arange(3)
            return

    def attr_null(f, other):
        for obj in _name_holders(f):
            obj.attrs[_name_key(obj)] = h5py.Empty("S10")
            return

    def attr_not_utf8(f, other):
        for obj in _name_holders(f):
            key = _name_key(obj)
            values = obj.attrs[key]
            if np.ndim(values):
                obj.attrs[key] = np.array([b"\xff\xfe" + bytes(v if isinstance(v, bytes) else v.encode()) for v in values])
            else:
                obj.attrs[key] = np.bytes_(b"\xff\xfe")
            return

    def name_not_utf8(f, other):
        group, leaf, ds = _first_dataset(f, None)
        value = ds[()]
        del group[leaf]
        h5py.h5d.create(group.id, leaf.encode() + b"\xff", h5py.h5t.IEEE_F64LE, h5py.h5s.create_simple(value.shape)).write(
            h5py.h5s.ALL, h5py.h5s.ALL, value.astype("f8"))

    return {
        "group_for_dataset": (group_for_dataset, True), "dataset_for_group": (dataset_for_group, True),
        "null_space": (null_space, True), "scalar": (scalar, True), "array_dtype": (array_dtype, True),
        "array_dtype_same_shape": (array_dtype_same_shape, True), "string_dtype": (string_dtype, True),
        "vlen_str": (vlen_str, True), "compound": (compound, True), "enum_bool": (enum_bool, True),
        "vlen_float": (vlen_float, True), "big_endian": (big_endian, True), "huge_never_written": (huge_never_written, True),
        "huge_2_31": (huge_2_31, True), "huge_chunked_fill": (huge_chunked_fill, True), "never_written": (never_written, True),
        "never_written_fill": (never_written_fill, True), "half_chunks": (half_chunks, True), "soft_link": (soft_link, True),
        "dangling_soft_link": (dangling_soft_link, True), "external_link": (external_link, True),
        "hard_link_out": (hard_link_out, True), "group_cycle": (group_cycle, True), "external_raw": (external_raw, True),
        "virtual_other": (virtual_other, True), "virtual_self": (virtual_self, True), "compressed": (compressed, False),
        "float16": (float16, False), "attr_2d": (attr_2d, True), "attr_int": (attr_int, True), "attr_null": (attr_null, True),
        "attr_not_utf8": (attr_not_utf8, True), "name_not_utf8": (name_not_utf8, True),
    }


def _name_holders(f):
    """The objects whose name attribute decides what is loaded (layer_names, Keras 3 vars name, torch format)."""
    if "layer_names" in f.attrs:
        yield f
    elif "model_weights" in f:
        yield f["model_weights"]
    elif "layers" in f:
        for name in f["layers"]:
            if "vars" in f["layers"][name] and "name" in f["layers"][name]["vars"].attrs and len(f["layers"][name]["vars"]):
                yield f["layers"][name]["vars"]
    else:
        yield f


def _name_key(obj):
    for key in ("layer_names", "name", "format"):
        if key in obj.attrs:
            return key
    raise AssertionError(f"no name attribute on {obj.name}")


def structure_mutants(name, base, root):
    out = []
    for kind, (mutate, must_fail) in _structure_mutations().items():
        path, other = root / f"{name}_{kind}.h5", root / f"{name}_{kind}_other.h5"
        shutil.copy(base, path)
        with h5py.File(path, "a") as f:
            mutate(f, other)
        # the compressed and float16 copies hold the same (or rounded) values: a load must be right or refused
        out.append(dict(path=str(path), kind=f"struct:{kind}", touches_data=kind == "float16", must_fail=must_fail,
                        must_equal=kind == "compressed"))
    return out


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def run_worker(cases) -> list[dict]:
    """Run ``cases`` in worker processes; a case that kills its worker is recorded and the rest go on in a new one."""
    worker = Path(__file__).with_name("fuzz_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    results, todo = [], list(cases)
    while todo:
        proc = subprocess.run([sys.executable, str(worker), str(LIMIT_MB), str(TIMEOUT_S)], input=json.dumps(todo),
                              capture_output=True, text=True, env=env, timeout=TIMEOUT_S * (len(todo) + 5))
        started, done = None, set()
        for line in proc.stdout.splitlines():
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                results.append(record)
                done.add(record["id"])
                started = None
        if proc.returncode == 0:
            break
        if started is None:
            raise AssertionError(f"fuzz worker failed outside a case (exit {proc.returncode}): {proc.stderr[-2000:]}")
        outcome = "hang" if proc.returncode == -14 else "crash"
        results.append({"id": started, "outcome": outcome, "message": f"exit code {proc.returncode}: {proc.stderr[-300:]}"})
        done.add(started)
        todo = [c for c in todo if c["id"] not in done]
    return results


def test_fuzz_weights(bases, tmp_path):
    rng = np.random.default_rng(SEED)
    cases = []
    for name, (path, model, ranges) in bases.items():
        mutants = byte_mutants(rng, name, path, ranges, tmp_path) + structure_mutants(name, path, tmp_path)
        for j, m in enumerate(mutants):
            ops = ["load"] + (["read"] if j % 3 == 0 else []) + (["inspect"] if j % 7 == 0 else [])
            for op in ops:
                cases.append(dict(m, id=len(cases), base=str(path), model=model, op=op,
                                  dtype=("float32", "float64")[len(cases) % 2]))
    start = time.perf_counter()
    halves = [cases[0::2], cases[1::2]]
    with ThreadPoolExecutor(2) as pool:
        results = [r for part in pool.map(run_worker, halves) for r in part]
    elapsed = time.perf_counter() - start
    by_id = {c["id"]: c for c in cases}
    assert sorted(r["id"] for r in results) == sorted(by_id)

    problems, counts, moved = [], {}, []
    for r in results:
        case = by_id[r["id"]]
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        where = f"{case['kind']} {Path(case['path']).name} {case['op']} {case['dtype']}"
        if r["outcome"] == "weights_error":
            if not r["one_line"] or not r["untouched"]:
                problems.append(f"{where}: WeightsError one_line={r['one_line']} untouched={r['untouched']}: {r['message']}")
        elif r["outcome"] == "ok":
            if case.get("must_fail") and case["op"] == "load":
                problems.append(f"{where}: loaded, expected a refusal")
            elif case["op"] == "load" and not r["finite_shapes"]:
                problems.append(f"{where}: loaded non-finite or misshapen parameters")
            elif case["op"] == "load" and not case["touches_data"] and not r["equal"] and r.get("moved"):
                # a changed data address or datatype in a file without metadata checksums (docs/validation.md)
                counts["ok, read from a moved address"] = counts.get("ok, read from a moved address", 0) + 1
                moved.append(f"{where}: {r['moved']}")
            elif case["op"] == "load" and not case["touches_data"] and not r["equal"]:
                problems.append(f"{where}: loaded values that differ from the file's though no stored array byte changed")
            elif case["op"] == "read" and r["read_bytes"] > os.path.getsize(case["path"]):
                problems.append(f"{where}: read {r['read_bytes']} bytes from a {os.path.getsize(case['path'])}-byte file")
        else:
            problems.append(f"{where}: {r['outcome']}: {r['message']}")
        if r.get("rss_growth") is not None and case["op"] == "load" and r["rss_growth"] > 1.5 * r["weights_bytes"] + RSS_ALLOWANCE:
            problems.append(f"{where}: peak memory grew by {r['rss_growth']} bytes (weights {r['weights_bytes']})")
    growth = max((r.get("rss_growth") or 0) for r in results)
    print(f"fuzz: {len(cases)} cases in {elapsed:.1f} s, outcomes {counts}, largest peak RSS growth {growth / 2**20:.1f} MiB")
    for line in moved:
        print(f"fuzz: values read from a moved address: {line}")
    for name in ("ok", "weights_error"):
        assert counts.get(name, 0) > 0, f"the fuzz produced no {name} outcome at all: {counts}"
    assert not problems, f"{len(problems)} bad outcomes of {len(cases)}:\n" + "\n".join(problems[:40])
