"""``rlrp-ref explain IMAGE...``: explain a model's prediction on image files and write heatmap PNGs.

For each image: read it (JPEG, PNG, anything Pillow decodes), preprocess it
for the architecture and variant, print the top-5 classes (ImageNet names for
the ImageNet models), explain the target class, and write
``<stem>_<method>.png`` (diverging colormap ``bwr`` centred at zero: red
positive, blue negative, white zero; channels summed), plus with
``--overlay`` ``<stem>_<method>_overlay.png`` (the heatmap blended over the
image the model saw) and with ``--save-npy`` ``<stem>_<method>.npy`` (the input
relevance, ``(H, W, C)``). PNGs of inputs smaller than 128 pixels are enlarged
by an integer factor (nearest neighbour).

Every input is checked first (architecture, method, target, weights, each
image decoded once; an image of more than ``--max-pixels`` pixels is refused
from its header, before decoding), and the files are written through a staging
folder, so an error leaves no output folder and no partial file. A forward or
backward pass that overflows the dtype stops with one line naming the layer.
"""

from __future__ import annotations

import numpy as np

from ..outputs import check_out_dir, staged_dir
from . import _common


def register(subparsers) -> None:
    """Add the ``explain`` subcommand to the ``rlrp-ref`` parser."""
    p = subparsers.add_parser(
        "explain",
        help="explain predictions on image files and write heatmap PNGs",
        description="Explain a model's predictions on image files (JPEG, PNG): print the top-5 classes and "
        "write one heatmap PNG per image (diverging colormap centred at zero).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    _common.add_model_arguments(p, default_weights=None)
    _common.add_image_arguments(p)
    p.add_argument("--out", default="rlrp-heatmaps", help="output folder (default: ./rlrp-heatmaps)")
    p.add_argument("--overlay", action="store_true", help="also write the heatmap blended over the input image")
    p.add_argument("--save-npy", action="store_true", help="also write the input relevance as .npy")
    p.set_defaults(func=run)


def run(args) -> int:
    """Check every input, then explain each image and write its files through a staging folder; exit code 0."""
    from ..heatmap import overlay, render, save_png

    _common.check_arch(args.arch)
    method = _common.check_method(args.method)
    target = _common.parse_target(args.target)
    out = check_out_dir(args.out)
    loaded = _common.load_model(args.arch, args.weights, args.variant, args.size, args.dtype)
    _common.check_target(target, loaded.num_classes)
    _common.check_images(args.images, args.max_pixels)
    params = loaded.method_params(method)

    from ..preprocess import load_image

    stems = _common.unique_stems(args.images)
    written = 0
    with staged_dir(out) as tmp:
        for path, stem in zip(_common.progress(args.images, "explain"), stems):
            x, shown = loaded.prepare(load_image(path, args.max_pixels))
            result = _common.explain_checked(loaded, x, target=target, method=method, **params)
            logits = result.logits[0]
            explained = int(result.target[0])
            print(f"{path}:")
            print("\n".join(_common.top_k_lines(logits, loaded.class_names)))
            print(f"  explained: {loaded.class_names[explained]} ({explained}), logit {logits[explained]:+.4g}, "
                  f"method {method}, sum of relevance {float(result.relevance.sum()):+.4g}")
            heat = render(result.relevance[0], cmap="bwr", symmetric=True)
            save_png(tmp / f"{stem}_{method}.png", _common.enlarge(heat))
            written += 1
            if args.overlay:
                save_png(tmp / f"{stem}_{method}_overlay.png", _common.enlarge(overlay(shown, heat, alpha=0.6)))
                written += 1
            if args.save_npy:
                np.save(tmp / f"{stem}_{method}.npy", result.relevance[0])
                written += 1
    print(f"wrote {written} file(s) to {out}/")
    return 0
