"""Convert a torch checkpoint to the HDF5 state-dict layout: ``python -m weights_import.torch_to_h5 model.pth out.h5``.

Needs torch (the optional ``crosscheck`` extra). The checkpoint is loaded with
``torch.load(..., weights_only=True)``; it may be a state dict or a dict
holding one under ``"state_dict"`` or ``"model"``. Every floating-point tensor
is written as one dataset named by its key (``features.0.weight``), in torch's
own layout and dtype; ``num_batches_tracked`` counters are dropped. The root
attribute ``format = "torch_state_dict"`` marks the layout. The conversion to
rlrp_ref's Keras layout (conv ``(cout, cin, kh, kw)`` to ``(kh, kw, cin, cout)``,
Linear ``(out, in)`` to ``(in, out)``, the flatten-order permutation of the
first classifier layer) happens when the file is loaded into a model
(:mod:`weights_import.torch`), because that permutation needs the model; the
file therefore mirrors the state dict key for key, like one written directly
with h5py.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import WeightsError
from .torch import SKIPPED_SUFFIXES, split_key


def _state_dict(checkpoint, origin: str) -> dict:
    for key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise WeightsError(f"{origin}: expected a state dict (a mapping of keys to tensors), found {type(checkpoint).__name__}")
    return checkpoint


def convert(pth_path, h5_path) -> int:
    """Write the state dict in ``pth_path`` to ``h5_path``; return the number of tensors written."""
    try:
        import torch
    except ImportError as err:
        raise WeightsError(f"{pth_path}: reading a torch checkpoint needs torch (pip install 'rlrp-ref[crosscheck]')") from err
    import h5py

    origin = os.fspath(pth_path)
    if not os.path.exists(origin):
        raise WeightsError(f"{origin}: expected a torch checkpoint, found no such file")
    try:
        checkpoint = torch.load(origin, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types (UnpicklingError, RuntimeError, ...) for a bad file
        raise WeightsError(f"{origin}: expected a torch checkpoint loadable with weights_only=True, found {type(err).__name__}: {' '.join(str(err).split())[:200]}") from None
    state = _state_dict(checkpoint, origin)
    arrays = {}
    for key, tensor in state.items():
        if split_key(str(key))[1] in SKIPPED_SUFFIXES:
            continue
        if not hasattr(tensor, "is_floating_point") or not tensor.is_floating_point():
            raise WeightsError(f"{origin}: tensor '{key}': expected a floating-point tensor, found {getattr(tensor, 'dtype', type(tensor).__name__)}")
        arrays[str(key)] = tensor.detach().cpu()
    with h5py.File(h5_path, "w") as out:
        out.attrs["format"] = "torch_state_dict"
        for key, tensor in arrays.items():
            out.create_dataset(key, data=tensor.numpy())
    return len(arrays)


def main(argv=None) -> int:
    """Command-line entry point: convert, print a one-line summary; exit 2 with a one-line error on bad input."""
    parser = argparse.ArgumentParser(prog="python -m weights_import.torch_to_h5", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="torch checkpoint (.pth / .pt) holding a state dict")
    parser.add_argument("output", help="HDF5 file to write")
    args = parser.parse_args(argv)
    try:
        count = convert(args.checkpoint, args.output)
    except (ValueError, OSError) as err:
        print(f"torch_to_h5: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {count} tensors to {args.output} (layout torch_state_dict)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
