"""``rlrp-ref evaluate``: every metric of :mod:`rlrp_ref.evaluate`, per method, on a bundled model.

Writes into ``--out`` (all or nothing, through :func:`rlrp_ref.outputs.staged_dir`):

- ``metrics.md``: the tables (faithfulness and localization; robustness;
  randomization per layer);
- ``metrics.json``: the same numbers, the settings, and the mean curves;
- ``perturbation_curves.png`` and ``randomization.png`` (matplotlib, Agg),
  unless ``--no-plots``.

``--metrics`` picks the metric families (perturbation, localization,
randomization, noise; default all); numerical robustness comes free with the
first explanation and is always reported.

The images are the first ``--n`` of the dataset's test split; each is
explained for its true class (the class the ground-truth mask belongs to).
The model runs in float64, the reference mode. Every random draw comes from
``--seed``. A "random" heatmap (i.i.d. normal) is scored as a reference row
for the perturbation and localization metrics.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..outputs import check_out_dir, staged_dir

DEFAULT_METHODS = "rlrp,epsilon,epsilon_plus_flat,epsilon_gamma_box,gradient_x_input,integrated_gradients"
MODELS = ("shapes", "digits")
#: Metric families ``--metrics`` can choose from (numerical robustness is always measured: it is free).
FAMILIES = ("perturbation", "localization", "randomization", "noise")
RANDOM_REFERENCE = "random (reference)"


def register(subparsers) -> None:
    """Add the ``evaluate`` subcommand to the ``rlrp-ref`` parser."""
    p = subparsers.add_parser(
        "evaluate",
        help="measure explanation methods side by side (perturbation, localization, randomization, robustness)",
        description="Measure explanation methods on a bundled model: region perturbation (AOPC), "
        "localization against masks (shapes only), cascading parameter randomization, "
        "max-sensitivity, local Lipschitz estimate and numerical robustness.",
    )
    p.add_argument("--model", required=True, help="bundled model: shapes or digits")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated methods (default: {DEFAULT_METHODS})")
    p.add_argument("--n", type=int, default=200, help="number of test images (default: 200)")
    p.add_argument("--out", required=True, help="output folder (created; files of the same name are replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument("--patch", type=int, default=None, help="perturbation patch size in pixels (default: 2 for shapes, 1 for digits)")
    p.add_argument("--perturbation", default="zero", help="what a removed patch becomes: zero, mean, uniform, blur (default: zero)")
    p.add_argument("--steps", type=int, default=32, help="points of each perturbation curve after the start (default: 32)")
    p.add_argument("--fraction", type=float, default=1.0, help="share of patches perturbed at the last step (default: 1)")
    p.add_argument("--radius", type=float, default=0.05, help="input-noise radius r (L-infinity) for max-sensitivity and Lipschitz (default: 0.05)")
    p.add_argument("--noise-samples", type=int, default=10, help="Monte Carlo samples for max-sensitivity and Lipschitz (default: 10)")
    p.add_argument("--metrics", default=",".join(FAMILIES),
                   help=f"comma-separated metric families (default: all: {','.join(FAMILIES)}); numerical robustness is always measured")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------


def bundled_model(name: str):
    """The simple CNN trained on bundled dataset ``name``, with its shipped weights, in float64."""
    from ..models.simple_cnn import load_bundled

    if name not in MODELS:
        raise UserError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return load_bundled(name, dtype="float64")


def load_images(name: str, n: int):
    """``(x, labels, masks or None)``: the first ``n`` test images of bundled dataset ``name``, float64."""
    from ..data import digits, shapes

    if name == "shapes":
        if n > shapes.SPLIT_SIZES["test"]:  # load_split would generate past the split's end
            raise UserError(f"--n {n}: the shapes test split has {shapes.SPLIT_SIZES['test']} images")
        return shapes.load_split("test", n=n, dtype=np.float64)
    x, labels = digits.load_split("test", dtype=np.float64)
    if n > len(x):
        raise UserError(f"--n {n}: the digits test split has {len(x)} images")
    return x[:n], labels[:n], None


def known_methods() -> tuple[str, ...]:
    """Every method :func:`rlrp_ref.explain` accepts."""
    from ..explain import METHODS

    return tuple(METHODS)


#: Methods that need the input bounds: both bundled datasets lie in [0, 1].
INPUT_BOUNDS = {"low": 0.0, "high": 1.0}
BOUNDED_METHODS = ("epsilon_gamma_box", "zbox")


def parse_methods(text: str) -> list[str]:
    """The methods of ``--methods`` (comma-separated), each checked against :func:`known_methods`."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods: expected at least one method")
    known = known_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}: expected one of {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise UserError(f"--methods: a method is listed twice in {text!r}")
    return methods


def check_args(args) -> None:
    """Reject bad arguments before anything is computed (a :class:`UserError` naming the flag)."""
    from ..evaluate.perturbation import KINDS

    if args.model not in MODELS:
        raise UserError(f"unknown model {args.model!r}: expected one of {', '.join(MODELS)}")
    if args.perturbation not in KINDS:
        raise UserError(f"unknown perturbation {args.perturbation!r}: expected one of {', '.join(KINDS)}")
    for flag, value, low in (("--n", args.n, 2), ("--steps", args.steps, 1), ("--noise-samples", args.noise_samples, 1)):
        if value < low:
            raise UserError(f"{flag}: expected >= {low}, found {value}")
    if args.patch is not None and args.patch < 1:
        raise UserError(f"--patch: expected >= 1, found {args.patch}")
    if not 0 < args.fraction <= 1:
        raise UserError(f"--fraction: expected 0 < fraction <= 1, found {args.fraction}")
    if not args.radius > 0:
        raise UserError(f"--radius: expected > 0, found {args.radius}")
    parse_families(args.metrics)


def parse_families(text: str) -> tuple[str, ...]:
    """The metric families of ``--metrics``, in the canonical order of :data:`FAMILIES`."""
    families = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise UserError(f"unknown metric family {unknown[0]!r}: expected some of {', '.join(FAMILIES)}")
    return tuple(f for f in FAMILIES if f in families)  # canonical order, duplicates dropped


# ---------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------


class _Progress:
    """tqdm on stderr when installed; silent otherwise."""

    def __init__(self, total: int, desc: str):
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, unit="step", dynamic_ncols=True)

    def set(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def __call__(self, k: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def evaluate_methods(model, x, labels, masks, methods, *, explain_model_for, families=FAMILIES, seed=0, patch=1,
                     kind="zero", steps=32, fraction=1.0, radius=0.05, noise_samples=10, progress=None) -> dict:
    """Run the metric ``families`` (numerical robustness always) for every method; return JSON-ready results.

    ``explain_model_for(method) -> explain_model(model, x, target) -> (relevance, logits)``.
    """
    from .. import evaluate as ev
    from ..evaluate.randomization import parameter_layers

    progress = progress or (lambda k=1: None)
    target = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(model.forward(x), dtype=np.float64)
    perturb = dict(patch=patch, kind=kind, steps=steps, fraction=fraction, seed=seed)
    localize = "localization" in families and masks is not None
    results = {}

    def perturbation_and_localization(relevance):
        entry = {}
        if "perturbation" in families:
            curves = ev.perturbation_curves(model.forward, x, relevance, target, **perturb)
            entry.update(
                aopc_morf=curves["aopc_morf"],
                aopc_lerf=curves["aopc_lerf"],
                abpc=curves["abpc"],
                curve_fraction=curves["morf"].fraction.tolist(),
                curve_morf=curves["morf"].mean_curve.tolist(),
                curve_lerf=curves["lerf"].mean_curve.tolist(),
            )
        if localize:
            mass = ev.relevance_mass_accuracy(relevance, masks)
            rank = ev.relevance_rank_accuracy(relevance, masks, seed=seed)
            entry.update(mass_accuracy=_nanmean(mass), rank_accuracy=_nanmean(rank),
                         mass_accuracy_undefined=int(np.isnan(mass).sum()))
        progress(2)
        return entry

    for method in methods:
        explain_model = explain_model_for(method)
        if hasattr(progress, "set"):
            progress.set(method)
        relevance, method_logits = explain_model(model, x, target)
        progress()
        entry = {"numerical": ev.numerical_robustness(relevance, ev.target_scores(method_logits, target))}
        entry.update(perturbation_and_localization(np.nan_to_num(relevance, nan=0.0, posinf=0.0, neginf=0.0)))

        def relevance_only(model_, x_, target_):
            return explain_model(model_, x_, target_)[0]

        if "randomization" in families:
            randomization = ev.cascading_randomization(relevance_only, model, x, target, seed=seed, original=relevance,
                                                       progress=progress)
            entry["randomization"] = {
                "layers": randomization.layers,
                "spearman": randomization.mean().tolist(),
                "spearman_abs": randomization.mean(absolute=True).tolist(),
                "nonfinite_after": randomization.nonfinite_steps,
                # how much of the heatmap is the input itself (what randomizing weights cannot remove)
                "input_spearman_abs": _nanmean(ev.spearman_rows(np.abs(ev.spatial_map(relevance)), np.abs(ev.spatial_map(x)))),
            }
        if "noise" in families:
            noise = ev.input_noise_robustness(ev.bind_model(relevance_only, model), x, target, radius=radius,
                                              n_samples=noise_samples, seed=seed, original=relevance, progress=progress)
            entry["noise"] = {
                "max_sensitivity": _nanmean(noise.sensitivity),
                "max_sensitivity_relative": _nanmean(noise.relative_sensitivity),
                "lipschitz": _nanmean(noise.lipschitz),
                "infinite_count": int(np.sum(~np.isfinite(noise.relative_sensitivity))),
            }
        results[method] = entry

    if "perturbation" in families or localize:
        reference = np.random.default_rng(seed).normal(size=x.shape)
        results[RANDOM_REFERENCE] = perturbation_and_localization(reference)
    return {
        "accuracy": float((logits.argmax(axis=1) == target).mean()),
        "parameter_layers": [layer.name for layer in parameter_layers(model)][::-1],
        "methods": results,
    }


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------


def _fmt(value, digits=3, scientific=True) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    if math.isnan(value):
        return "undefined"
    if math.isinf(value):
        return "inf"
    if scientific and value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def markdown_report(report: dict) -> str:
    """``metrics.md``: the tables of the families that ran (arrows say which direction is better)."""
    s = report["settings"]
    methods = report["methods"]
    families = s["metrics"]
    has_masks = report["dataset_has_masks"]
    explained = {name: m for name, m in methods.items() if name != RANDOM_REFERENCE}
    described = [f"Model accuracy on these images: {report['accuracy']:.3f}. Target: the true class."]
    if "perturbation" in families:
        described.append(f"Perturbation: `{s['perturbation']}` patches of {s['patch']}x{s['patch']} px, {s['steps']} steps "
                         f"up to {s['fraction']:.0%} of the patches, score = target logit.")
    if "noise" in families:
        described.append(f"Noise: r = {s['radius']} (L-inf), {s['noise_samples']} samples.")
    described.append(f"Seed {s['seed']}. Arrows: which direction is better.")
    lines = [f"# Evaluation: model `{s['model']}`, {s['n']} test images", "", " ".join(described)]

    columns = []
    if "perturbation" in families:
        columns += [("AOPC MoRF ↑", "aopc_morf"), ("AOPC LeRF ↓", "aopc_lerf"), ("ABPC ↑", "abpc")]
    if "localization" in families:
        columns += [("mass accuracy ↑", "mass_accuracy"), ("rank accuracy ↑", "rank_accuracy")]
    if columns:
        lines += ["", "## Faithfulness and localization", "",
                  "| method | " + " | ".join(title for title, _ in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        def cell(m, key):
            if key in ("mass_accuracy", "rank_accuracy") and not has_masks:
                return "n/a (no masks)"
            return _fmt(m.get(key))

        for name, m in methods.items():
            cells = [cell(m, key) for _, key in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if "localization" in families and not has_masks:
            lines += ["", "Localization is not measured: the digits dataset has no ground-truth masks."]

    columns = []
    if "noise" in families:
        columns += [("rel. max-sensitivity ↓", "noise", "max_sensitivity_relative"), ("max-sensitivity ↓", "noise", "max_sensitivity"),
                    ("local Lipschitz ↓", "noise", "lipschitz")]
    columns += [("non-finite share ↓", "numerical", "nonfinite_share"),
                ("max\\|R\\|/\\|logit\\| median", "numerical", "ratio_median"),
                ("max\\|R\\|/\\|logit\\| max", "numerical", "ratio_max"), ("share > 1", "numerical", "ratio_over_1")]
    lines += ["", "## Robustness", "", "| method | " + " | ".join(c[0] for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for name, m in explained.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m[group][key]) for _, group, key in columns) + " |")
    if "noise" in families:
        lines += ["", "Max-sensitivity and the Lipschitz estimate are in each method's own relevance units; "
                  "the relative max-sensitivity (divided by ||R(x)||_2) is the one to compare across methods."]

    if "randomization" in families:
        layers = report["parameter_layers"]
        lines += [
            "",
            "## Cascading parameter randomization",
            "",
            "Mean Spearman rank correlation with the original heatmap after randomizing the layers from the top "
            "down to the named one (signed / absolute maps). Closer to 0 at the bottom is better: the explanation "
            "depends on the learned weights. Last column: Spearman of the intact model's |heatmap| with the "
            "|input| (a heatmap that copies the input keeps that much correlation whatever the weights).",
            "",
            "| method | " + " | ".join(f"→ {name}" for name in layers) + " | \\|R\\| vs \\|input\\| |",
            "|---|" + "---|" * (len(layers) + 1),
        ]
        for name, m in explained.items():
            r = m["randomization"]
            cells = [f"{_fmt(a, 2, False)} / {_fmt(b, 2, False)}" for a, b in zip(r["spearman"], r["spearman_abs"])]
            cells.append(_fmt(r["input_spearman_abs"], 2, False))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, np.integer):
        return int(value)
    return value


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib (pip install 'rlrp-ref[viz]'), or pass --no-plots") from None
    matplotlib.use("Agg")
    return matplotlib


def plot_report(report: dict, folder: Path) -> list[str]:
    """Write the plots of the families that ran; return their file names."""
    _matplotlib()
    import matplotlib.pyplot as plt

    written = []
    families = report["settings"]["metrics"]
    methods = report["methods"]
    # methods can coincide (epsilon and gradient x input on a ReLU network): vary dashes and markers too
    styles = {name: dict(linestyle=("-", "--", "-.", ":")[k % 4], marker="osd^vx<>"[k % 8], markersize=4)
              for k, name in enumerate(m for m in methods if m != RANDOM_REFERENCE)}
    styles[RANDOM_REFERENCE] = dict(color="0.5", linestyle="--")
    if "perturbation" in families:
        written.append(_plot_perturbation(plt, report, styles, folder / "perturbation_curves.png"))
    if "randomization" in families:
        written.append(_plot_randomization(plt, report, styles, folder / "randomization.png"))
    return written


def _plot_perturbation(plt, report, styles, path) -> str:
    methods = report["methods"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, order in zip(axes, ("morf", "lerf")):
        for name, m in methods.items():
            ax.plot(m["curve_fraction"], m[f"curve_{order}"], label=name, **styles[name])
        ax.set_title(f"{order.upper()} ({'most' if order == 'morf' else 'least'} relevant first)")
        ax.set_xlabel("share of patches perturbed")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean target logit")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Region perturbation, model {report['settings']['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _plot_randomization(plt, report, styles, path) -> str:
    methods = report["methods"]
    layers = report["parameter_layers"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in zip(axes, ("spearman", "spearman_abs"), ("signed maps", "absolute maps")):
        for name, m in methods.items():
            if "randomization" in m:
                ax.plot(range(len(layers)), m["randomization"][key], label=name, **styles[name])
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=30, ha="right")
        ax.set_title(f"Spearman with the original, {title}")
        ax.set_xlabel("randomized from the top down to")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Spearman rank correlation")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Cascading parameter randomization, model {report['settings']['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------


def _explain_model_for(method: str):
    from ..explain import explain

    params = dict(INPUT_BOUNDS) if method in BOUNDED_METHODS else {}

    def explain_model(model, x, target):
        explanation = explain(model, x, target=target, method=method, **params)
        return np.asarray(explanation.relevance), np.asarray(explanation.logits)

    return explain_model


def run(args) -> int:
    """Run ``rlrp-ref evaluate``: check, measure, then write every output file at once."""
    check_args(args)
    methods = parse_methods(args.methods)
    out = check_out_dir(args.out)  # before the long run, not after it
    model = bundled_model(args.model)
    x, labels, masks = load_images(args.model, args.n)
    patch = args.patch if args.patch is not None else (2 if args.model == "shapes" else 1)
    families = parse_families(args.metrics)
    if not args.no_plots:
        _matplotlib()  # fail before the long run, not after it
    layers = [layer for layer in model.iter_layers() if layer.params]
    per_method = 3 + len(layers) * ("randomization" in families) + args.noise_samples * ("noise" in families)
    total = len(methods) * per_method + 2
    progress = _Progress(total, f"evaluate {args.model}")
    try:
        results = evaluate_methods(
            model, x, labels, masks, methods, explain_model_for=_explain_model_for, families=families, seed=args.seed, patch=patch,
            kind=args.perturbation, steps=args.steps, fraction=args.fraction, radius=args.radius,
            noise_samples=args.noise_samples, progress=progress,
        )
    finally:
        progress.close()
    settings = {
        "model": args.model, "n": int(len(x)), "methods": methods, "metrics": list(families), "seed": args.seed, "patch": patch,
        "perturbation": args.perturbation, "steps": args.steps, "fraction": args.fraction,
        "radius": args.radius, "noise_samples": args.noise_samples, "score": "logit", "target": "true class",
        "dtype": "float64",
    }
    report = {"settings": settings, "dataset_has_masks": masks is not None, **results}
    with staged_dir(out) as folder:
        (folder / "metrics.json").write_text(json.dumps(_json_safe(report), indent=2) + "\n", encoding="utf-8")
        (folder / "metrics.md").write_text(markdown_report(report), encoding="utf-8")
        plots = [] if args.no_plots else plot_report(report, folder)
    print(f"wrote {out / 'metrics.md'}, " + ", ".join(["metrics.json"] + plots))
    return 0
