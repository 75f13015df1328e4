"""Rules: summaries and thresholds in, rule results and a verdict out. Pure.

Size: every rule family (drift, AUC, sanity, counterfactual, ONNX parity) and the verdict
they add up to, all pure: what a rule means is read in one file.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from drift_gate.evidence.registry import METRICS
from drift_gate.evidence.summary import Summary
from drift_gate.gating.kinds import KINDS
from drift_gate.gating.thresholds import Bound, Thresholds
from drift_gate.models.export import Parity

__all__ = [
    "FAIL",
    "FEWEST_TO_FAIL",
    "INCONCLUSIVE",
    "PASS",
    "SKIPPED",
    "RuleResult",
    "Status",
    "auc_rules",
    "decide_verdict",
    "evaluate_rules",
    "parity_rule",
    "samples_needed",
]


class Status(enum.StrEnum):
    """The outcome of a rule, a candidate or a gate run (compares equal to its value)."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"


PASS, FAIL, INCONCLUSIVE, SKIPPED = Status.PASS, Status.FAIL, Status.INCONCLUSIVE, Status.SKIPPED

#: Below ``min_samples`` a drift rule is inconclusive (too few samples to show that the
#: evidence stayed), unless at least this many samples show a violation that the whole
#: bootstrap 95 % CI of their mean agrees on: few samples cannot prove a pass, but they
#: can prove a fail. Below it the percentile bootstrap is too unreliable to trust.
FEWEST_TO_FAIL = 10


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome.

    Attributes:
        rule: a stable name, e.g. ``densenet201/layercam/iou.min``.
        status: what the rule found.
        observed: the value compared (``None`` when there was nothing to compare).
        bound: the bound it was compared with.
        direction: how the comparison reads, e.g. ``>= 0.3``.
        message: one line for people.
        source: where the bound was set (``thresholds.toml:12``).
        scope: ``drift`` (a map metric), ``auc`` or ``onnx`` (parity).
        method: the CAM method of a drift rule.
        metric: the metric compared (``iou``, ``auc``, ``max_rel_diff``).
        kind: the bound's kind (``min``, ``max``, ``abs_max``, ``max_drop``, ``max_rise``).
    """

    rule: str
    status: Status
    observed: float | None
    bound: float | None
    direction: str
    message: str
    source: str = ""
    scope: str = "drift"
    method: str | None = None
    metric: str = ""
    kind: str = ""


def _statistic(s: Summary, statistic: str, kind: str) -> float | None:
    """The value a bound is compared with; ``ci`` takes the conservative end."""
    if statistic == "mean":
        return s.mean
    if statistic == "median":
        return s.median
    if s.ci_low is None or s.ci_high is None:
        return None
    return KINDS[kind].conservative(s.ci_low, s.ci_high)


def _ci_violates(s: Summary, kind: str, bound: float) -> bool:
    """Whether every value in ``s``'s 95 % CI of the mean breaks the bound."""
    if s.ci_low is None or s.ci_high is None:
        return False
    return KINDS[kind].interval_breaks(s.ci_low, s.ci_high, bound)


def samples_needed(n_usable: int, n_audit: int, required: int, n_classes: int, share: float | None) -> str:
    """What the audit set would need for ``required`` usable samples, at the rate seen."""
    if n_usable == 0 or n_audit == 0:
        return "no audit sample was usable, so a larger audit set alone will not help"
    if share is not None:
        return (
            f"only {n_usable / n_audit:.0%} of the audit set was usable, below min_samples "
            f"{share:.0%}; a larger audit set keeps that share, so lower min_samples or improve the models"
        )
    audit = math.ceil(required * n_audit / n_usable)
    return (
        f"at this rate ({n_usable} of {n_audit} audit images usable) it needs an audit set of about "
        f"{audit} images ({math.ceil(audit / max(n_classes, 1))} per class: baseline --per-class)"
    )


def evaluate_rules(
    arch: str,
    method: str,
    summaries: dict[str, dict[str, Summary]],
    thresholds: Thresholds,
    *,
    approved: dict[str, Any],
    n_audit: int = 0,
    n_classes: int = 0,
    group: str = "overall",
    bounds: list[Bound] | None = None,
    required: int | None = None,
) -> list[RuleResult]:
    """Applies the drift bounds of one backbone x method to its overall summaries (or, with
    ``group`` and ``bounds``, one class's bounds to that class's summaries: the rule is then
    named ``<arch>/<method>/<class>/<metric>.<kind>``).

    Args:
        summaries: metric -> group -> :class:`Summary` (from :func:`summarise`).
        approved: the approved candidate's statistics, ``{method: {metric: value}}``,
            for relative bounds; relative bounds without one are skipped.
        n_audit: audit images (what a relative ``min_samples`` is a share of).
        n_classes: classes of the audit set (to say how large an audit set would do).
        required: a group's own smallest size (the ``newly_correct`` group): with fewer
            samples its rules are skipped, not inconclusive (most updates newly get few
            samples right, and that is no reason to doubt them).

    With fewer samples than ``min_samples`` a rule is inconclusive, unless
    :data:`FEWEST_TO_FAIL` or more samples violate it beyond their 95 % CI: then it fails.
    Each bound's outcome (not computed, too few samples, no approved value, checked) is
    decided by :func:`_drift_rule`.
    """
    needed = thresholds.required_samples(n_audit) if required is None else required
    ctx = _Group(arch, method, group, thresholds, approved, n_audit, n_classes, needed, required)
    return [
        _drift_rule(ctx, b, summaries)
        for b in (thresholds.bounds(arch, method) if bounds is None else bounds)
    ]


@dataclass(frozen=True)
class _Group:
    """What every drift rule of one backbone x method x group is checked in."""

    arch: str
    method: str
    group: str
    thresholds: Thresholds
    approved: dict[str, Any]
    n_audit: int
    n_classes: int
    needed: int  # usable samples a rule needs to be checked
    own_size: int | None  # the group's own smallest size (too few: skipped, not inconclusive)


def _drift_rule(ctx: _Group, b: Bound, summaries: dict[str, dict[str, Summary]]) -> RuleResult:
    """One drift bound's outcome on its metric's summary of ``ctx``'s group."""
    group = "" if ctx.group == "overall" else ctx.group + "/"
    name = f"{ctx.arch}/{ctx.method}/{group}{b.metric}.{b.kind}"
    where = {"source": b.source, "method": ctx.method, "metric": b.metric, "kind": b.kind}
    kind, spec = KINDS[b.kind], METRICS[b.metric]
    approved_value = (ctx.approved.get(ctx.method) or {}).get(b.metric)
    bound: float | None = None
    direction = b.kind  # a relative bound without an approved value has no number yet
    if not kind.relative or approved_value is not None:
        direction, bound = kind.effective(b.value, approved_value)
    s = summaries.get(b.metric, {}).get(ctx.group)
    if s is None:
        return RuleResult(name, SKIPPED, None, bound, direction, f"{b.metric} not computed", **where)
    if s.n < ctx.needed:
        return _too_few(ctx, s, name, bound, direction, where)
    observed = _statistic(s, ctx.thresholds.statistic, b.kind)
    if kind.relative and approved_value is None:
        text = "no approved result yet (run `drift-gate approve`)"
        return RuleResult(name, SKIPPED, observed, None, b.kind, text, **where)
    assert observed is not None and bound is not None
    ok = kind.holds(observed, bound)
    text = (
        f"{b.metric} {ctx.thresholds.statistic} {observed:.4f} {'ok' if ok else 'violated'}: "
        f"must be {direction} ({spec.direction.value} is better)"
    )
    return RuleResult(name, PASS if ok else FAIL, observed, bound, direction, text, **where)


def _too_few(
    ctx: _Group, s: Summary, name: str, bound: float | None, direction: str, where: dict[str, Any]
) -> RuleResult:
    """A rule on fewer usable samples than it needs: skipped for a group with a size of its
    own, failed when enough samples break it with their whole CI, else inconclusive."""
    if ctx.own_size is not None:
        text = f"{ctx.group}: {s.n} usable samples, fewer than its min_samples {ctx.own_size}: not checked"
        return RuleResult(name, SKIPPED, None, bound, direction, text, **where)
    shown = ctx.thresholds.min_samples_text
    if ctx.thresholds.min_samples_share is not None:
        shown += f" of {ctx.n_audit} = {ctx.needed}"
    if bound is not None and s.n >= FEWEST_TO_FAIL and _ci_violates(s, where["kind"], bound):
        text = (
            f"only {s.n} usable samples (min_samples is {shown}), but the whole 95 % CI "
            f"of their mean [{s.ci_low:.4f}, {s.ci_high:.4f}] is outside the bound "
            f"({direction}): too few to show a pass, enough to show a violation"
        )
        return RuleResult(name, FAIL, s.mean, bound, direction, text, **where)
    share = ctx.thresholds.min_samples_share
    text = (
        f"only {s.n} usable samples ({s.n_degenerate} degenerate), min_samples is {shown}: "
        "inconclusive, not a pass; " + samples_needed(s.n, ctx.n_audit, ctx.needed, ctx.n_classes, share)
    )
    return RuleResult(name, INCONCLUSIVE, None, bound, direction, text, **where)


def _auc_status(
    what: str, auc: float | None, support: int, non_finite: int, n: int, thresholds: Thresholds
) -> tuple[Status, str] | None:
    """INCONCLUSIVE or FAIL with the reason when ``auc`` cannot be compared with a bound."""
    if non_finite:
        return FAIL, (
            f"{what}: {non_finite} of {n} audit images have NaN or infinite logits, so there is no AUC "
            "(a model that predicts NaN fails)"
        )
    if auc is None or not math.isfinite(auc):
        return INCONCLUSIVE, f"{what}: no AUC (the audit set has no class with both positives and negatives)"
    if support < thresholds.auc_min_support:
        return INCONCLUSIVE, (
            f"{what} {auc:.4f} rests on {support} positive(s) or negative(s) of a class: too few to mean "
            f"anything (at least {thresholds.auc_min_support} of each, [auc] min_support); inconclusive"
        )
    return None


@dataclass(frozen=True)
class _AucScope:
    """One AUC the ``[auc]`` rules judge: the macro AUC (``scope`` ``auc``) or one class's
    (``auc/<class>``), with what it rests on."""

    arch: str
    scope: str
    auc: float | None
    support: int  # the fewest positives or negatives of a class it rests on
    non_finite: int  # audit images with NaN or infinite logits
    n: int
    thresholds: Thresholds
    source: str

    def rule(self, kind: str, bound: float, direction: str, text: str) -> RuleResult:
        name = "macro AUC" if self.scope == "auc" else f"AUC of {self.scope.split('/', 1)[1]}"
        early = _auc_status(name, self.auc, self.support, self.non_finite, self.n, self.thresholds)
        if early is not None:
            status, message = early
        else:
            assert self.auc is not None
            ok = KINDS[kind].holds(self.auc, bound)
            status = PASS if ok else FAIL
            message = f"{name} {self.auc:.4f} {'ok' if ok else 'violated'}: {text}"
        observed = self.auc if self.auc is not None and math.isfinite(self.auc) else None
        return RuleResult(
            f"{self.arch}/{self.scope}.{kind}",
            status,
            observed,
            bound,
            direction,
            message,
            self.source,
            scope="auc",
            metric="auc",
            kind=kind,
        )

    def rules(
        self, bounds: Mapping[str, float | None], against: float | None, whose: str
    ) -> list[RuleResult]:
        """The ``min`` and ``max_drop`` of ``bounds`` that are set; a drop needs ``against``
        (the approved or reference AUC, ``whose`` in the message)."""
        out = []
        if (b := bounds.get("min")) is not None:
            out.append(self.rule("min", b, f">= {b:g}", f"must be >= {b:g}"))
        if (d := bounds.get("max_drop")) is not None and against is not None:
            text = f"may drop at most {d:g} below {whose}{against:.4f}"
            out.append(self.rule("max_drop", against - d, f">= {against:.4f} - {d:g}", text))
        return out


def auc_rules(
    arch: str,
    metrics: Mapping[str, Any],
    reference: Mapping[str, Any],
    baseline_auc: float,
    thresholds: Thresholds,
) -> list[RuleResult]:
    """The ``[auc]`` rules: a floor and the largest drop below the approved (or reference)
    macro AUC, and each ``[auc.labels.<class>]`` class's own. ``metrics`` and ``reference``
    are :func:`~drift_gate.evidence.classification.classification_metrics` of the candidate
    and of the reference on the audit set. An AUC that rests on fewer than ``[auc]
    min_support`` positives or negatives of a class is inconclusive; NaN or infinite logits
    fail."""
    n, broken = int(metrics.get("n", 0)), int(metrics.get("non_finite", 0))
    support = metrics.get("support", {})
    per_class = metrics.get("auc_per_class", {})
    macro_support = min((support[c] for c in per_class if c in support), default=0)
    macro = _AucScope(
        arch,
        "auc",
        metrics.get("auc_macro"),
        macro_support,
        broken,
        n,
        thresholds,
        f"{thresholds.path} [auc]",
    )
    wanted = {"min": thresholds.auc_min, "max_drop": thresholds.auc_max_drop}
    out = macro.rules(wanted, baseline_auc, "")
    for cls, bounds in thresholds.auc_labels.items():
        ref = reference.get("auc_per_class", {}).get(cls)
        one = _AucScope(
            arch,
            f"auc/{cls}",
            per_class.get(cls),
            support.get(cls, 0),
            broken,
            n,
            thresholds,
            f"{thresholds.path} [auc.labels.{cls}]",
        )
        out += one.rules(bounds, ref if ref is not None and math.isfinite(ref) else None, "the reference's ")
    return out


def sanity_rule(
    arch: str, method: str, correlations: np.ndarray, thresholds: Thresholds, other_class: bool = False
) -> RuleResult:
    """A ``[sanity]`` precondition for one method: the median rank correlation between
    the candidate's maps and those of its randomised copy (``other_class``: its maps for
    another class) over every audit sample (a property of the method on this model, so not only the
    selected ones) must not exceed the bound; above it the maps
    do not explain this model (or this class): inconclusive, never a pass."""
    bound = thresholds.sanity_max_class_correlation if other_class else thresholds.sanity_max_correlation
    assert bound is not None
    metric = "class_correlation" if other_class else "randomised_correlation"
    name = f"{arch}/{method}/sanity.{metric}.max"
    where = {"source": f"{thresholds.path} [sanity]", "method": method, "metric": metric}
    finite = correlations[np.isfinite(correlations)]
    if not len(finite):
        empty = "no sample to compare"
        return RuleResult(
            name, SKIPPED, None, bound, f"<= {bound:g}", empty, scope="sanity", kind="max", **where
        )
    observed = float(np.median(finite))
    against = (
        "its maps for another class"
        if other_class
        else f"the maps of the candidate with its {thresholds.sanity_randomise} re-initialised"
    )
    if observed <= bound:
        subject = "class" if other_class else "model"
        message = f"maps depend on the {subject}: median rank correlation {observed:.3f}"
        return RuleResult(
            name, PASS, observed, bound, f"<= {bound:g}", message, scope="sanity", kind="max", **where
        )
    message = (
        f"maps insensitive to the {'class explained' if other_class else 'model'}: median rank correlation "
        f"{observed:.3f} with {against} (> {bound:g}); {method} at this layer cannot show what moved: "
        "inconclusive, never a pass"
    )
    status = INCONCLUSIVE
    return RuleResult(
        name, status, observed, bound, f"<= {bound:g}", message, scope="sanity", kind="max", **where
    )


def counterfactual_rule(
    arch: str,
    method: str,
    drops: np.ndarray,
    thresholds: Thresholds,
    *,
    corner: str | None = None,
    corners: bool = False,
) -> RuleResult:
    """The ``[counterfactual]`` rule for one method: over the judged samples whose
    candidate map points outside the anatomy (``drops`` finite), the mean drop of the
    candidate's score when that region is replaced must not exceed the bound. Fewer such
    samples than ``min_samples``: skipped (nothing points outside). With ``region =
    "band"`` every judged sample counts (the whole band was replaced) and the rule is the
    backbone's, not a method's; ``"corners"`` likewise, ``drops`` being those of the
    ``corner`` whose mean drop is largest. ``corners``: the ``max_corner_drop`` rule beside
    the region's (``drops``: the costliest corner's, ``corner_drop``). Under ``paired`` the
    drops are each less the reference's (:mod:`drift_gate.gating.paired`)."""
    bound, needed = thresholds.counterfactual_max_drop, thresholds.counterfactual_min_samples
    metric = "counterfactual_drop"
    if corners:
        assert thresholds.counterfactual_max_corner_drop is not None
        bound, metric = thresholds.counterfactual_max_corner_drop, "corner_drop"
    whole = corners or thresholds.counterfactual_region != "map"
    name = f"{arch}/{metric}.max" if whole else f"{arch}/{method}/{metric}.max"
    source, of = f"{thresholds.path} [counterfactual]", None if whole else method
    where = {"source": source, "metric": metric, "kind": "max"}
    finite = drops[np.isfinite(drops)]
    if whole:
        share = f"{len(finite)} judged samples"
        what = (
            f"replacing the image's {corner or 'worst'} corner (of the four, the costliest)"
            if corners or thresholds.counterfactual_region == "corners"
            else "replacing the image's margin"
        )
        short = f"{len(finite)} judged samples (min_samples {needed}): not checked"
    else:
        share = f"{len(finite)} of {len(drops)} judged maps point outside the anatomy"
        what = "replacing that region"
        short = f"{len(finite)} judged maps point outside the anatomy (min_samples {needed}): not checked"
    if thresholds.counterfactual_control == "same-class":
        what += " (from another class's image, less the same-class control's drop)"
    # paired: each drop is already less the reference's on the same sample and donors
    more = " more than the reference's (same images and donors)" if thresholds.counterfactual_paired else ""
    if len(finite) < needed:
        return RuleResult(name, SKIPPED, None, bound, f"<= {bound:g}", short, method=of, **where)
    observed = float(finite.mean())
    if observed <= bound:
        message = f"{share}; {what} lowers the candidate's score by {observed:.3f}{more} on average"
        return RuleResult(name, PASS, observed, bound, f"<= {bound:g}", message, method=of, **where)
    message = (
        f"{share}, and the candidate relies on it: {what} lowers its score by "
        f"{observed:.3f}{more} on average (> {bound:g}), a shortcut outside the anatomy"
    )
    return RuleResult(name, FAIL, observed, bound, f"<= {bound:g}", message, method=of, **where)


def decide_verdict(rules: list[RuleResult]) -> tuple[Status, str]:
    """A candidate's verdict and its label from its rules (a gate that checked nothing
    is inconclusive, never a pass)."""
    statuses = {r.status for r in rules}
    checked = statuses & {PASS, FAIL, INCONCLUSIVE}
    if not checked:
        return INCONCLUSIVE, "no rule could be checked"
    failed = {r.scope for r in rules if r.status == FAIL}
    auc_failed, onnx_failed, drift_failed = "auc" in failed, "onnx" in failed, "drift" in failed
    labels = []
    if drift_failed:
        labels.append(
            "evidence drift despite stable AUC" if not auc_failed else "evidence drift and AUC regression"
        )
    elif auc_failed:
        labels.append("AUC regression")
    if onnx_failed:
        labels.append("the exported ONNX model differs from the audited checkpoint")
    if labels:
        return FAIL, "; ".join(labels)
    if any(r.status == INCONCLUSIVE and r.scope == "sanity" for r in rules):
        return INCONCLUSIVE, "maps insensitive to the model or class (sanity check)"
    if INCONCLUSIVE in statuses:
        return INCONCLUSIVE, "too few usable samples to judge the evidence"
    return PASS, "evidence and AUC within bounds"


def parity_rule(arch: str, p: Parity, thresholds: Thresholds) -> RuleResult:
    """ONNX Runtime's logits against the audited checkpoint's."""
    ok = p.ok(thresholds.onnx_max_rel_diff)
    return RuleResult(
        f"{arch}/onnx.parity",
        PASS if ok else FAIL,
        p.max_rel_diff,
        thresholds.onnx_max_rel_diff,
        f"<= {thresholds.onnx_max_rel_diff:g}",
        f"ONNX Runtime ({p.provider}) vs the audited checkpoint: max relative logit difference "
        f"{p.max_rel_diff:.3g} {'ok' if ok else 'violated'} on {p.n} audit images",
        f"{thresholds.path} [onnx]",
        scope="onnx",
        metric="max_rel_diff",
        kind="max",
    )
