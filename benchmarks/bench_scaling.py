"""How explanation time grows with input side and batch size: it should be linear in pixels x batch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_scaling.py
    python benchmarks/bench_scaling.py --sides 112,224 --batches 1,2 --rounds 1   # quick

Two sweeps on one model (default ResNet50, torchvision variant, random weights,
float32; its global average pooling accepts any side that is a multiple of 32):

- input side 112 ... 448 at batch 1;
- batch 1 ... 16 at side 224.

For each point: ``model.forward`` and ``rlrp_ref.explain(..., method=...)``
(default ``rlrp``), the minimum over ``--rounds`` round-robin passes over all
points after one warm-up run each. The cost
per pixel (``seconds / (side^2 * batch)``) is compared with the cost per pixel
at side 224, batch 1; points more than ``--tolerance`` (default 15%) away are
reported as not linear, with the direction. Writes a PNG (matplotlib, Agg) with
time against pixels x batch for both sweeps and a straight line through the
reference point, and a JSON file with every time. Timings only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# OpenBLAS reads its idle-spin timeout once, when NumPy loads it, and importing rlrp_ref loads NumPy: so the
# script sets it for itself first (rlrp_ref/runtime.py says why); runtime.tune() in main() makes the glibc setting
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

import numpy as np  # noqa: E402


def time_points(model, points: list[dict], methods, rounds: int, dtype) -> None:
    """Fill each point with the minimum time of each method over ``rounds`` round-robin passes.

    Every point is run once per round, in turn, after one warm-up run each: a burst
    of load from other processes then spoils one run of several points, not every
    run of one point.
    """
    import rlrp_ref

    def runner(point, method):
        x = np.random.default_rng(1).standard_normal((point["batch"], point["side"], point["side"], 3)).astype(dtype)
        if method == "forward":
            return lambda: model.forward(x)
        return lambda: rlrp_ref.explain(model, x, method=method)

    for point in points:
        for method in methods:
            runner(point, method)()
            point[method] = float("inf")
    for _ in range(rounds):
        for point in points:
            for method in methods:
                fn = runner(point, method)
                start = time.perf_counter()
                fn()
                point[method] = min(point[method], time.perf_counter() - start)


def linearity(points: list[dict], reference: dict, method: str, tolerance: float) -> list[str]:
    """Sentences for the points whose cost per pixel differs from the reference's by more than ``tolerance``."""
    ref_cost = reference[method] / (reference["side"] ** 2 * reference["batch"])
    notes = []
    for p in points:
        cost = p[method] / (p["side"] ** 2 * p["batch"])
        ratio = cost / ref_cost
        if abs(ratio - 1) > tolerance:
            trend = "more" if ratio > 1 else "less"
            notes.append(f"{method}: side {p['side']}, batch {p['batch']}: {ratio:.2f}x the per-pixel cost of side "
                         f"{reference['side']}, batch {reference['batch']} ({trend} than linear)")
    return notes


def plot(sweeps: dict, reference: dict, methods, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (name, points) in zip(axes, sweeps.items()):
        pixels = np.array([p["side"] ** 2 * p["batch"] for p in points], dtype=float)
        for method, marker in zip(methods, "os^vD"):
            times = np.array([p[method] for p in points])
            line = ax.plot(pixels / 1e6, times, marker=marker, label=method)[0]
            ref_cost = reference[method] / (reference["side"] ** 2 * reference["batch"])
            grid = np.linspace(0, pixels.max(), 50)
            ax.plot(grid / 1e6, grid * ref_cost, linestyle=":", color=line.get_color(), linewidth=1)
        for p, px in zip(points, pixels):
            ax.annotate(str(p["side"] if name == "side" else p["batch"]), (px / 1e6, p[methods[-1]]),
                        textcoords="offset points", xytext=(3, 4), fontsize=7)
        ax.set_xlabel("pixels x batch (millions)")
        ax.set_ylabel("seconds")
        ax.set_title(f"{'input side (batch 1)' if name == 'side' else 'batch size (side 224)'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title + " (dotted: linear through side 224, batch 1)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    csv = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--variant", default="torchvision")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--methods", type=csv, default=["forward", "rlrp"])
    p.add_argument("--sides", type=lambda s: [int(v) for v in csv(s)], default=[112, 160, 224, 288, 352, 448])
    p.add_argument("--batches", type=lambda s: [int(v) for v in csv(s)], default=[1, 2, 4, 8, 16])
    p.add_argument("--rounds", type=int, default=3, help="timed round-robin passes over all points; the minimum is kept")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--tolerance", type=float, default=0.15)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_scaling"),
                   help="output stem: writes STEM.json and STEM.png")
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_info, threadpool_limits

    from rlrp_ref import kernels, models, runtime

    tuned = runtime.tune()
    threadpool_limits(args.threads)
    kernels.set_num_threads(args.threads)  # the element-wise passes use as many threads as BLAS
    for lib in threadpool_info():
        print(f"BLAS: {lib['internal_api']} {lib['version']}, kernel {lib.get('architecture')}, {lib['num_threads']} threads")
    knobs = ", ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_THREAD_TIMEOUT")
                      if k in os.environ)
    print(f"env: {knobs or 'OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE and OPENBLAS_THREAD_TIMEOUT not set'}; "
          f"glibc keeps freed memory (rlrp_ref.runtime): {'yes' if tuned.keeps_freed_memory else 'no'}")
    model = models.build(args.model, variant=args.variant, weights="random", dtype=args.dtype)

    reference = {"side": 224, "batch": 1}
    sweeps = {"side": [reference if side == 224 else {"side": side, "batch": 1} for side in args.sides],
              "batch": [reference if batch == 1 else {"side": 224, "batch": batch} for batch in args.batches]}
    points = [reference] + [p for sweep in sweeps.values() for p in sweep if p is not reference]
    time_points(model, points, args.methods, args.rounds, args.dtype)
    for name, sweep in sweeps.items():
        for point in sweep:
            print(f"side {point['side']:4d} batch {point['batch']:2d}: " + ", ".join(f"{m} {point[m]:.3f} s" for m in args.methods))

    notes = [n for m in args.methods for sweep in sweeps.values() for n in linearity(sweep, reference, m, args.tolerance)]
    print("\nlinear in pixels x batch within {:.0%}".format(args.tolerance) if not notes else "\nnot linear:")
    for n in notes:
        print("  " + n)
    title = f"{args.model} ({args.variant}), {args.dtype}, {args.threads} threads"
    plot(sweeps, reference, args.methods, args.out.with_suffix(".png"), title)
    args.out.with_suffix(".json").write_text(json.dumps({"title": title, "sweeps": sweeps, "nonlinear": notes}, indent=1))
    print(f"wrote {args.out.with_suffix('.png')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
