"""rlrp-ref: reference NumPy implementation of Relative LRP (R-LRP) and the classical LRP rules.

The flow: ``weights_import`` -> model (:mod:`rlrp_ref.layers`, :mod:`rlrp_ref.model`)
-> ``model.trace(x)`` -> ``explain`` -> heatmap / evaluate.
"""

from . import runtime  # (import changes nothing in the process: runtime.tune() makes the speed settings)
from . import canonize, kernels, layers
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
