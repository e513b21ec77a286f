"""The ledger: what each backward step did, one record per step in backward order.

Fields (RLRP_SPEC.md, "Ledger"), every numeric one a per-sample array ``(N,)``:

- ``name``, ``kind``: the layer (for a residual block, its name with kind
  ``residual_split`` for the split of ``R_y`` at the top of the block and
  ``residual`` for the merge at its input ``u``);
- ``rule``: the rule that ran;
- ``sum_contributions``: R-LRP linear map: ``sum_i Rt_i`` before the rescale;
  residual merge: ``sum(Rt_u)``; every other step: ``sum_i R_i`` (relevance it
  passes down);
- ``law_rhs``: R-LRP linear map: ``sum_j (z_j - b_j) R_j`` (L2's right side,
  equal to ``sum_contributions`` up to rounding); R-LRP max pooling (rule
  ``rlrp_select``, a selection): ``sum_j R_j``; every other step: ``sum_j R_j``
  (what the classical conservation law would give, so ``sum_contributions -
  law_rhs`` is the relevance a classical step absorbed or created);
- ``scale``: ``kappa = ||R||_1 / ||Rt||_1`` for R-LRP steps (0 when absorbed),
  1 for every other step;
- ``l1_out``: ``||R||_1`` at the layer's output (the relevance it receives);
  ``l1_in``: ``||R||_1`` at its input (the relevance it passes down). An R-LRP
  step records ``kappa ||Rt||_1`` (0 when absorbed), the norm of what it returns
  up to rounding; every norm is computed once per array;
- ``residual_ties``: number of positions where ``s + F == 0`` while ``R_y != 0``
  (``residual_split`` records; 0 elsewhere);
- ``absorbed``: True where ``||Rt||_1 == 0`` swallowed the whole relevance;
- ``path``: the residual paths enclosing the layer, e.g. ``("block1/branch",)``;
  empty at the top level, where R-LRP's L3 says ``l1_in == l1_out == |f_c(x)|``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LedgerRecord:
    """One backward step (see the module docstring for the fields)."""

    name: str
    kind: str
    rule: str
    sum_contributions: np.ndarray
    law_rhs: np.ndarray
    scale: np.ndarray
    l1_in: np.ndarray
    l1_out: np.ndarray
    residual_ties: np.ndarray
    absorbed: np.ndarray
    path: tuple = field(default_factory=tuple)


#: How the ledger names each output relevance a walk can start from.
START_LABELS = {"logit": "f_c e_c", "abs_logit": "|f_c| e_c", "explicit": "explicit output relevance"}


class Ledger(list):
    """A list of :class:`LedgerRecord` in backward order, with a text table.

    ``start`` says which output relevance the walk started from (a key of
    :data:`START_LABELS`: ``"abs_logit"`` for R-LRP, ``"logit"`` for the
    classical rules, ``"explicit"`` when the caller gave one), or None.
    """

    start: str | None = None

    def by_name(self, name: str, kind: str | None = None) -> LedgerRecord:
        """The record of layer ``name`` (and ``kind``, to pick a residual block's split or merge)."""
        for record in self:
            if record.name == name and (kind is None or record.kind == kind):
                return record
        raise KeyError(f"ledger: no record for layer {name!r}" + (f" of kind {kind!r}" if kind else ""))

    def table(self, sample: int = 0) -> str:
        """A fixed-width table of one sample's records."""
        header = f"{'layer':<28} {'kind':<26} {'rule':<14} {'sum(Rt)':>12} {'law rhs':>12} {'kappa':>11} {'|R| out':>11} {'|R| in':>11} {'ties':>5}"
        lines = [header, "-" * len(header)]
        if self.start is not None:
            lines.insert(0, f"start: R = {START_LABELS.get(self.start, self.start)}")
        for r in self:
            name = ("  " * len(r.path) + r.name)[:28]
            flag = " absorbed" if r.absorbed[sample] else ""
            lines.append(
                f"{name:<28} {r.kind[:26]:<26} {r.rule[:14]:<14} {r.sum_contributions[sample]:>12.5g} {r.law_rhs[sample]:>12.5g} "
                f"{r.scale[sample]:>11.5g} {r.l1_out[sample]:>11.5g} {r.l1_in[sample]:>11.5g} {int(r.residual_ties[sample]):>5}{flag}"
            )
        return "\n".join(lines)

    def __str__(self):
        return self.table(0) if self else "(empty ledger)"


__all__ = ["Ledger", "LedgerRecord", "START_LABELS"]
