"""The ``rlrp-ref`` command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with
the parsed arguments, returns an exit code or None). Modules are discovered by
name, so adding a subcommand never edits this file.

Bad input (a :class:`ValueError`, which includes :class:`rlrp_ref.errors.UserError`
and ``weights_import.WeightsError``, or an :class:`OSError` such as a missing
file) prints one line on stderr and exits 2, without a traceback. Set
``RLRP_REF_DEBUG=1`` to see the traceback.

Before running a subcommand, :func:`main` calls :func:`rlrp_ref.runtime.tune`
(glibc keeps freed memory for reuse). OpenBLAS's idle-spin timeout cannot be
set from here (NumPy is loaded with the package): set
``OPENBLAS_THREAD_TIMEOUT=16`` in the environment for it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from .. import runtime


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``rlrp-ref`` parser with every subcommand module of this package registered."""
    parser = OneLineParser(
        prog="rlrp-ref",
        description="Relative LRP (R-LRP) and classical LRP rules in NumPy.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv=None) -> int:
    """Run ``rlrp-ref``: 0 on success, 1 when a check fails (validate), 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # the process settings for speed (rlrp_ref.runtime): glibc keeps freed memory for the next explanation.
    # NumPy is loaded by now (importing this package loads it), so OpenBLAS's idle-spin timeout takes effect
    # only from the environment: OPENBLAS_THREAD_TIMEOUT=16 rlrp-ref ...
    runtime.tune()
    try:
        code = args.func(args)
    except BrokenPipeError:
        # the reader went away (``rlrp-ref trace | head``): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as exc:
        if os.environ.get("RLRP_REF_DEBUG"):
            raise
        message = str(exc)
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
            message = f"{message}: {exc.filename}"
        print(f"rlrp-ref {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlrp-ref: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
