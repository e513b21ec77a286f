"""``rlrp-ref inspect FILE``: what a weights file holds and which model it fits."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add the ``inspect`` subcommand to the ``rlrp-ref`` parser."""
    parser = subparsers.add_parser(
        "inspect",
        help="show a weights file's layout, layers, parameter count and matching builder",
        description="Show the layout of an HDF5 weights file (Keras application/legacy .h5, Keras 3 .weights.h5 "
        "or a torch state dict), its layers with shapes, the parameter count, and which "
        "rlrp_ref.models builder and variant it fits. Nothing is loaded into memory but the shapes.",
    )
    parser.add_argument("file", help="HDF5 weights file")
    parser.add_argument("--all", action="store_true", help="list every layer (default: the first 20)")
    parser.add_argument("--no-fit", action="store_true", help="skip matching the file against the builders")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Print :func:`rlrp_ref.models.inspect`'s summary of ``args.file``; errors reach the CLI as ``WeightsError``."""
    import weights_import

    from .. import models

    info = models.inspect(args.file, fits=not args.no_fit)
    print(weights_import.format_inspection(info, max_layers=None if args.all else 20))
    return 0
