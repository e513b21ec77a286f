"""Composites: which rule each layer gets.

A :class:`Composite` maps layer types to rules (first match wins), with an
optional map for the *first* layer of a given type (the first such layer met in
execution order), and a :class:`~rlrp_ref.rules.ResidualRule` for residual sums.
It is the same shape as Zennit's ``LayerMapComposite`` /
``SpecialFirstLayerMapComposite``.

Zennit's base map (``layer_map_base``), shared by every classical composite here:

- element-wise activations: pass (``R_in = R``);
- average pooling (``AvgPool2D``, ``GlobalAvgPool2D`` - Zennit's ``AvgPool``
  includes adaptive average pooling): ``Norm`` with stabilizer 1e-6;
- residual sums: ``Norm`` on the sum, i.e. the stabilized ratio split;
- BatchNorm: pass (canonization folds it first anyway);
- max pooling gets no rule in Zennit, so relevance follows its gradient.

Flatten and ZeroPad2D reshape and crop relevance back (their gradient).
In Zennit's maps ``Linear`` means dense *or* convolution, ``torch.nn.Linear``
dense only: here ``Dense`` is ``torch.nn.Linear`` and ``Conv2D`` is ``Convolution``.

The presets, with Zennit's names, mappings and defaults (``eps = 1e-6``,
``gamma = 0.25``, stabilizer 1e-6):

==========================  ======================  ===========  =================================
composite                   first layer             Conv2D       Dense
==========================  ======================  ===========  =================================
``epsilon_plus``            -                       z+           epsilon
``epsilon_plus_flat``       flat (first Dense or    z+           epsilon
                            Conv2D)
``epsilon_gamma_box``       z-box (first Conv2D)    gamma        epsilon
``epsilon_alpha2_beta1``    -                       alpha2beta1  epsilon
==========================  ======================  ===========  =================================

A single-rule method (``lrp0``, ``epsilon``, ``gamma``, ``alphabeta``, ``zplus``,
``zbox``, ``wsquare``, ``flat``) applies its rule to every Dense and Conv2D layer
with the same base map; ``lrp0`` uses no stabilizer anywhere (pooling and
residual sums included), so that with zero biases it conserves relevance exactly.

Two things to know when comparing with Zennit's numbers (tests/test_crosscheck_zennit.py
matches them to 1e-12 in float64 once both are accounted for):

- Zennit's ``MergeBatchNorm`` canonizer folds a BatchNorm into the layer before
  it and then leaves the BatchNorm computing ``x / sqrt(1 + eps)``, so with
  ``eps > 0`` (torch's 1e-5) Zennit explains a model scaled by about
  ``1 - 5e-6`` per folded BatchNorm. :func:`rlrp_ref.canonize.fold_batchnorm`
  is exact; moving ``eps`` into the running variance (the same function) makes
  the two agree.
- torchvision VGG's ``AdaptiveAvgPool2d((7, 7))`` is the identity at 224x224,
  yet Zennit gives it the ``Norm`` rule, ``R a / (a + 1e-6 sign0(a))``. A model
  that drops it (or keeps it as an ``Identity``, which passes relevance) differs
  from Zennit by up to about 1e-5 relative; keeping it as ``AvgPool2D(1)``
  reproduces Zennit.

``rlrp`` starts from ``|f_c| e_c``, applies R-LRP to every linear map (Dense,
Conv2D, average pooling, a leftover BatchNorm), routes max pooling as a selection
(to the winner, then the rescale), passes element-wise layers, and uses R-LRP's
residual rule.
"""

from __future__ import annotations

from .layers import AvgPool2D, BatchNorm, Conv2D, Dense, Flatten, GlobalAvgPool2D, Layer, MaxPool2D, ZeroPad2D
from .rules import (
    RLRP,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    LINEAR_MAPS,
    LRP0,
    Norm,
    NormResidual,
    Pass,
    Reshape,
    ResidualRule,
    RLRPResidual,
    RLRPSelect,
    Rule,
    SELECTIONS,
    WSquare,
    ZBox,
    ZENNIT_STABILIZER,
    ZPlus,
)


class Composite:
    """A rule for each layer: ``layer_map`` and ``first_map`` are lists of ``(layer types, rule)``.

    Element-wise layers (``layer.elementwise``) get ``elementwise_rule`` unless a
    map names their type first. ``start`` is the output relevance for a class
    target ``c``: ``"logit"`` (``f_c(x) e_c``, the classical rules, as Zennit
    users start) or ``"abs_logit"`` (``|f_c(x)| e_c``, R-LRP: it does not divide
    by ``z_c``, so a signed start would multiply the sign in twice;
    docs/spec.md, "Start").
    """

    STARTS = ("logit", "abs_logit")

    def __init__(self, name: str, layer_map, first_map=(), residual: ResidualRule | None = None,
                 elementwise_rule: Rule | None = None, start: str = "logit"):
        if start not in self.STARTS:
            raise ValueError(f"composite '{name}': start expected one of {self.STARTS}, found {start!r}")
        self.start = start
        self.name = name
        self.layer_map = list(layer_map)
        self.first_map = list(first_map)
        self.residual = residual if residual is not None else NormResidual()
        self.elementwise_rule = elementwise_rule if elementwise_rule is not None else Pass()

    def __repr__(self):
        return f"Composite({self.name!r})"

    def _lookup(self, layer: Layer, mapping):
        return next((rule for types, rule in mapping if isinstance(layer, types)), None)

    def rules_for(self, model: Layer) -> dict[str, Rule]:
        """``{leaf layer name: rule}`` for every leaf of ``model`` (execution order decides "first")."""
        plan: dict[str, Rule] = {}
        first_done = not self.first_map
        for layer in model.iter_layers():
            rule = None
            if not first_done:
                rule = self._lookup(layer, self.first_map)
                first_done = rule is not None
            if rule is None:
                rule = self._lookup(layer, self.layer_map)
            if rule is None and layer.elementwise:
                rule = self.elementwise_rule
            if rule is None:
                raise ValueError(f"composite '{self.name}': no rule for {layer.desc} (type {type(layer).__name__})")
            plan[layer.name] = rule
        return plan


def _base_map(stabilizer: float):
    """Zennit's ``layer_map_base``, in this package's layer types."""
    return [
        ((AvgPool2D, GlobalAvgPool2D), Norm(stabilizer)),
        ((BatchNorm,), Pass()),
        ((MaxPool2D,), Gradient()),
        ((Flatten, ZeroPad2D), Reshape()),
    ]


def _classical(name, conv_rule, dense_rule, first_map=(), stabilizer=ZENNIT_STABILIZER) -> Composite:
    layer_map = _base_map(stabilizer) + [((Conv2D,), conv_rule), ((Dense,), dense_rule)]
    return Composite(name, layer_map, first_map, residual=NormResidual(stabilizer))


def rlrp() -> Composite:
    """R-LRP everywhere (docs/spec.md): start ``|f_c| e_c``, linear maps, max pooling as a selection. No parameter."""
    layer_map = [(LINEAR_MAPS, RLRP()), (SELECTIONS, RLRPSelect()), ((Flatten, ZeroPad2D), Reshape())]
    return Composite("rlrp", layer_map, residual=RLRPResidual(), start="abs_logit")


def single_rule(name: str, rule: Rule, stabilizer: float = ZENNIT_STABILIZER) -> Composite:
    """``rule`` on every Dense and Conv2D, Zennit's base map elsewhere."""
    return _classical(name, rule, rule, stabilizer=stabilizer)


def epsilon_plus(eps: float = 1e-6) -> Composite:
    """Zennit ``EpsilonPlus``: z+ on Conv2D, epsilon on Dense."""
    return _classical("epsilon_plus", ZPlus(), Epsilon(eps))


def epsilon_plus_flat(eps: float = 1e-6) -> Composite:
    """Zennit ``EpsilonPlusFlat``: flat on the first Dense-or-Conv2D, z+ on Conv2D, epsilon on Dense."""
    return _classical("epsilon_plus_flat", ZPlus(), Epsilon(eps), first_map=[((Dense, Conv2D), Flat())])


def epsilon_gamma_box(low=None, high=None, eps: float = 1e-6, gamma: float = 0.25) -> Composite:
    """Zennit ``EpsilonGammaBox``: z-box on the first Conv2D, gamma on Conv2D, epsilon on Dense.

    ``low`` and ``high`` (the input bounds, scalars or per-channel arrays) are
    required, as in Zennit.
    """
    if low is None or high is None:
        raise ValueError("epsilon_gamma_box: expected the input bounds low= and high= (scalars or per-channel arrays), found none")
    return _classical("epsilon_gamma_box", Gamma(gamma), Epsilon(eps), first_map=[((Conv2D,), ZBox(low, high))])


def epsilon_alpha2_beta1(eps: float = 1e-6) -> Composite:
    """Zennit ``EpsilonAlpha2Beta1``: alpha=2, beta=1 on Conv2D, epsilon on Dense."""
    return _classical("epsilon_alpha2_beta1", AlphaBeta(2.0, 1.0), Epsilon(eps))


def _lrp0() -> Composite:
    return single_rule("lrp0", LRP0(), stabilizer=0.0)


#: Method name -> factory taking the method's parameters by name.
RELEVANCE_METHODS = {
    "rlrp": rlrp,
    "lrp0": _lrp0,
    "epsilon": lambda eps=1e-6: single_rule("epsilon", Epsilon(eps)),
    "gamma": lambda gamma=0.25: single_rule("gamma", Gamma(gamma)),
    "alphabeta": lambda alpha=2.0, beta=1.0: single_rule("alphabeta", AlphaBeta(alpha, beta)),
    "zplus": lambda: single_rule("zplus", ZPlus()),
    "zbox": lambda low, high: single_rule("zbox", ZBox(low, high)),
    "wsquare": lambda: single_rule("wsquare", WSquare()),
    "flat": lambda: single_rule("flat", Flat()),
    "epsilon_plus": epsilon_plus,
    "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon_gamma_box": epsilon_gamma_box,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
}

__all__ = [
    "Composite", "RELEVANCE_METHODS", "epsilon_alpha2_beta1", "epsilon_gamma_box", "epsilon_plus",
    "epsilon_plus_flat", "rlrp", "single_rule",
]
