"""``rlrp-ref trace``: the teaching view, one explanation's ledger as a table, layer by layer.

Without IMAGE it explains a sample of the bundled test split (``--sample``) with
the simple CNN trained on it (``--weights shapes`` or ``digits``). Each row is
one backward step, from the logits down to the input:

- ``layer``, ``kind``, ``rule``, ``output shape`` (the shape of the relevance the layer receives);
- ``sum(Rt)``: the sum of the contributions ``Rt_i = a_i (W R)_i`` (kernel
  ``(in, out)``) before R-LRP's rescale; for max pooling (rule ``rlrp_select``,
  a selection) the sum of what went to the winners; for other steps, the sum of
  the relevance passed down;
- ``law rhs``: the right side of the layer law, ``sum_j (z_j - b_j) R_j``
  (``sum_j R_j`` for a selection); for R-LRP it equals ``sum(Rt)`` (docs/spec.md, L2);
- ``scale``: ``kappa = ||R_out||_1 / ||Rt||_1`` (1 for steps that do not rescale);
- ``|R|_1 out`` and ``|R|_1 in``: the L1 mass arriving at the layer's output and
  leaving at its input. For R-LRP both equal ``|f_c(x)|`` on every top-level
  row (L3, conservation up to scale); classical rules let it drift.

Nothing is written to disk.
"""

from __future__ import annotations

import numpy as np

from ..ledger import START_LABELS
from . import _common


def register(subparsers) -> None:
    """Add the ``trace`` subcommand to the ``rlrp-ref`` parser."""
    p = subparsers.add_parser(
        "trace",
        help="print the relevance ledger of one explanation, layer by layer",
        description="Explain one input and print the ledger per layer: output shape, sum of contributions, "
        "the conservation law's right side, the R-LRP scale and the L1 mass in and out.",
    )
    p.add_argument("image", nargs="?", metavar="IMAGE", help="image file (default: a bundled test sample)")
    _common.add_model_arguments(p, default_weights="shapes")
    _common.add_image_arguments(p)
    p.add_argument("--sample", type=int, default=0, help="index into the bundled test split when no IMAGE is given (default: 0)")
    p.set_defaults(func=run)


def bundled_sample(dataset: str, index: int, dtype) -> tuple[np.ndarray, int]:
    """``(x (1, H, W, 1), true label)`` of test image ``index`` of a bundled dataset."""
    from ..data import digits, shapes

    if dataset == "shapes":
        n = shapes.SPLIT_SIZES["test"]
        if not 0 <= index < n:
            raise ValueError(f"--sample {index} is out of range: the shapes test split has {n} images (0..{n - 1})")
        x, labels, _ = shapes.load_split("test", n=index + 1, dtype=dtype)
    else:
        x, labels = digits.load_split("test", dtype=dtype)
        if not 0 <= index < len(x):
            raise ValueError(f"--sample {index} is out of range: the digits test split has {len(x)} images (0..{len(x) - 1})")
    return x[index : index + 1], int(labels[index])


def run(args) -> int:
    """Explain one input and print the ledger table and the conservation check; exit code 0."""
    from ..preprocess import load_image

    _common.check_arch(args.arch)
    method = _common.check_method(args.method)
    target = _common.parse_target(args.target)
    loaded = _common.load_model(args.arch, args.weights, args.variant, args.size, args.dtype)
    _common.check_target(target, loaded.num_classes)
    if args.image is not None:
        x, _ = loaded.prepare(load_image(args.image, args.max_pixels))
        source, label = args.image, None
    else:
        if loaded.dataset is None:
            raise ValueError(f"trace: give an IMAGE for --arch {args.arch} --weights {args.weights} (bundled samples exist only for --arch simple_cnn --weights shapes or digits)")
        x, label = bundled_sample(loaded.dataset, args.sample, loaded.dtype)
        source = f"bundled {loaded.dataset} test sample {args.sample} (true class {loaded.class_names[label]})"
    result = _common.explain_checked(loaded, x, target=target, method=method, keep_layers=True, **loaded.method_params(method))
    logits = result.logits[0]
    print(f"model: {loaded.arch} ({loaded.variant}), weights {args.weights}, {loaded.dtype.name}")
    print(f"input: {source}, shape {x.shape[1:]}")
    print("top classes:")
    print("\n".join(_common.top_k_lines(logits, loaded.class_names)))
    explained = int(result.target[0])
    print(f"explained: {loaded.class_names[explained]} ({explained}), logit f_c(x) = {logits[explained]:+.6g}, method {method}")
    if not result.ledger:
        print(f"(method {method} is a gradient method: it has no relevance ledger)")
        return 0
    print(f"start: R = {START_LABELS.get(result.ledger.start, result.ledger.start)}")
    print()
    print(_common.format_table(_common.ledger_rows(result)))
    print()
    summary = _common.conservation_summary(result)
    if summary:
        print(summary)
    print(f"input relevance: sum {float(result.relevance.sum()):+.6g}, |R|_1 {float(np.abs(result.relevance).sum()):.6g}, "
          f"max |R_i| {float(np.abs(result.relevance).max()):.6g}")
    return 0
