"""rlrp-ref: reference NumPy implementation of Relative LRP (R-LRP) and the classical LRP rules.

The flow: ``weights_import`` -> model (:mod:`rlrp_ref.layers`, :mod:`rlrp_ref.model`)
-> ``model.trace(x)`` -> ``explain`` -> heatmap / evaluate.
"""

import os as _os
import sys as _sys

if "numpy" not in _sys.modules:
    # OpenBLAS's idle worker threads spin for 2**28 cycles (about 0.1 s) after every GEMM before they sleep,
    # holding the cores that the threaded element-wise passes (kernels.parallel_rows) run on between GEMMs.
    # OpenBLAS reads this once, when NumPy loads it; a value set by the user is kept. Results do not change.
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

from . import runtime  # noqa: E402

# glibc keeps freed memory for the next explanation instead of returning it to the OS (runtime.py says why)
runtime._keep_freed_memory_at_import()

from . import canonize, kernels, layers  # noqa: E402  (after the variable above)
from .layers import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    Layer,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softplus,
    ZeroPad2D,
)
from .model import Residual, Sequential, Trace
from . import attribution, composites, rules
from .explain import METHODS, Explanation, explain
from .ledger import Ledger, LedgerRecord

__version__ = "0.1.0"

__all__ = [
    "AvgPool2D", "BatchNorm", "Conv2D", "Dense", "Flatten", "GlobalAvgPool2D", "Identity",
    "Layer", "MaxPool2D", "ReLU", "Residual", "Sequential", "Sigmoid", "Softplus", "Trace",
    "ZeroPad2D", "canonize", "kernels", "layers", "runtime",
    "Explanation", "Ledger", "LedgerRecord", "METHODS", "attribution", "composites", "explain", "rules",
]
