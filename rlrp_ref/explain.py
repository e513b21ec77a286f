"""``explain(model, x, target=None, method="rlrp", ...)``: one forward trace, one backward walk.

The flow (ARCHITECTURE.md): fold BatchNorm on a copy (only when the model has
one), run ``model.trace(x)`` once, build the output relevance, then walk the
model backwards reading every layer's input and output from that trace. Each
leaf layer's step is its composite's rule (:mod:`rlrp_ref.rules`); containers
only route relevance: a Sequential walks its children in reverse, a Residual
splits ``R_y`` between skip and branch, walks both paths down to its input
``u`` and merges them (:class:`rlrp_ref.rules.ResidualRule`).

Output relevance (docs/spec.md, "Start"): for a class target ``c``, R-LRP starts
from ``R^(L) = |f_c(x)| e_c`` (the logit's magnitude; R-LRP does not divide by
``z_c``, so the first step already carries the sign of the contributions), the
classical rules from ``f_c(x) e_c`` (zero elsewhere; softmax is never explained)
and the gradient methods from ``e_c``. An explicit float array of the logits'
shape is used as it is, by every method.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from . import attribution, kernels
from .canonize import fold_batchnorm, unfolded_batchnorms
from .composites import RELEVANCE_METHODS, Composite
from .layers import Layer
from .ledger import Ledger, LedgerRecord
from .model import Container, Residual, Sequential, Trace
from .kernels import add_and_sum, per_sample_sums
from .rules import l1_mass, sample_sum

METHODS = tuple(RELEVANCE_METHODS) + tuple(attribution.GRADIENT_METHODS)


@dataclass
class Explanation:
    """The result of :func:`explain`.

    - ``relevance``: input relevance (or attribution), same shape and dtype as ``x``;
    - ``logits``: the model output ``(N, classes)`` of the one forward pass;
    - ``target``: the explained class per sample (int array), or None when an
      explicit output relevance was given;
    - ``output_relevance``: the relevance (or gradient seed) the walk started from;
    - ``ledger``: one :class:`~rlrp_ref.ledger.LedgerRecord` per backward step
      (empty for gradient methods);
    - ``layers``: with ``keep_layers=True``, ``{layer name: relevance at that
      layer's output}`` in backward order (containers included), else None;
    - ``method``, ``params``: what was run.
    """

    relevance: np.ndarray
    logits: np.ndarray
    target: np.ndarray | None
    output_relevance: np.ndarray
    method: str
    ledger: Ledger = field(default_factory=Ledger)
    layers: dict | None = None
    params: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------


def _check_params(method: str, factory, params: dict, skip: int = 0) -> None:
    """Unknown parameter names are a TypeError naming the ones the method takes."""
    accepted = [p for p in list(inspect.signature(factory).parameters)[skip:] if p != "trace"]
    unknown = [k for k in params if k not in accepted]
    if unknown:
        if not accepted:
            why = " (R-LRP has no hyperparameter)" if method == "rlrp" else ""
            raise TypeError(f"method '{method}' takes no parameters{why}, found {', '.join(map(repr, unknown))}")
        raise TypeError(f"method '{method}' takes parameters {accepted}, found {', '.join(map(repr, unknown))}")


def _check_input(x, model_dtype) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.dtype.kind == "b":
        raise ValueError(f"explain: expected a numeric input array, found dtype {x.dtype}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(model_dtype if model_dtype in (np.float32, np.float64) else np.float64)
    if x.ndim < 2:
        raise ValueError(f"explain: expected a batch (N, ...) of rank >= 2, found shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"explain: expected a finite input, found {bad} NaN or inf values")
    return x


def _prepare_model(model, dtype) -> Container:
    """The model relevance passes read: BatchNorm folded and parameters in ``dtype`` (copies only when needed)."""
    if not isinstance(model, Layer):
        raise ValueError(f"explain: expected a rlrp_ref model (Sequential, Residual or Layer), found {type(model).__name__}")
    if not isinstance(model, Container):
        model = Sequential([model], name=f"{model.name}_model")
    if unfolded_batchnorms(model):
        model = fold_batchnorm(model, copy_unchanged=False)  # read only: the layers it does not change are shared
    if any(v.dtype != dtype for layer in model.iter_layers() for v in layer.params.values()):
        model = model.astype(dtype)
    return model


def _class_targets(target, logits) -> np.ndarray:
    n, classes = logits.shape
    t = np.asarray(target)
    if t.ndim == 0:
        t = np.full(n, int(t))
    elif t.shape != (n,):
        raise ValueError(f"target: expected an int, {n} ints (one per sample) or an output relevance of shape {logits.shape}, found shape {t.shape}")
    bad = (t < 0) | (t >= classes)
    if bad.any():
        raise ValueError(f"target: expected classes in [0, {classes - 1}] ({classes} classes), found {int(t[bad][0])}")
    return t.astype(np.intp)


def _start(target, logits, start: str):
    """``(output relevance, class per sample or None)``.

    ``start``: ``"logit"`` puts ``f_c`` at class ``c``, ``"abs_logit"`` ``|f_c|``
    (R-LRP), ``"onehot"`` ``1`` (the gradient methods); an explicit float output
    relevance is returned as it is.
    """
    n, classes = logits.shape
    if target is None:
        t = logits.argmax(axis=1)
    else:
        arr = np.asarray(target)
        if arr.dtype.kind == "b":
            raise ValueError(f"target: expected ints or a float output relevance, found dtype {arr.dtype}")
        if arr.dtype.kind == "f":
            if arr.shape != logits.shape:
                raise ValueError(f"target: an explicit output relevance must have the logits' shape {logits.shape}, found {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError("target: expected a finite output relevance, found NaN or inf")
            return arr.astype(logits.dtype), None
        if arr.dtype.kind not in "iu":
            raise ValueError(f"target: expected ints or a float output relevance, found dtype {arr.dtype}")
        t = _class_targets(arr, logits)
    seed = np.zeros_like(logits)
    rows = np.arange(n)
    if start == "onehot":
        seed[rows, t] = 1
    else:
        chosen = logits[rows, t]
        seed[rows, t] = np.abs(chosen) if start == "abs_logit" else chosen
    return seed, t


# ---------------------------------------------------------------------------
# the backward walk
# ---------------------------------------------------------------------------


class _Walk:
    """One backward pass over a traced model with a rule per leaf layer."""

    def __init__(self, model: Container, record: Trace, composite: Composite, keep_layers: bool):
        self.record = record
        self.plan = composite.rules_for(model)
        self.residual = composite.residual
        self.ledger = Ledger()
        self.layers = {} if keep_layers else None
        self._masses = {}

    def mass(self, relevance):
        """``||relevance||_1`` per sample, computed once per array (the next step's output is this step's input)."""
        key = id(relevance)
        hit = self._masses.get(key)
        if hit is not None and hit[0] is relevance:
            return hit[1]
        value = l1_mass(relevance)
        self._masses[key] = (relevance, value)
        return value

    def _remember(self, relevance, mass):
        if mass is not None:
            self._masses[id(relevance)] = (relevance, mass)

    def run(self, layer: Layer, a, relevance, path=()):
        if self.layers is not None:
            self.layers[layer.name] = relevance
        if isinstance(layer, Sequential):
            for child, child_input in zip(reversed(layer.layers), reversed(layer.inputs_from(self.record, a))):
                relevance = self.run(child, child_input, relevance, path)
            return relevance
        if isinstance(layer, Residual):
            return self.residual_block(layer, a, relevance, path)
        if isinstance(layer, Container):
            raise ValueError(f"explain: unknown container kind {type(layer).__name__} ('{layer.name}')")
        rule = self.plan[layer.name]
        step = rule(layer, a, self.record[layer.name], relevance, mass=self.mass(relevance))
        self._log(layer.name, layer.kind, rule.name, step, relevance, path)
        return step.relevance

    def residual_block(self, block: Residual, u, relevance, path):
        # the block's activation passes relevance through (R-LRP and Zennit alike)
        skip_out = block.skip_output(self.record, u)
        r_skip, r_branch, ties = self.residual.split(skip_out, self.record[block.branch.name], relevance)
        n = relevance.shape[0]
        (sum_skip, mass_skip), (sum_branch, mass_branch) = per_sample_sums(r_skip), per_sample_sums(r_branch)
        self._remember(r_skip, mass_skip)
        self._remember(r_branch, mass_branch)
        self.ledger.append(LedgerRecord(
            block.name, "residual_split", self.residual.name, sum_skip + sum_branch,
            sample_sum(relevance), np.ones(n),
            mass_skip + mass_branch, self.mass(relevance), ties, np.zeros(n, dtype=bool), path,
        ))
        from_branch = self.run(block.branch, u, r_branch, path + (f"{block.name}/branch",))
        from_skip = self.run(block.skip, u, r_skip, path + (f"{block.name}/skip",)) if block.skip is not None else r_skip
        contributions, total, contribution_mass = add_and_sum(from_branch, from_skip)
        step = self.residual.merge(contributions, relevance, mass=self.mass(relevance), sums=(total, contribution_mass))
        self._log(block.name, block.kind, self.residual.name, step, relevance, path)
        return step.relevance

    def _log(self, name, kind, rule_name, step, relevance_out, path):
        n = relevance_out.shape[0]
        self._remember(step.relevance, step.l1_in)
        self.ledger.append(LedgerRecord(
            name, kind, rule_name, step.sum_contributions, step.law_rhs, step.scale,
            self.mass(step.relevance), self.mass(relevance_out), np.zeros(n, dtype=np.intp), step.absorbed, path,
        ))


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def explain(model, x, target=None, method="rlrp", keep_layers: bool = False, **rule_params) -> Explanation:
    """Explain ``model``'s prediction on the batch ``x``.

    Parameters
    ----------
    model: a :class:`~rlrp_ref.model.Sequential` (or any Layer); never modified.
        BatchNorm layers are folded into the preceding Dense/Conv2D on a copy,
        and a copy is cast when the parameters' dtype differs from the input's
        (the computation runs in the input's dtype: float32 is the fast mode,
        float64 the reference mode).
    x: input batch ``(N, ...)``, finite.
    target: None (the arg-max class per sample), an int, one int per sample, or
        an explicit float output relevance of the logits' shape ``(N, classes)``.
    method: ``"rlrp"`` (R-LRP, no parameter), a classical rule or composite
        (see :mod:`rlrp_ref.composites`), a gradient baseline (see
        :mod:`rlrp_ref.attribution`), or a :class:`~rlrp_ref.composites.Composite`.
    keep_layers: also return the relevance at every layer's output.
    rule_params: the method's parameters by name (``eps``, ``gamma``,
        ``alpha``, ``beta``, ``low``, ``high``, ``steps``, ``baseline``, ``n``,
        ``sigma``, ``seed``); any other name is a TypeError.
    """
    if isinstance(method, Composite):
        if rule_params:
            raise TypeError(f"explain: a Composite takes its parameters when built, found {sorted(rule_params)}")
        composite, method_name, gradient_fn = method, method.name, None
    elif method in RELEVANCE_METHODS:
        _check_params(method, RELEVANCE_METHODS[method], rule_params)
        composite, method_name, gradient_fn = RELEVANCE_METHODS[method](**rule_params), method, None
    elif method in attribution.GRADIENT_METHODS:
        gradient_fn = attribution.GRADIENT_METHODS[method]
        _check_params(method, gradient_fn, rule_params, skip=3)
        composite, method_name = None, method
    else:
        raise ValueError(f"explain: unknown method {method!r}; known methods: {', '.join(METHODS)}")

    with kernels.workspace():  # the conv scratch buffer lives for this one explanation
        return _explain(model, x, target, method_name, composite, gradient_fn, keep_layers, rule_params)


def _explain(model, x, target, method_name, composite, gradient_fn, keep_layers, rule_params) -> Explanation:
    """The body of :func:`explain` once the method is resolved: one trace, one backward walk."""
    model_dtype = model.dtype if isinstance(model, Container) else next(iter(model.params.values()), np.zeros(0)).dtype
    x = _check_input(x, model_dtype)
    model = _prepare_model(model, x.dtype)
    record = model.trace(x)
    logits = record.output
    if logits.ndim != 2:
        raise ValueError(f"explain: expected a model output of shape (N, classes), found {logits.shape}")

    start, classes = _start(target, logits, "onehot" if gradient_fn is not None else composite.start)
    if gradient_fn is not None:
        if gradient_fn in (attribution.gradient, attribution.gradient_x_input):
            relevance = gradient_fn(model, x, start, trace=record)
        else:
            relevance = gradient_fn(model, x, start, **rule_params)
        return Explanation(relevance, logits, classes, start, method_name, Ledger(), None, dict(rule_params))

    walk = _Walk(model, record, composite, keep_layers)
    walk.ledger.start = composite.start if classes is not None else "explicit"
    relevance = walk.run(model, x, start)
    if relevance is start or np.may_share_memory(relevance, start):
        relevance = relevance.copy()
    return Explanation(relevance, logits, classes, start, method_name, walk.ledger, walk.layers, dict(rule_params))


__all__ = ["Explanation", "METHODS", "explain"]
