"""``rlrp-ref validate --theirs FILE [--vectors DIR]``: compare another implementation's relevance."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    """Add the ``validate`` subcommand to the ``rlrp-ref`` parser."""
    parser = subparsers.add_parser(
        "validate",
        help="compare another implementation's relevance with the conformance vectors",
        description="Compare the relevance in FILE (HDF5 datasets /<case>/<method>, float64, shape of the "
        "case's inputs) with the expected relevance of the conformance vectors. Prints one table row per "
        "case and method; exits 0 if all pass, 1 on any FAIL, 2 on bad input.",
    )
    parser.add_argument("--theirs", required=True, metavar="FILE", help="their relevance (see docs/validation.md)")
    parser.add_argument("--vectors", metavar="DIR", help="vectors folder (default: the copy shipped with rlrp-ref)")
    parser.add_argument("--cases", nargs="+", metavar="CASE", help="only these cases (default: every case)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="only these methods, each required in every case (default: the methods FILE holds)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    """Run ``rlrp-ref validate`` with the parsed arguments; returns the exit code."""
    from ..outputs import staged_file
    from ..validate import PACKAGED_DIR, validate
    from .evaluate import _json_safe  # strict JSON: NaN -> null, inf -> "inf", as in evaluate's metrics.json

    suite = validate(args.vectors or PACKAGED_DIR, args.theirs, methods=args.methods, cases=args.cases)
    if args.json:
        with staged_file(args.json) as tmp:
            tmp.write_text(json.dumps(_json_safe({"passed": suite.passed, "reports": [r.to_dict() for r in suite.reports]}),
                                      indent=2, allow_nan=False) + "\n")
    print(suite)
    return 0 if suite.passed else 1
