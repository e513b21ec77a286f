"""Metrics that measure explanations, for any method, vectorized over batches.

One module per metric family:

- :mod:`.perturbation`: pixel flipping / region perturbation, MoRF and LeRF
  curves, AOPC (Samek et al. 2017);
- :mod:`.localization`: relevance mass and rank accuracy against ground-truth
  masks (Arras et al. 2022);
- :mod:`.randomization`: cascading model-parameter randomization with Spearman
  rank correlation (Adebayo et al. 2018);
- :mod:`.robustness`: max-sensitivity (Yeh et al. 2019), local Lipschitz
  estimate (Alvarez-Melis and Jaakkola 2018), and numerical robustness
  (non-finite share, ``max |R| / |logit|``).

Metrics take an explainer, never a method name: ``explain_fn(x, target) ->
relevance`` (the target stays fixed while the input is perturbed), or, for the
randomization check that changes the model, ``explain_model(model, x, target)``.
:func:`method_explainer` builds the latter from any ``rlrp_ref.explain`` method
and :func:`bind_model` the former from it.
"""

from ._common import bind_model, method_explainer, spatial_map, target_scores
from .localization import pool_channels, relevance_mass_accuracy, relevance_rank_accuracy
from .perturbation import PerturbationCurve, perturbation_baseline, perturbation_curves, region_perturbation
from .randomization import RandomizationResult, cascading_randomization, spearman_rows
from .robustness import (
    NoiseRobustness,
    blowup_ratio,
    input_noise_robustness,
    local_lipschitz,
    max_sensitivity,
    nonfinite_share,
    numerical_robustness,
)

__all__ = [
    "NoiseRobustness", "PerturbationCurve", "RandomizationResult", "bind_model", "blowup_ratio",
    "cascading_randomization", "input_noise_robustness", "local_lipschitz", "max_sensitivity",
    "method_explainer", "nonfinite_share", "numerical_robustness", "perturbation_baseline",
    "perturbation_curves", "pool_channels", "region_perturbation", "relevance_mass_accuracy",
    "relevance_rank_accuracy", "spatial_map", "spearman_rows", "target_scores",
]
