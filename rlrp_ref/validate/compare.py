"""Compare another implementation's relevance with rlrp-ref's expected relevance.

:func:`compare` takes one pair of arrays (``(N, *features)``: the first axis is
the sample axis) and returns a :class:`Report`:

- ``max_abs_error = max |theirs - expected|`` over everything;
- ``max_rel_error = max_n max_i |theirs - expected| / max_i |expected|``: the
  error of each sample relative to that sample's largest expected relevance
  (an element-wise relative error would be dominated by near-zero entries);
- ``pearson``, ``spearman``: the smallest per-sample correlation (as scipy.stats);
- ``topk_overlap``: the smallest per-sample share of the ``k`` largest expected
  relevances that are also among their ``k`` largest (stable order, so equal
  arrays overlap fully);
- when their relevance has a NaN or inf, the errors are inf, the correlations
  and the overlap undefined (NaN, printed n/a), and the ``finite`` law fails;
- ``laws``: the method's own laws checked on *their* relevance alone, when the
  caller supplies what the law needs (``target_logits``; ``bias_free``).

A sample is *close* when ``max_i |theirs - expected| <= atol + rtol * max_i |expected|``.
The report ``passed`` when every sample is close and every checked law holds.
Correlations and overlaps are diagnostics that help find *what* differs; they
do not decide PASS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

#: Tolerances used when neither the caller nor a manifest gives any (float64 conformance).
DEFAULT_RTOL = 1e-7
DEFAULT_ATOL = 1e-10


@dataclass(frozen=True)
class LawCheck:
    """One law checked on their relevance: ``value <= limit`` passes."""

    name: str
    description: str
    value: float
    limit: float
    passed: bool

    def __str__(self) -> str:
        if self.passed:
            return f"{self.name} ok"
        return f"{self.name} FAIL ({self.value:.1e} > {self.limit:.1e})"


@dataclass
class Report:
    """The comparison of one relevance array pair (one case, one method)."""

    method: str
    passed: bool
    close: bool
    max_abs_error: float
    max_rel_error: float
    pearson: float
    spearman: float
    topk_overlap: float
    k: int
    rtol: float
    atol: float
    num_samples: int
    laws: list[LawCheck] = field(default_factory=list)
    case: str | None = None

    HEADER = ("case", "method", "max abs err", "max rel err", "pearson", "spearman", "top-k", "laws", "result")

    @property
    def result(self) -> str:
        """``"PASS"`` or ``"FAIL"``."""
        return "PASS" if self.passed else "FAIL"

    def row(self) -> tuple[str, ...]:
        """The report's cells, in the order of :attr:`HEADER`."""
        laws = ", ".join(str(law) for law in self.laws) if self.laws else "-"
        return (
            self.case or "-",
            self.method,
            f"{self.max_abs_error:.2e}",
            f"{self.max_rel_error:.2e}",
            _fmt_corr(self.pearson),
            _fmt_corr(self.spearman),
            f"{self.topk_overlap:.2f} (k={self.k})" if math.isfinite(self.topk_overlap) else f"n/a (k={self.k})",
            laws,
            self.result,
        )

    def to_dict(self) -> dict:
        """Every figure as plain JSON-ready values."""
        return {
            "case": self.case, "method": self.method, "passed": self.passed, "close": self.close,
            "max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
            "pearson": self.pearson, "spearman": self.spearman, "topk_overlap": self.topk_overlap,
            "k": self.k, "rtol": self.rtol, "atol": self.atol, "num_samples": self.num_samples,
            "laws": [law.__dict__.copy() for law in self.laws],
        }

    def __str__(self) -> str:
        return markdown_table([self.row()])


@dataclass
class SuiteReport:
    """The reports of a whole vectors set: ``passed`` when every one passed."""

    reports: list[Report]
    #: The R-LRP definition version of the vectors compared against (rlrp_ref.validate.vectors.DEFINITIONS).
    definition_version: int | None = None

    @property
    def passed(self) -> bool:
        """True when there is at least one report and every report passed."""
        return bool(self.reports) and all(r.passed for r in self.reports)

    @property
    def failures(self) -> list[Report]:
        """The reports that failed."""
        return [r for r in self.reports if not r.passed]

    def summary(self) -> str:
        """One line: the verdict and how many case/method pairs pass."""
        n_pass = sum(r.passed for r in self.reports)
        verdict = "PASS" if self.passed else "FAIL"
        line = f"{verdict}: {n_pass} of {len(self.reports)} case/method pairs pass"
        if self.definition_version is not None:
            from .vectors import DEFINITION_VERSION, DEFINITIONS

            old = " (an old definition: regenerate with rlrp-ref vectors --out DIR)" if self.definition_version != DEFINITION_VERSION else ""
            line += f"; vectors of {DEFINITIONS[self.definition_version]}{old}"
        return line

    def __str__(self) -> str:
        return markdown_table([r.row() for r in self.reports]) + "\n\n" + self.summary()


def _fmt_corr(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.6f}"


def markdown_table(rows) -> str:
    """A GitHub-flavoured markdown table of report rows, columns padded for plain-text reading."""
    header = Report.HEADER
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _correlations(a: np.ndarray, b: np.ndarray, ranks: bool = False) -> np.ndarray:
    """Pearson correlation of every row pair ``(a[n], b[n])`` (Spearman with ``ranks``: of their average ranks).

    A row pair where either row is constant correlates 1 when the rows are equal, else it is undefined (NaN).
    """
    constant = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0)
    equal = np.all(a == b, axis=1)
    if ranks:
        a, b = stats.rankdata(a, axis=1), stats.rankdata(b, axis=1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        r = np.clip((a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1)), -1.0, 1.0)
    return np.where(constant, np.where(equal, 1.0, np.nan), r)


def _worst(values) -> float:
    """The smallest defined value (NaN only when no sample's value is defined)."""
    finite = values[np.isfinite(values)]
    return float(finite.min()) if finite.size else float("nan")


def default_k(num_features: int) -> int:
    """Top-k size: 10 % of the features, at least 1 and at most 10."""
    return int(min(10, max(1, math.ceil(0.1 * num_features))))


def topk_overlap(expected: np.ndarray, theirs: np.ndarray, k: int) -> np.ndarray:
    """Per-sample share of the ``k`` largest expected relevances also among their ``k`` largest."""
    top_e = np.argsort(-expected, axis=1, kind="stable")[:, :k]
    top_t = np.argsort(-theirs, axis=1, kind="stable")[:, :k]
    hits = (top_e[:, :, None] == top_t[:, None, :]).any(axis=2).sum(axis=1)
    return hits / k


def check_laws(theirs: np.ndarray, method: str, *, target_logits=None, bias_free: bool = False,
               rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> list[LawCheck]:
    """The laws of ``method`` checked on ``theirs`` (``(N, features)``, flattened per sample).

    - ``rlrp`` (needs ``target_logits``, the explained logit ``f_c`` per sample):
      *mass* ``| ||R||_1 - |f_c| | <= atol + rtol |f_c|`` (law L3 at the input) and
      *bound* ``max_i |R_i| <= ||R^L||_1 (1 + rtol) + atol`` with ``||R^L||_1 = |f_c|``.
    - ``lrp0`` on a bias-free network (``bias_free=True``, needs ``target_logits``):
      *conservation* ``|sum_i R_i - f_c| <= atol + rtol |f_c|``.

    Each law reports the worst sample's deviation and that sample's limit.
    """
    checks: list[LawCheck] = []
    if target_logits is None:
        return checks
    f = np.asarray(target_logits, dtype=np.float64).reshape(-1)
    if f.shape[0] != theirs.shape[0]:
        raise ValueError(f"target_logits: expected one logit per sample ({theirs.shape[0]}), found shape {np.shape(target_logits)}")
    scale = np.abs(f)
    limit = atol + rtol * scale

    def worst(name, description, deviation, lim):
        i = int(np.argmax(deviation - lim))
        return LawCheck(name, description, float(deviation[i]), float(lim[i]), bool(np.all(deviation <= lim)))

    if method == "rlrp":
        mass = np.abs(np.abs(theirs).sum(axis=1) - scale)
        checks.append(worst("mass", "L3: ||R0||_1 = |f_c|", mass, limit))
        peak = np.abs(theirs).max(axis=1)
        checks.append(worst("bound", "|R_i| <= ||R^L||_1 = |f_c|", peak, scale * (1 + rtol) + atol))
    elif method == "lrp0" and bias_free:
        deviation = np.abs(theirs.sum(axis=1) - f)
        checks.append(worst("conservation", "LRP-0 without bias: sum_i R_i = f_c", deviation, limit))
    return checks


def compare(expected, theirs, method: str, *, rtol: float | None = None, atol: float | None = None,
            target_logits=None, bias_free: bool = False, k: int | None = None, case: str | None = None) -> Report:
    """Compare ``theirs`` with ``expected`` for ``method``; see the module docstring for each figure.

    ``expected`` and ``theirs``: arrays of one shape ``(N, *features)``.
    ``rtol``/``atol``: the PASS tolerance (defaults :data:`DEFAULT_RTOL`,
    :data:`DEFAULT_ATOL`). ``target_logits`` (``(N,)``, the explained logit of
    each sample) and ``bias_free`` switch on the law checks of
    :func:`check_laws`. ``k``: top-k size (default :func:`default_k`).
    """
    rtol = DEFAULT_RTOL if rtol is None else float(rtol)
    atol = DEFAULT_ATOL if atol is None else float(atol)
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"compare: tolerances expected >= 0, found rtol={rtol}, atol={atol}")
    exp = np.asarray(expected)
    their = np.asarray(theirs)
    what = f"{case}/{method}" if case else method
    for label, arr in (("expected", exp), ("theirs", their)):
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{what}: {label} relevance expected a float array, found dtype {arr.dtype}")
    if exp.shape != their.shape:
        raise ValueError(f"{what}: expected relevance of shape {exp.shape}, found {their.shape}")
    if exp.ndim < 1 or exp.shape[0] == 0 or exp.size == 0:
        raise ValueError(f"{what}: expected a non-empty (N, *features) array, found shape {exp.shape}")
    n = exp.shape[0]
    e = exp.reshape(n, -1).astype(np.float64)
    t = their.reshape(n, -1).astype(np.float64)
    if not np.all(np.isfinite(t)):
        bad = int(t.size - np.count_nonzero(np.isfinite(t)))
        laws = [LawCheck("finite", "every relevance is finite", float(bad), 0.0, False)]
        return Report(method, False, False, float("inf"), float("inf"), float("nan"), float("nan"), float("nan"),
                      k or default_k(e.shape[1]), rtol, atol, n, laws, case)
    k = default_k(e.shape[1]) if k is None else int(k)
    if not 1 <= k <= e.shape[1]:
        raise ValueError(f"{what}: top-k expected 1 <= k <= {e.shape[1]}, found {k}")

    err = np.abs(t - e).max(axis=1)
    scale = np.abs(e).max(axis=1)
    close = bool(np.all(err <= atol + rtol * scale))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(scale > 0, err / np.where(scale > 0, scale, 1), np.where(err > 0, np.inf, 0.0))
    pearson = _worst(_correlations(e, t))
    spearman = _worst(_correlations(e, t, ranks=True))
    overlap = float(topk_overlap(e, t, k).min())
    laws = check_laws(t, method, target_logits=target_logits, bias_free=bias_free, rtol=rtol, atol=atol)
    passed = close and all(law.passed for law in laws)
    return Report(method, passed, close, float(err.max()), float(rel.max()), float(pearson), float(spearman),
                  overlap, k, rtol, atol, n, laws, case)
