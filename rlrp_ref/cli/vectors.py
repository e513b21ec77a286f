"""``rlrp-ref vectors --out DIR``: write the conformance vectors (see docs/validation.md)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add the ``vectors`` subcommand to the ``rlrp-ref`` parser."""
    parser = subparsers.add_parser(
        "vectors",
        help="write the conformance vectors (HDF5 per case + manifest.json)",
        description="Write the conformance vectors: one HDF5 file per small network (weights, inputs, "
        "targets, expected float64 relevance of every method) and a JSON manifest. "
        "The folder is written all or nothing.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; same-named files replaced)")
    parser.add_argument("--cases", nargs="+", metavar="CASE", help="only these cases (default: all)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="only these methods (default: all)")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Run ``rlrp-ref vectors`` with the parsed arguments; returns the exit code."""
    from ..validate import load_manifest, write_vectors

    manifest_path = write_vectors(args.out, cases=args.cases, methods=args.methods)
    manifest = load_manifest(manifest_path.parent)
    print(f"wrote {len(manifest['cases'])} cases x {len(manifest['methods'])} methods "
          f"(format version {manifest['format_version']}) to {manifest_path.parent}")
    return 0
