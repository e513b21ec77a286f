"""``rlrp-ref demo``: R-LRP beside classical rules on bundled samples, in one command, offline.

For each bundled dataset (shapes: the first test image of each class; digits:
the first test images of the digits in :data:`DIGITS_SHOWN`) it loads the simple
CNN with its shipped weights, explains the predicted class with every method of
:data:`METHODS`, and writes into ``--out`` (default ``./rlrp-demo``):

- ``<dataset>_grid.png``: rows are samples (true class, predicted class and
  its logit), columns the input and one heatmap per method;
- ``<dataset>_<i>_<method>.png``: each heatmap alone (``bwr`` centred at zero,
  enlarged to at least 128 pixels).

It prints, per sample and method, the relevance's sum and L1 mass against the
logit, the R-LRP ledger of the first shapes sample, and the check of the
conservation-up-to-scale law: with R-LRP, ``|R|_1 == |f_c(x)|`` at every layer
boundary of every sample. Everything runs in float64.
"""

from __future__ import annotations

import numpy as np

from ..outputs import check_out_dir, staged_dir
from . import _common

#: (method, label for the figure); ``epsilon_gamma_box`` gets the input bounds [0, 1].
METHODS = (
    ("rlrp", "R-LRP"),
    ("epsilon_plus_flat", "EpsilonPlusFlat"),
    ("epsilon_gamma_box", "EpsilonGammaBox"),
    ("gradient_x_input", "gradient x input"),
)
DIGITS_SHOWN = (0, 3, 5, 8)


def register(subparsers) -> None:
    """Add the ``demo`` subcommand to the ``rlrp-ref`` parser."""
    p = subparsers.add_parser(
        "demo",
        help="explain bundled samples with R-LRP and classical rules; write PNGs to ./rlrp-demo",
        description="Explain a few bundled samples (shapes and digits) with R-LRP, two classical LRP composites "
        "and gradient x input; write a PNG grid and one PNG per heatmap, and print the ledger summary.",
    )
    p.add_argument("--out", default="rlrp-demo", help="output folder (default: ./rlrp-demo)")
    p.set_defaults(func=run)


def _samples(dataset: str):
    """``(x, labels)`` of the demo samples of a bundled dataset (float64)."""
    from ..data import digits, shapes

    if dataset == "shapes":
        x, labels, _ = shapes.load_split("test", n=64, dtype=np.float64)
        wanted = np.arange(shapes.NUM_CLASSES)
    else:
        x, labels = digits.load_split("test", dtype=np.float64)
        wanted = np.asarray(DIGITS_SHOWN)
    first = np.argmax(labels[None, :] == wanted[:, None], axis=1)  # first index of each wanted class
    return x[first], labels[first]


def _explain_all(loaded, x):
    from ..explain import explain

    return {method: explain(loaded.model, x, method=method, **loaded.method_params(method)) for method, _ in METHODS}


def _report(dataset, loaded, labels, results) -> list[str]:
    names = loaded.class_names
    first = results["rlrp"]
    lines = [f"{dataset}: simple CNN, {len(labels)} test samples"]
    header = f"  {'sample':<8}{'true':<10}{'predicted':<11}{'logit':>9}   " + "  ".join(f"{m:>26}" for m, _ in METHODS)
    lines += [header, " " * 43 + "  ".join(f"{'sum R':>12} {'|R|_1':>13}" for _ in METHODS)]
    for i, label in enumerate(labels):
        c = int(first.target[i])
        cells = "  ".join(f"{float(r.relevance[i].sum()):>+12.4g} {float(np.abs(r.relevance[i]).sum()):>13.6g}" for r in results.values())
        lines.append(f"  {i:<8}{names[label]:<10}{names[c]:<11}{first.logits[i, c]:>+9.4g}   {cells}")
    return lines


def _law_check(results_by_dataset) -> str:
    """L3 over every sample: the largest relative gap between ``|R|_1`` at any top-level boundary and ``|f_c(x)|``."""
    gaps, rows, samples = [], 0, 0
    for result in results_by_dataset:
        rlrp = result["rlrp"]
        idx = np.arange(len(rlrp.target))
        logit = np.abs(rlrp.logits[idx, rlrp.target])
        top = [r for r in rlrp.ledger if not r.path]
        masses = np.stack([r.l1_out for r in top] + [r.l1_in for r in top])
        gaps.append(np.max(np.abs(masses - logit) / logit))
        rows, samples = rows + len(top), samples + len(idx)
    return (f"R-LRP conservation up to scale: |R|_1 == |f_c(x)| at every layer boundary of all {samples} samples "
            f"(largest relative gap {max(gaps):.1e}); classical rules and gradient x input do not keep it (see |R|_1 above).")


def run(args) -> int:
    """Run the demo: explain the bundled samples, write the PNGs (staged), print the report; exit code 0."""
    from ..heatmap import render, save_grid, save_png
    from ..models.simple_cnn import DATASET_CONFIGS

    out = check_out_dir(args.out)
    prepared = []
    for dataset in DATASET_CONFIGS:
        loaded = _common.load_model("simple_cnn", dataset, dtype="float64")
        x, labels = _samples(dataset)
        prepared.append((dataset, loaded, x, labels, _explain_all(loaded, x)))

    files = 0
    with staged_dir(out) as tmp:
        for dataset, loaded, x, labels, results in prepared:
            rlrp = results["rlrp"]
            titles = [
                f"true {loaded.class_names[label]}\npred {loaded.class_names[c]} ({rlrp.logits[i, c]:.3g})"
                for i, (label, c) in enumerate(zip(labels, rlrp.target))
            ]
            heatmaps = {label: results[method].relevance for method, label in METHODS}
            save_grid(tmp / f"{dataset}_grid.png", x, heatmaps, titles=titles)
            files += 1
            for i in range(len(x)):
                for method, _ in METHODS:
                    save_png(tmp / f"{dataset}_{i}_{method}.png", _common.enlarge(render(results[method].relevance[i])))
                    files += 1

    for dataset, loaded, x, labels, results in prepared:
        print("\n".join(_report(dataset, loaded, labels, results)))
        print()
    dataset, loaded, x, labels, results = prepared[0]
    rlrp = results["rlrp"]
    print(f"R-LRP ledger, {dataset} sample 0 (class {loaded.class_names[int(rlrp.target[0])]}, logit {rlrp.logits[0, rlrp.target[0]]:+.6g}):")
    from ..explain import explain

    one = explain(loaded.model, x[:1], method="rlrp", keep_layers=True)
    print(_common.format_table(_common.ledger_rows(one)))
    print()
    print(_law_check([r for *_, r in prepared]))
    print(f"wrote {files} PNG files to {out}/ ({', '.join(f'{d}_grid.png' for d, *_ in prepared)} and one per heatmap)")
    return 0
