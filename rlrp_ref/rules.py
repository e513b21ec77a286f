"""Relevance rules: R-LRP and the classical LRP rules, each one step of a backward pass.

A rule maps the relevance ``R`` at a layer's output to the relevance at its
input, given the layer, its input ``a`` and its output ``z`` (both read from the
one forward trace). Rules never modify ``R`` in place and never run the model
forward again: only a rule that changes the input or the parameters evaluates its
modified layer.

The classical rules share ONE generic step (Montavon et al., "Layer-wise
relevance propagation: an overview", 2019, sec. 10.2.2; the same four steps as
Zennit's ``BasicHook`` and RelevancePropagation.jl's ``lrp!``):

1. modified inputs and layers, one or more *terms* ``(a~_k, rho_k, c_k)``;
2. ``z = sum_k c_k rho_k(a~_k)``                         (forward of the modified layer)
3. ``s = R / stab(z)``                                      (stabilized division)
4. ``R_in = sum_k c_k a~_k * vjp_{rho_k}(s)``             (backward, then multiply)

with ``stab(z) = z + eps * sign0(z)`` and ``sign0(0) = +1`` (Zennit's
``Stabilizer``). A rule with two sign cases (gamma, alpha-beta) runs the step on
two *groups* of terms and adds them, each group with its own weight and an
optional gate on ``R``. Each rule below only says which terms it uses.

R-LRP (``RLRP``) is one rule among them, special only in that it does not divide
(RLRP_SPEC.md): ``Rt = a * vjp(R)``, then the per-sample relative rescale
``R_in = Rt * ||R||_1 / ||Rt||_1`` (:func:`relative_rescale`, the one place the
L1 rescale lives). The residual split used by every method lives in
:func:`ratio_split`.

Where Zennit (0.5.1) differs from a textbook form, Zennit's definition is the
one implemented, and each rule's docstring says so.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import kernels
from .layers import AvgPool2D, BatchNorm, Conv2D, Dense, GlobalAvgPool2D, Layer, MaxPool2D

#: Zennit's default stabilizer for every rule other than epsilon, and for the
#: Norm rule it applies to average pooling and residual sums.
ZENNIT_STABILIZER = 1e-6


# ---------------------------------------------------------------------------
# numerical building blocks (each defined once)
# ---------------------------------------------------------------------------


def sample_axes(arr: np.ndarray) -> tuple[int, ...]:
    """Every axis but the batch axis."""
    return tuple(range(1, arr.ndim))


def per_sample(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Reshape a per-sample vector ``(N,)`` to broadcast against ``like`` ``(N, ...)``."""
    return np.asarray(values).reshape((-1,) + (1,) * (like.ndim - 1))


def sample_sum(arr: np.ndarray) -> np.ndarray:
    """``sum`` over each sample, blocks added in float64 (:func:`~rlrp_ref.kernels.per_sample_sum`): shape ``(N,)``."""
    return kernels.per_sample_sum(arr)


def l1_mass(arr: np.ndarray) -> np.ndarray:
    """``||arr_n||_1`` for each sample ``n``, blocks added in float64 (:func:`~rlrp_ref.kernels.per_sample_sum`): shape ``(N,)``."""
    return kernels.per_sample_sum(arr, absolute=True)


def sign0(z: np.ndarray) -> np.ndarray:
    """``sign(z)`` with ``sign0(0) = +1`` (Zennit's stabilizer sign)."""
    return np.where(z >= 0, 1, -1).astype(z.dtype)


def stabilize(z: np.ndarray, eps: float) -> np.ndarray:
    """``stab(z) = z + eps * sign0(z)``: pushes each denominator away from zero by ``eps``.

    Zennit's ``Stabilizer(epsilon, clip=False)``: zero is pushed to ``+eps``.
    ``eps = 0`` returns ``z`` itself.
    """
    if eps == 0:
        return z
    out = np.where(z >= 0, z.dtype.type(eps), z.dtype.type(-eps)) if z.dtype.kind == "f" else np.where(z >= 0, eps, -eps)
    out += z
    return out


def stabilized_quotient(numerator: np.ndarray, denominator: np.ndarray, eps: float) -> np.ndarray:
    """``numerator / stab(denominator)`` (:func:`stabilize`, ``eps > 0``) in one threaded pass, as a new array.

    The same operations as ``np.divide(numerator, stabilize(denominator, eps))``,
    so the same bits, without the two temporaries of the denominator's size.
    """
    numerator, denominator = np.asarray(numerator), np.asarray(denominator)
    dtype = np.result_type(numerator, denominator)
    if (numerator.shape != denominator.shape or dtype.kind != "f" or denominator.dtype != dtype
            or not (numerator.flags.c_contiguous and denominator.flags.c_contiguous)):
        return np.divide(numerator, stabilize(denominator, eps))
    plus, minus = dtype.type(eps), dtype.type(-eps)

    def band(out, r, z):
        np.copyto(out, minus)
        np.copyto(out, plus, where=z >= 0)  # eps * sign0(z), sign0(0) = +1
        out += z
        np.divide(r, out, out=out)

    return kernels.elementwise(band, np.empty(denominator.shape, dtype=dtype), numerator, denominator, ops=4)


def divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, with ``0`` where the denominator is exactly 0.

    Only LRP-0 (``eps = 0``) can meet an exact zero; the relevance of such a
    neuron is then dropped (absorbed) instead of becoming NaN. Nonzero but tiny
    denominators are divided by as they are: that is the weakness of LRP-0 the
    stress tests show.
    """
    denominator = np.asarray(denominator)
    zero = denominator == 0
    if not zero.any():
        return np.divide(numerator, denominator)
    # Divide by 1 where the denominator is 0, then multiply those quotients by 0: several times faster
    # than a masked division, whose branch mispredicts at every switch between zero and non-zero
    # denominators (ResNet sums are 0 wherever both paths are). Exact for finite numerators, as
    # relevance is; "+= 0" turns the -0.0 of a negative numerator into +0.0.
    out = np.divide(numerator, denominator + zero)
    out *= ~zero
    out += 0
    return out


def relative_rescale(contributions: np.ndarray, target_mass: np.ndarray, mass: np.ndarray | None = None):
    """R-LRP's relative rescale, per sample: ``R = Rt * ||R_out||_1 / ||Rt||_1``.

    ``contributions`` (``Rt``) is rescaled IN PLACE and returned with the
    per-sample scale ``kappa`` and an ``absorbed`` flag. Where ``||Rt||_1 == 0``
    while the target mass is positive, all the relevance sat on biases or dead
    units: the result is 0, ``kappa = 0`` and ``absorbed`` is True
    (RLRP_SPEC.md, "Linear maps", step 2). Norms never mix samples. ``mass`` is
    ``||Rt||_1`` when the caller already has it.
    """
    mass = l1_mass(contributions) if mass is None else np.asarray(mass, dtype=np.float64)
    target_mass = np.asarray(target_mass, dtype=np.float64)
    scale = np.zeros_like(mass)
    np.divide(target_mass, mass, out=scale, where=mass > 0)
    factor = per_sample(scale.astype(contributions.dtype), contributions)
    if contributions.flags.c_contiguous:
        kernels.elementwise(lambda out, f: np.multiply(out, f, out=out), contributions, factor)
    else:
        contributions *= factor
    absorbed = (mass == 0) & (target_mass > 0)
    return contributions, scale, absorbed


def ratio_split(skip: np.ndarray, branch: np.ndarray, relevance: np.ndarray, eps: float = 0.0):
    """Split the relevance of a residual sum ``y = s + F`` between its two terms.

    ``R_s = s * R_y / stab(s + F)`` and ``R_F = F * R_y / stab(s + F)``.

    - ``eps = 0`` (R-LRP, RLRP_SPEC.md "Residual sum"): the exact ratio, so
      ``R_s + R_F = R_y`` wherever ``s + F != 0``; where ``s + F == 0`` and
      ``R_y != 0`` the split is half and half, and those positions are counted.
    - ``eps > 0`` (the classical rules): Zennit's ``Norm`` rule on its ``Sum``
      module (what its ResNet canonizer inserts), ``stab(y) = y + eps sign0(y)``;
      no ties are possible.

    Returns ``(R_s, R_F, ties)`` with ``ties`` the per-sample tie count.
    """
    dtype = np.result_type(skip, branch, relevance)
    arrays = [np.ascontiguousarray(v, dtype=dtype) for v in np.broadcast_arrays(skip, branch, relevance)]
    r_skip = np.empty(arrays[0].shape, dtype=dtype)
    r_branch = np.empty(arrays[0].shape, dtype=dtype)
    n = r_skip.shape[0]
    tie_counts = []  # per band: (N,) counts of zero denominators with nonzero relevance

    def band(rs, rb, s, f, r):  # one band of every array, (N, w) each; rb holds the denominator, then the quotient
        np.add(s, f, out=rb)
        if eps > 0:  # stab(y) = y + eps sign0(y), never 0: a plain division
            rb += np.where(rb >= 0, dtype.type(eps), dtype.type(-eps))
            np.divide(r, rb, out=rb)
        else:
            zero = rb == 0
            if zero.any():  # divide by 1 there, then zero those quotients (see divide())
                np.divide(r, rb + zero, out=rb)
                rb *= ~zero
                rb += 0
                tie_mask = zero & (r != 0)
            else:
                np.divide(r, rb, out=rb)
                tie_mask = None
        np.multiply(s, rb, out=rs)
        np.multiply(f, rb, out=rb)
        if eps == 0 and tie_mask is not None and tie_mask.any():
            half = r * dtype.type(0.5)
            np.copyto(rs, half, where=tie_mask)
            np.copyto(rb, half, where=tie_mask)
            tie_counts.append(tie_mask.sum(axis=1))

    kernels.elementwise(band, r_skip, r_branch, *arrays, ops=6)
    ties = np.sum(tie_counts, axis=0).astype(np.intp) if tie_counts else np.zeros(n, dtype=np.intp)
    return r_skip, r_branch, ties


def law_rhs(layer: Layer, z: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """R-LRP's layer-law right side, per sample: ``sum_j (z_j - b_j) R_j`` (RLRP_SPEC.md L2).

    Computed from the traced output ``z`` without a temporary of its size.
    """
    n = z.shape[0]
    total = kernels.per_sample_sum(z, weights=relevance)
    bias = bias_of(layer)
    if bias is not None:
        # sum_j b_j R_j: one matrix-vector product over the channel axis (BLAS), then a sum per sample
        per_position = relevance.reshape(-1, relevance.shape[-1]) @ bias
        total -= kernels.per_sample_sum(per_position.reshape(n, -1))
    return total


def bias_of(layer: Layer):
    """The additive term ``b`` of an affine layer (a BatchNorm's shift), or None."""
    if isinstance(layer, BatchNorm):
        return layer.scale_shift()[1]
    return getattr(layer, "bias", None) if isinstance(layer, (Dense, Conv2D)) else None


# ---------------------------------------------------------------------------
# one backward step
# ---------------------------------------------------------------------------


@dataclass
class Step:
    """The result of one rule on one layer, with what the ledger records (all per sample)."""

    relevance: np.ndarray
    sum_contributions: np.ndarray
    law_rhs: np.ndarray
    scale: np.ndarray
    absorbed: np.ndarray
    #: ``||relevance||_1`` when the rule already knows it (R-LRP: ``kappa ||Rt||_1``), else None
    l1_in: np.ndarray | None = None


def _conserving_step(relevance_in, relevance_out) -> Step:
    n = relevance_in.shape[0]
    total_in = sample_sum(relevance_in)
    total_out = total_in if relevance_in is relevance_out else sample_sum(relevance_out)
    return Step(relevance_in, total_in, total_out, np.ones(n), np.zeros(n, dtype=bool))


class Rule(abc.ABC):
    """A backward step ``(layer, a, z, R) -> Step``; ``name`` appears in the ledger.

    ``mass``, when given, is ``||R||_1`` per sample (the walker knows it from the
    step before); a rule that needs it uses it instead of recomputing it.
    """

    name = "rule"

    @abc.abstractmethod
    def __call__(self, layer: Layer, a: np.ndarray, z: np.ndarray, relevance: np.ndarray, mass=None) -> Step:
        """Map the relevance ``R`` at ``layer``'s output to its input (every subclass defines it)."""

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class Pass(Rule):
    """``R_in = R``: element-wise activations (and, as in Zennit, an unfolded BatchNorm)."""

    name = "pass"

    def __call__(self, layer, a, z, relevance, mass=None):
        return _conserving_step(relevance, relevance)


class Gradient(Rule):
    """``R_in = vjp(R)``: reshape back (Flatten), crop back (ZeroPad2D), and max pooling in Zennit's composites.

    Zennit attaches no rule to max pooling, so relevance follows the gradient:
    each window's relevance goes to its winner (ties: the first index in
    row-major order here; torch's CPU kernel also keeps the first maximum).
    """

    name = "gradient"

    def __call__(self, layer, a, z, relevance, mass=None):
        return _conserving_step(layer.vjp(a, relevance), relevance)


class Reshape(Gradient):
    """``R_in = vjp(R)`` for shape-only layers: Flatten reshapes back, ZeroPad2D crops back."""

    name = "reshape"


class RLRP(Rule):
    """R-LRP for a linear map (RLRP_SPEC.md, "Linear maps"): no division by any ``z_j``.

    1. contributions ``Rt_i = sum_j a_i w_ij R_j = a_i * vjp(R)_i`` (bias takes none);
    2. ``R_i = Rt_i * ||R||_1 / ||Rt||_1`` per sample (:func:`relative_rescale`).

    Dense and Conv2D use their kernels, average pooling the map with weights
    ``1/count``; an unfolded BatchNorm is the diagonal map ``scale`` with
    additive ``shift``. Max pooling is not a weighted map: it is a selection
    (:class:`RLRPSelect`). The ledger gets ``sum(Rt)``, the law's
    right side ``sum_j (z_j - b_j) R_j`` and ``kappa``.

    Reference: E. Nyiri, O. Gibaru, arXiv:2501.14322 (2025), as fixed by RLRP_SPEC.md.
    """

    name = "rlrp"

    def __call__(self, layer, a, z, relevance, mass=None):
        contributions = layer.vjp(a, relevance)
        # the product is taken in place unless the vjp handed back a view
        if (not contributions.flags.writeable or not contributions.flags.c_contiguous
                or np.may_share_memory(contributions, relevance)):
            contributions = np.array(contributions, order="C")
        # Rt = a * vjp(R), with sum(Rt) and ||Rt||_1 taken in the same pass
        total, contribution_mass = kernels.multiply_and_sum(contributions, np.broadcast_to(a, contributions.shape))
        rhs = law_rhs(layer, z, relevance)
        mass = l1_mass(relevance) if mass is None else mass
        out, scale, absorbed = relative_rescale(contributions, mass, contribution_mass)
        # ||R_in||_1 = kappa ||Rt||_1 = ||R||_1 (0 where nothing was left to rescale), up to rounding
        return Step(out, total, rhs, scale, absorbed, np.where(scale > 0, mass, 0.0))


class RLRPSelect(Rule):
    """R-LRP for max pooling, a selection like ReLU (docs/spec.md, "Element-wise and shape-only layers").

    Each window's relevance goes unchanged to its winner (ties: the first index
    in row-major window order), ``Rt = vjp(R)``; where overlapping windows share
    a winner their parts add. Then the relative rescale of a linear map,
    ``R_i = Rt_i * ||R||_1 / ||Rt||_1`` per sample: a no-op unless parts of
    opposite sign met at one winner. Unlike :class:`RLRP` it does not multiply
    by the activation, so the activation enters once per conv block and a
    ``MaxPool2D(1)`` changes nothing. The ledger gets ``sum(Rt)``, the law's
    right side ``sum_j R_j`` (a selection has no bias) and ``kappa``.
    """

    name = "rlrp_select"

    def __call__(self, layer, a, z, relevance, mass=None):
        contributions = layer.vjp(a, relevance)
        if (not contributions.flags.writeable or not contributions.flags.c_contiguous
                or np.may_share_memory(contributions, relevance)):
            contributions = np.array(contributions, order="C")
        total, contribution_mass = kernels.per_sample_sums(contributions)
        mass = l1_mass(relevance) if mass is None else mass
        out, scale, absorbed = relative_rescale(contributions, mass, contribution_mass)
        return Step(out, total, sample_sum(relevance), scale, absorbed, np.where(scale > 0, mass, 0.0))


class Term(NamedTuple):
    """One term of the generic step: modified input, modified layer, coefficient.

    ``multiply=False`` for rules whose modified input is all ones (w^2, flat):
    then ``R_in`` is the bare ``vjp`` (Zennit's reducer returns the gradient).
    """

    input: np.ndarray
    layer: Layer
    coef: float = 1.0
    multiply: bool = True


class Group(NamedTuple):
    """Terms sharing one denominator; ``weight`` scales the group's relevance, ``gate`` masks ``R``."""

    terms: list
    weight: float = 1.0
    gate: np.ndarray | None = None


class LRPRule(Rule):
    """The generic classical step; subclasses only say which terms they use (:meth:`groups`).

    ``z = sum_k c_k rho_k(a~_k)``, ``s = R / stab(z)``,
    ``R_in = sum_k c_k a~_k * vjp_{rho_k}(s)``, summed over groups with their
    weights. A term whose input and layer are the layer's own reuses the traced
    output instead of recomputing it.
    """

    name = "lrp"
    stabilizer = ZENNIT_STABILIZER

    def groups(self, layer: Layer, a: np.ndarray, z: np.ndarray) -> list[Group]:
        """The rule's terms for ``layer`` with input ``a`` and traced output ``z``.

        The base (LRP-0/epsilon/Norm) form is the layer as it is: one term ``(a, layer, 1)``.
        """
        return [Group([Term(a, layer)])]

    def __call__(self, layer, a, z, relevance, mass=None):
        relevance_in = None
        for group in self.groups(layer, a, z):
            denominator = None
            for term in group.terms:
                out = z if (term.input is a and term.layer is layer) else term.layer.forward(term.input)
                part = out if term.coef == 1 else term.coef * out
                denominator = part if denominator is None else denominator + part
            upper = relevance if group.gate is None else relevance * group.gate
            if self.stabilizer > 0:  # stab(z) is never 0: a plain division
                quotient = stabilized_quotient(upper, denominator, self.stabilizer)
            else:
                quotient = divide(upper, denominator)
            for term in group.terms:
                grad = term.layer.vjp(term.input, quotient)
                if not term.multiply:
                    part = grad
                elif grad.flags.writeable and not np.may_share_memory(grad, relevance) and not np.may_share_memory(grad, quotient):
                    factor = np.asarray(term.input)
                    if grad.flags.c_contiguous and factor.flags.c_contiguous and factor.shape == grad.shape:
                        kernels.elementwise(lambda out, v: np.multiply(out, v, out=out), grad, factor)
                    else:
                        grad *= term.input
                    part = grad
                else:
                    part = grad * term.input
                coef = group.weight * term.coef
                if coef != 1:
                    part = part * a.dtype.type(coef)
                if relevance_in is None:
                    fresh = part.flags.writeable and not np.may_share_memory(part, relevance)
                    relevance_in = part if fresh else np.array(part, copy=True)
                else:
                    relevance_in += part
        return _conserving_step(relevance_in, relevance)


# -- helpers for modified parameters -----------------------------------------


def positive(arr):
    """``max(arr, 0)``."""
    return np.maximum(arr, 0)


def negative(arr):
    """``min(arr, 0)``."""
    return np.minimum(arr, 0)


def modified(layer: Layer, kernel_fn, bias_fn=None) -> Layer:
    """A copy of a Dense/Conv2D with ``kernel_fn(kernel)`` and ``bias_fn(bias)`` (``bias_fn=None``: no bias).

    Uses ``layer.with_params``; the original layer is untouched.
    """
    if not isinstance(layer, (Dense, Conv2D)):
        raise ValueError(f"{layer.desc}: this rule needs a Dense or Conv2D layer, found {type(layer).__name__}")
    if bias_fn is not None and layer.bias is not None:
        return layer.with_params(kernel=kernel_fn(layer.kernel), bias=bias_fn(layer.bias))
    new = layer.with_params(kernel=kernel_fn(layer.kernel))
    new.bias = None
    return new


def _split_input(a):
    """``(a+, a-)``, with ``a-`` None when the input has no negative entry (its terms are exactly 0)."""
    if a.size and a.min() >= 0:
        return a, None
    return positive(a), negative(a)


def _sign_case_terms(layer, a, same, cross):
    """The terms of the two sign cases shared by alpha-beta and gamma (Zennit's form).

    Positive case: ``same(W) a+ + cross(W) a- + same(b)``; negative case:
    ``cross(W) a+ + same(W) a- + cross(b)``. The ``a-`` terms exist only when
    the input has negative entries. Returns ``(positive terms, negative terms)``.
    """
    a_pos, a_neg = _split_input(a)
    pos_terms = [Term(a_pos, modified(layer, same, same))]
    neg_terms = [Term(a_pos, modified(layer, cross, cross))]
    if a_neg is not None:
        pos_terms.append(Term(a_neg, modified(layer, cross)))
        neg_terms.append(Term(a_neg, modified(layer, same)))
    return pos_terms, neg_terms


def _check_nonnegative(what: str, value) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{what}: expected a finite value >= 0, found {value!r}")
    return value


# -- the classical rules -------------------------------------------------------


class Epsilon(LRPRule):
    """LRP-epsilon: ``R_i = sum_j a_i w_ij R_j / (z_j + eps sign0(z_j))``.

    Bach et al., PLoS ONE 10(7), 2015; ``sign0(0) = +1`` as Zennit's
    ``Epsilon`` (default ``eps = 1e-6`` in Zennit). The bias is part of ``z_j``
    and absorbs its share, as in Zennit and the textbook form.
    """

    name = "epsilon"

    def __init__(self, eps: float = 1e-6):
        self.stabilizer = _check_nonnegative("epsilon rule: eps", eps)


class LRP0(Epsilon):
    """LRP-0: ``R_i = sum_j a_i w_ij R_j / z_j`` (Bach et al. 2015).

    Epsilon with ``eps = 0``. Where ``z_j`` is exactly 0 the neuron's relevance
    is dropped (see :func:`divide`); any other ``z_j``, however small, is divided by.
    """

    name = "lrp0"

    def __init__(self):
        super().__init__(0.0)


class Norm(LRPRule):
    """Zennit's ``Norm`` rule for layers without parameters (average pooling, residual sums).

    ``R_i = a_i * vjp(R / stab(z))_i`` with the fixed stabilizer (Zennit default 1e-6):
    the epsilon rule applied to the layer as it is.
    """

    name = "norm"

    def __init__(self, stabilizer: float = ZENNIT_STABILIZER):
        self.stabilizer = _check_nonnegative("norm rule: stabilizer", stabilizer)


class ZPlus(LRPRule):
    """LRP-z+ : ``R_i = sum_j a_i w+_ij R_j / sum_i a_i w+_ij`` for ``a >= 0`` (Montavon et al. 2017).

    Zennit's form (differs from the textbook): it allows negative inputs and
    keeps the positive bias, ``z+_j = W+ a+ + W- a- + b+``,
    ``R_in = a+ * vjp_{W+}(s) + a- * vjp_{W-}(s)`` with ``s = R / stab(z+)``
    (stabilizer 1e-6); i.e. alpha-beta with ``alpha = 1, beta = 0``.
    """

    name = "zplus"

    def __init__(self, stabilizer: float = ZENNIT_STABILIZER):
        self.stabilizer = _check_nonnegative("z+ rule: stabilizer", stabilizer)

    def groups(self, layer, a, z):
        a_pos, a_neg = _split_input(a)
        terms = [Term(a_pos, modified(layer, positive, positive))]
        if a_neg is not None:
            terms.append(Term(a_neg, modified(layer, negative)))
        return [Group(terms)]


class AlphaBeta(LRPRule):
    """LRP-alpha-beta: ``R_i = sum_j (alpha z+_ij / z+_j - beta z-_ij / z-_j) R_j``, ``alpha - beta = 1``.

    Bach et al. 2015. Zennit's form: positive part ``z+ = W+ a+ + W- a- + b+``,
    negative part ``z- = W- a+ + W+ a- + b-`` (each bias sign goes with the
    ``a+`` term), each stabilized by 1e-6 with ``sign0``; ``alpha, beta >= 0``.
    """

    name = "alphabeta"

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = ZENNIT_STABILIZER):
        alpha = _check_nonnegative("alpha-beta rule: alpha", alpha)
        beta = _check_nonnegative("alpha-beta rule: beta", beta)
        if alpha - beta != 1:
            raise ValueError(f"alpha-beta rule: expected alpha - beta == 1, found alpha={alpha}, beta={beta}")
        self.alpha, self.beta = alpha, beta
        self.stabilizer = _check_nonnegative("alpha-beta rule: stabilizer", stabilizer)

    def groups(self, layer, a, z):
        pos_terms, neg_terms = _sign_case_terms(layer, a, positive, negative)
        groups = [Group(pos_terms, self.alpha)]
        if self.beta != 0:
            groups.append(Group(neg_terms, -self.beta))
        return groups


class Gamma(LRPRule):
    """LRP-gamma: ``R_i = sum_j a_i (w_ij + gamma w+_ij) R_j / sum_i a_i (w_ij + gamma w+_ij)``.

    Montavon et al. 2019 (textbook: ``a >= 0``, one denominator). Zennit's
    generalized form (Andeol et al. 2021), implemented here: where ``z_j > 0``,
    ``den = (W + gW+) a+ + (W + gW-) a- + (b + g b+)``; where ``z_j < 0``,
    ``den = (W + gW-) a+ + (W + gW+) a- + (b + g b-)``; where ``z_j == 0`` the
    relevance is dropped. Stabilizer 1e-6; default ``gamma = 0.25`` (Zennit).
    """

    name = "gamma"

    def __init__(self, gamma: float = 0.25, stabilizer: float = ZENNIT_STABILIZER):
        self.gamma = _check_nonnegative("gamma rule: gamma", gamma)
        self.stabilizer = _check_nonnegative("gamma rule: stabilizer", stabilizer)

    def groups(self, layer, a, z):
        g = self.gamma

        def up(w):
            return w + g * positive(w)

        def down(w):
            return w + g * negative(w)

        pos_terms, neg_terms = _sign_case_terms(layer, a, up, down)
        return [Group(pos_terms, 1.0, z > 0), Group(neg_terms, 1.0, z < 0)]


class ZBox(LRPRule):
    """LRP-z^B (Montavon et al. 2017), for inputs bounded by ``low <= x <= high``.

    ``R_i = sum_j (a_i w_ij - l_i w+_ij - h_i w-_ij) R_j / sum_i (a_i w_ij - l_i w+_ij - h_i w-_ij)``.
    Zennit's form adds ``b - b+ - b- = 0`` to the denominator (no change) and
    stabilizes it by 1e-6. ``low`` and ``high`` are scalars or arrays that
    broadcast against the layer's NHWC (or ``(N, features)``) input, e.g.
    per-channel arrays of shape ``(C,)``.
    """

    name = "zbox"

    def __init__(self, low, high, stabilizer: float = ZENNIT_STABILIZER):
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("z-box rule: expected finite low and high")
        try:
            bad = np.any(low > high)
        except ValueError:
            raise ValueError(f"z-box rule: low {low.shape} and high {high.shape} do not broadcast") from None
        if bad:
            raise ValueError(f"z-box rule: expected low <= high, found low max {low.max()} and high min {high.min()}")
        self.low, self.high = low, high
        self.stabilizer = _check_nonnegative("z-box rule: stabilizer", stabilizer)

    def groups(self, layer, a, z):
        try:
            low = np.broadcast_to(self.low.astype(a.dtype), a.shape)
            high = np.broadcast_to(self.high.astype(a.dtype), a.shape)
        except ValueError:
            raise ValueError(f"{layer.desc}: z-box low {self.low.shape} / high {self.high.shape} do not broadcast to its input {a.shape}") from None
        return [Group([
            Term(a, layer),
            Term(low, modified(layer, positive, positive), -1.0),
            Term(high, modified(layer, negative, negative), -1.0),
        ])]


class WSquare(LRPRule):
    """LRP-w^2: ``R_i = sum_j w_ij^2 R_j / sum_i w_ij^2`` (Montavon et al. 2017).

    Zennit's form squares every parameter, so the denominator includes ``b_j^2``
    (the textbook form has no bias); stabilizer 1e-6.
    """

    name = "wsquare"

    def __init__(self, stabilizer: float = ZENNIT_STABILIZER):
        self.stabilizer = _check_nonnegative("w^2 rule: stabilizer", stabilizer)

    def groups(self, layer, a, z):
        return [Group([Term(np.ones_like(a), modified(layer, np.square, np.square), multiply=False)])]


class Flat(LRPRule):
    """LRP-flat: ``R_i = sum_j R_j / #{i in receptive field of j}`` (Lapuschkin et al. 2019).

    Zennit's form: all weights 1, bias 0, input all ones; for a padded
    convolution the count excludes the zero padding. Stabilizer 1e-6.
    """

    name = "flat"

    def __init__(self, stabilizer: float = ZENNIT_STABILIZER):
        self.stabilizer = _check_nonnegative("flat rule: stabilizer", stabilizer)

    def groups(self, layer, a, z):
        return [Group([Term(np.ones_like(a), modified(layer, np.ones_like), multiply=False)])]


# ---------------------------------------------------------------------------
# residual sums
# ---------------------------------------------------------------------------


class ResidualRule:
    """How a residual block ``y = s(u) + F(u)`` splits and merges relevance.

    ``split`` shares ``R_y`` between the skip and branch outputs
    (:func:`ratio_split`); the walker propagates each share down its path and
    sums them at ``u`` into ``Rt_u``; ``merge`` maps ``Rt_u`` to ``R_u``.
    """

    name = "residual"
    split_eps = ZENNIT_STABILIZER
    rescale = False

    def split(self, skip, branch, relevance):
        """``(R_s, R_F, ties)`` for ``R_y`` at ``y = s + F`` (:func:`ratio_split` with ``split_eps``)."""
        return ratio_split(skip, branch, relevance, self.split_eps)

    def merge(self, contributions: np.ndarray, relevance_out: np.ndarray, mass=None, sums=None) -> Step:
        """``R_u`` from ``Rt_u = R_{s->u} + R_{F->u}``: as is, or rescaled to ``||R_y||_1`` (``rescale``).

        ``mass`` is ``||R_y||_1`` and ``sums`` is ``(sum(Rt_u), ||Rt_u||_1)``
        per sample, when the caller knows them.
        """
        total, contribution_mass = sums if sums is not None else (sample_sum(contributions), None)
        if not self.rescale:
            return Step(contributions, total, sample_sum(relevance_out), np.ones(len(total)), np.zeros(len(total), dtype=bool))
        mass = l1_mass(relevance_out) if mass is None else mass
        out, scale, absorbed = relative_rescale(contributions, mass, contribution_mass)
        return Step(out, total, total, scale, absorbed, np.where(scale > 0, mass, 0.0))


class RLRPResidual(ResidualRule):
    """R-LRP at a residual block (RLRP_SPEC.md): exact ratio split (ties half/half), then the block rescale.

    ``R_u = Rt_u * ||R_y||_1 / ||Rt_u||_1`` with ``Rt_u = R_{s->u} + R_{F->u}``.
    """

    name = "rlrp_residual"
    split_eps = 0.0
    rescale = True


class NormResidual(ResidualRule):
    """Classical rules at a residual sum: Zennit's ``Norm`` on the sum (stabilized ratio), paths summed, no rescale."""

    name = "norm_residual"

    def __init__(self, stabilizer: float = ZENNIT_STABILIZER):
        self.split_eps = _check_nonnegative("residual split: stabilizer", stabilizer)


#: The layers R-LRP treats as linear maps ``Rt = a * vjp(R)``; max pooling is a selection (:class:`RLRPSelect`).
LINEAR_MAPS = (Dense, Conv2D, AvgPool2D, GlobalAvgPool2D, BatchNorm)
#: The layers R-LRP treats as selections: relevance to the winner, then the rescale.
SELECTIONS = (MaxPool2D,)

__all__ = [
    "AlphaBeta", "Epsilon", "Flat", "Gamma", "Gradient", "Group", "LRP0", "LRPRule", "LINEAR_MAPS", "Norm",
    "NormResidual", "Pass", "RLRP", "RLRPResidual", "RLRPSelect", "SELECTIONS", "Reshape", "ResidualRule", "Rule", "Step", "Term", "WSquare", "ZBox",
    "ZPlus", "ZENNIT_STABILIZER", "divide", "l1_mass", "law_rhs", "ratio_split", "relative_rescale", "sign0",
    "stabilize", "stabilized_quotient",
]
