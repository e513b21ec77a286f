"""Numerical robustness of each method on VGG16 and ResNet50 with random weights.

No ImageNet weights are used, so nothing here says anything about how good a
heatmap is on ImageNet; it measures only the arithmetic: does the relevance
stay finite, and how large can one input relevance get against the start?

Setup (all seeded): ``models.build(arch, weights="random", seed=0)`` (Keras
variant: He-normal kernels, zero biases, identity BatchNorm), inputs are
uniform random RGB images in ``0..255`` put through Keras "caffe"
preprocessing, float32 (the fast mode a user runs these networks in) unless
``--dtype float64``. Two starts per image:

- ``logit``: the default start ``R^(L) = f_c(x) e_c`` on the top class ``c``;
- ``one-hot``: the explicit start ``e_c`` on the class whose logit is closest
  to 0, the case RLRP_SPEC.md names as where classical LRP really divides by
  a small value. Relevance methods only: the gradient methods always seed
  their backward pass with ``e_c``, so this start gives them the same
  relevance as the ``logit`` rows (whose reference ``|f_c(x)|`` is the fair one
  for them: with zero biases their relevance sums to ``f_c(x)``).

Reported per start and method (:func:`rlrp_ref.evaluate.numerical_robustness`):
the share of images with non-finite relevance and the blow-up ratio
``max_i |R_i| / ||R^(L)||_1`` (median, max, share above 1, R-LRP's bound).
``epsilon_gamma_box`` gets the caffe input bounds per channel.

Run: ``python benchmarks/eval_numerical_robustness.py [--n 4] [--models vgg16,resnet50]``;
it prints a markdown table (and writes it as JSON with ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from rlrp_ref import runtime
from rlrp_ref.attribution import GRADIENT_METHODS
from rlrp_ref.evaluate import numerical_robustness
from rlrp_ref.explain import explain
from rlrp_ref.models import build
from rlrp_ref.preprocess import keras_caffe

METHODS = "rlrp,epsilon,epsilon_plus_flat,epsilon_gamma_box,gradient_x_input,integrated_gradients"


def caffe_bounds(dtype):
    """Per-channel ``(low, high)`` of caffe-preprocessed images (pixel values 0 and 255)."""
    low = keras_caffe(np.zeros((1, 1, 1, 3), np.uint8), dtype=dtype).reshape(3)
    high = keras_caffe(np.full((1, 1, 1, 3), 255, np.uint8), dtype=dtype).reshape(3)
    return low, high


def starts(logits):
    """``{"logit": int targets, "one-hot": float start}`` for a batch of logits."""
    top = logits.argmax(axis=1)
    closest = np.abs(logits).argmin(axis=1)
    onehot = np.zeros_like(logits)
    onehot[np.arange(len(logits)), closest] = 1.0
    return {"logit": top, "one-hot": onehot}, closest


def run(arch: str, methods, n: int, dtype: str, seed: int, ig_steps: int, log) -> list[dict]:
    model = build(arch, weights="random", seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    x = keras_caffe(rng.integers(0, 256, size=(n, 224, 224, 3)).astype(np.uint8), dtype=dtype)
    logits = np.asarray(model.forward(x), dtype=np.float64)
    targets, closest = starts(logits)
    low, high = caffe_bounds(dtype)
    rows = []
    for start_name, target in targets.items():
        if start_name == "logit":
            reference = logits[np.arange(n), target]
        else:
            reference = np.ones(n)
        for method in methods:
            if start_name == "one-hot" and method in GRADIENT_METHODS:
                continue
            params = {"epsilon_gamma_box": dict(low=low, high=high), "integrated_gradients": dict(steps=ig_steps)}.get(method, {})
            t0 = time.perf_counter()
            relevance = explain(model, x, target=target.astype(dtype) if target.dtype.kind == "f" else target,
                                method=method, **params).relevance
            seconds = time.perf_counter() - t0
            summary = numerical_robustness(relevance, reference)
            summary.update(model=arch, start=start_name, method=method, dtype=dtype, seconds_per_image=seconds / n,
                           abs_reference_median=float(np.median(np.abs(reference))))
            rows.append(summary)
            log(f"{arch} {start_name:7s} {method:22s} {seconds / n:6.1f} s/image  ratio max {summary['ratio_max']:.3g}")
    log(f"{arch}: top logit median {np.median(logits.max(axis=1)):.4g}, |closest logit| median "
        f"{np.median(np.abs(logits[np.arange(n), closest])):.3g}")
    return rows


def fmt(v) -> str:
    v = float(v)
    if not np.isfinite(v):
        return "inf" if v > 0 else ("nan" if np.isnan(v) else "-inf")
    return f"{v:.3g}"


def table(rows) -> str:
    lines = [
        "| model | start | method | images | non-finite share | max\\|R\\|/\\|\\|R^(L)\\|\\|_1 median | max | share > 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['start']} | {r['method']} | {r['n']} | {fmt(r['nonfinite_share'])} | "
                     f"{fmt(r['ratio_median'])} | {fmt(r['ratio_max'])} | {fmt(r['ratio_over_1'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vgg16,resnet50")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--n", type=int, default=4, help="images per model (default: 4)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ig-steps", type=int, default=20, help="integrated gradients steps (default: 20)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    runtime.tune()  # glibc keeps freed memory, as in the CLI (rlrp_ref/runtime.py)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    rows = []
    for arch in args.models.split(","):
        rows += run(arch, args.methods.split(","), args.n, args.dtype, args.seed, args.ig_steps, log)
    print(table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
