"""The child process of tests/test_fuzz_weights.py: run weights_import on each given file, one JSON line per case.

``python tests/fuzz_worker.py LIMIT_MB TIMEOUT_S`` reads a JSON list of cases on
stdin, each ``{"id", "path", "base", "model", "dtype", "op"}``, and for each
prints ``{"start": id}`` before it runs and a result line after it. The parent
tells a crash (negative exit code) from a hang (``SIGALRM``: the per-case alarm
keeps its default action, so it kills the process even inside libhdf5) by the
last ``start`` it read. The address space is limited to what the process uses
after start-up plus ``LIMIT_MB``, and the peak resident-set growth of each case
is measured (``/proc/self/clear_refs`` resets the high-water mark).

The models are built here, deterministically, so parent and child agree on
them; the parent imports :func:`build` to write the test-built base files.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys

import numpy as np


def build(name: str, dtype: str = "float64", seed: int = 0):
    """The model a base file fits, with parameters drawn from ``seed`` (the files are written with seed 0)."""
    import rlrp_ref as rr
    from rlrp_ref.models.simple_cnn import DATASET_CONFIGS, build_simple_cnn

    rng = np.random.default_rng(seed)
    if name in DATASET_CONFIGS:
        return build_simple_cnn(**DATASET_CONFIGS[name], seed=seed, dtype=dtype)
    if name == "chain":
        model = rr.Sequential([
            rr.Conv2D(rng.standard_normal((3, 3, 2, 3)), rng.standard_normal(3), padding="same", name="conv0"),
            rr.ReLU(name="relu0"),
            rr.Conv2D(rng.standard_normal((3, 3, 3, 3)), rng.standard_normal(3), padding="same", name="conv1"),
            rr.BatchNorm(rng.uniform(0.5, 1.5, 3), rng.standard_normal(3), rng.standard_normal(3), rng.uniform(0.5, 2, 3), name="bn"),
            rr.Flatten(name="flatten"),
            rr.Dense(rng.standard_normal((4 * 4 * 3, 5)), rng.standard_normal(5), name="fc"),
        ], name="chain")
    elif name == "block":
        branch = rr.Sequential([
            rr.Conv2D(rng.standard_normal((1, 1, 3, 2)), rng.standard_normal(2), name="b_1_conv"), rr.ReLU(name="b_1_relu"),
            rr.Conv2D(rng.standard_normal((3, 3, 2, 4)), rng.standard_normal(4), padding="same", name="b_2_conv"),
            rr.BatchNorm(rng.uniform(0.5, 1.5, 4), rng.standard_normal(4), rng.standard_normal(4), rng.uniform(0.5, 2, 4), name="b_2_bn"),
        ], name="b_branch")
        skip = rr.Sequential([rr.Conv2D(rng.standard_normal((1, 1, 3, 4)), rng.standard_normal(4), name="b_0_conv")], name="b_shortcut")
        model = rr.Sequential([
            rr.Conv2D(rng.standard_normal((3, 3, 2, 3)), rng.standard_normal(3), padding="same", name="stem_conv"),
            rr.Residual(branch, skip=skip, name="b_out"), rr.GlobalAvgPool2D(name="avg_pool"),
            rr.Dense(rng.standard_normal((4, 3)), rng.standard_normal(3), name="predictions"),
        ], name="block")
    elif name == "torch":
        model = rr.Sequential([
            rr.Conv2D(rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4), padding=((1, 1), (1, 1)), name="features.0"),
            rr.BatchNorm(rng.uniform(0.5, 1.5, 4), rng.standard_normal(4), rng.standard_normal(4), rng.uniform(0.5, 2, 4),
                         epsilon=1e-5, name="features.1"),
            rr.ReLU(name="features.2"), rr.MaxPool2D(2, 2, name="features.3"), rr.Flatten(name="flatten"),
            rr.Dense(rng.standard_normal((4 * 3 * 2, 6)), rng.standard_normal(6), name="classifier.0"),
            rr.ReLU(name="classifier.1"),
            rr.Dense(rng.standard_normal((6, 3)), rng.standard_normal(3), name="classifier.3"),
        ], name="tiny_torch")
    else:
        raise ValueError(f"fuzz_worker: unknown model {name!r}")
    return model.astype(dtype)


def snapshot(model) -> dict:
    return {f"{layer.name}.{k}": v.copy() for layer in model.iter_layers() for k, v in layer.params.items()}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def storage_layout(path) -> dict:
    """``{dataset path: (byte offset, dtype, layout, filters)}``: where each dataset's values are read from.

    Walked link by link, skipping what a damaged file cannot answer.
    """
    import h5py

    out = {}

    def walk(group, prefix, depth):
        for name in list(group)[:1000]:
            try:
                obj = group[name]
                if isinstance(obj, h5py.Dataset):
                    dcpl = obj.id.get_create_plist()
                    out[prefix + str(name)] = (obj.id.get_offset(), obj.dtype.str, dcpl.get_layout(), dcpl.get_nfilters())
                elif isinstance(obj, h5py.Group) and depth < 8:
                    walk(obj, f"{prefix}{name}/", depth + 1)
            except Exception:  # noqa: BLE001 - a damaged object is left out of the comparison
                continue

    with h5py.File(path, "r") as f:
        walk(f, "", 0)
    return out


def run_case(case: dict, expected: dict) -> dict:
    import weights_import

    out = {"id": case["id"]}
    model = build(case["model"], case["dtype"], seed=1)
    before = snapshot(model)
    measured = _reset_peak()
    rss0 = _status("VmRSS")
    try:
        if case["op"] == "load":
            weights_import.load(case["path"], model)
        elif case["op"] == "inspect":
            info = weights_import.inspect(case["path"])
            weights_import.format_inspection(info)
        elif case["op"] == "read":
            arrays = weights_import.read(case["path"])
            out["read_bytes"] = int(sum(a.nbytes for layer in arrays.values() for a in layer.values()))
        else:
            raise ValueError(f"fuzz_worker: unknown op {case['op']!r}")
    except weights_import.WeightsError as err:
        message = str(err)
        out.update(outcome="weights_error", message=message[:300], one_line="\n" not in message and bool(message.strip()),
                   untouched=all(np.array_equal(v, before[k]) for k, v in snapshot(model).items()))
    except BaseException as err:  # noqa: BLE001 - the fuzz records whatever escapes, that is the point
        out.update(outcome="other", message=f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
    else:
        out["outcome"] = "ok"
        if case["op"] == "load":
            after = snapshot(model)
            out["equal"] = all(np.array_equal(after[k], expected[k]) for k in expected)
            if not out["equal"]:
                # values that differ though no stored value changed: did the metadata move where they are read from?
                mutant, base = storage_layout(case["path"]), storage_layout(case["base"])
                out["moved"] = [k for k in mutant if k in base and mutant[k] != base[k]]
            out["finite_shapes"] = all(np.isfinite(v).all() and v.shape == before[k].shape for k, v in after.items())
    out["rss_growth"] = max(0, _status("VmHWM") - rss0) if measured else None
    out["weights_bytes"] = int(sum(v.nbytes for v in before.values()))
    return out


def main() -> int:
    import weights_import

    limit_mb, timeout = float(sys.argv[1]), int(sys.argv[2])
    cases = json.loads(sys.stdin.read())
    expected = {}
    for case in cases:  # the unmutated loads, before the limits: they also warm up every code path
        key = (case["base"], case["model"], case["dtype"])
        if key not in expected:
            model = build(case["model"], case["dtype"], seed=1)
            weights_import.load(case["base"], model)
            expected[key] = snapshot(model)
    vm = _status("VmSize")
    resource.setrlimit(resource.RLIMIT_AS, (vm + int(limit_mb * 2**20), resource.RLIM_INFINITY))
    for case in cases:
        print(json.dumps({"start": case["id"]}), flush=True)
        signal.alarm(timeout)
        result = run_case(case, expected[(case["base"], case["model"], case["dtype"])])
        signal.alarm(0)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
