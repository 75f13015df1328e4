"""What a validation run found, and its report: the controls' rows, the rules that
decided each verdict, and the Markdown table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from drift_gate._machine import machine_line
from drift_gate.gating.gate import CandidateResult
from drift_gate.gating.kinds import KINDS
from drift_gate.gating.rules import FAIL, PASS, RuleResult

__all__ = [
    "ControlRow",
    "ValidationResult",
    "deciding_rules",
    "decision_margin",
    "error_rates",
    "validation_markdown",
]


@dataclass
class ControlRow:
    """One control's outcome for one backbone."""

    control: str
    arch: str
    expected: str
    verdict: str
    label: str
    ok: bool
    auc: float
    reference_auc: float
    n_selected: int
    n_audit: int
    deciding: list[str]
    detail: dict[str, Any] = field(default_factory=dict)
    candidate: str = ""


@dataclass
class ValidationResult:
    """Every control's row, and whether all of them got their expected verdict."""

    profile: str
    thresholds_path: str
    shortcut: float
    rows: list[ControlRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "thresholds_path": self.thresholds_path,
            "shortcut": self.shortcut,
            "ok": self.ok,
            "rows": [asdict(r) for r in self.rows],
        }


def _margin(r: RuleResult) -> float:
    """How far a checked rule is from failing, in the metric's units (< 0: failed)."""
    assert r.observed is not None and r.bound is not None
    return KINDS[r.kind].margin(r.observed, r.bound)


def _rule_text(r: RuleResult) -> str:
    name = f"{r.method}/{r.metric}.{r.kind}" if r.method else f"{r.metric}.{r.kind}"
    return f"{name} {r.observed:.3f} (bound {r.direction})"


def decision_margin(c: CandidateResult) -> float | None:
    """The smallest margin over the rules checked with a bound (< 0: the most broken rule)."""
    checked = [
        r for r in c.rules if r.status in (PASS, FAIL) and r.observed is not None and r.bound is not None
    ]
    return min((_margin(r) for r in checked), default=None)


def deciding_rules(c: CandidateResult) -> list[str]:
    """The rules that decided the verdict: every failed one, or else the one
    closest to failing."""
    failed = [r for r in c.rules if r.status == FAIL]
    if failed:
        return [_rule_text(r) for r in failed]
    checked = [r for r in c.rules if r.status == PASS and r.observed is not None and r.bound is not None]
    if not checked:
        return [r.message for r in c.rules if r.status != PASS][:2]
    closest = min(checked, key=_margin)
    return [f"closest: {_rule_text(closest)}"]


_WHAT = {
    "self": "reference gated against itself",
    "permuted": "target channels permuted (same function)",
    "seed": "fine-tune with another seed (clean data)",
    "shortcut": "fine-tuned where a lead strip predicts the class",
    "randomised": "head and last block re-initialised",
    "marker": "fine-tuned where a corner marker's grey level predicts the class",
    "marker-twin": "the same fine-tune, the marker uninformative",
    "honest": "held-out honest fine-tune on an emulated machine",
    "drain": "fine-tuned where a chest drain's height (over the lung) predicts the class",
    "drain-twin": "the same fine-tune, the drain uninformative",
}
#: Controls that must pass (honest updates and uninformative twins) and that must fail.
_MUST_PASS = ("self", "permuted", "seed", "honest", "marker-twin", "drain-twin")
_MUST_FAIL = ("shortcut", "marker", "drain")


def _extra(r: ControlRow) -> str:
    d = r.detail
    if r.control == "self":
        return f"max \\|metric − ideal\\| {d['max_deviation_from_ideal']:.1e}"
    if r.control == "permuted":
        return f"max map difference {d['max_map_difference']:.1e}"
    if r.control == "honest":
        return f"seed {d['seed']}, {d['machine']}"
    if r.control == "randomised":
        parts = [f"{m} {v:.2f}" for m, v in d["sanity"].items() if v is not None]
        return f"rank correlation with a re-randomised copy: {', '.join(parts)}"
    if r.control in ("shortcut", "marker", "marker-twin", "drain", "drain-twin"):
        e = d["cue_energy"]
        parts = [f"{m} {e['reference'][m]:.2f} → {e['candidate'][m]:.2f}" for m in e["candidate"]]
        text = f"map mass on the {d.get('cue', 'strip')} (area {e['strip_area']:.2f}): " + ", ".join(parts)
        drops = d.get("counterfactual")
        if drops:
            text += "; score drop with it replaced: " + ", ".join(f"{m} {v:.2f}" for m, v in drops.items())
        swap = d.get("cue_swap")
        if swap:
            c, ref = swap["candidate"], swap["reference"]
            text += (
                f"; {d.get('cue', 'strip')} swapped: accuracy {c['accuracy']:.2f} → "
                f"{c['swapped_accuracy']:.2f} "
                f"({c['points']:+.1f} points; reference {ref['points']:+.1f})"
            )
        for note in d.get("waived", []):
            text += f"; {note}"
        return text
    return ""


def _points(r: ControlRow) -> str:
    """The points of accuracy a cue control's candidate loses with its cue swapped."""
    swap = r.detail.get("cue_swap")
    if not swap:
        return "?"
    n = round(swap["candidate"]["points"])
    return f"{n} point{'' if abs(n) == 1 else 's'}"


def error_rates(result: ValidationResult) -> list[str]:
    """Per backbone and kind of control: how many got their expected verdict, and the
    closest margin (for a pass: how near a rule came to failing; for a fail: how far the
    most broken rule was past its bound) — the gate's error rates on known updates."""
    kinds = [k for k in (*_MUST_PASS, *_MUST_FAIL) if any(r.control == k for r in result.rows)]
    archs = list(dict.fromkeys(r.arch for r in result.rows))
    if not kinds:
        return []
    out = [
        "| control | expected | " + " | ".join(archs) + " |",
        "|---|---|" + "---|" * len(archs),
    ]
    for k in kinds:
        cells = []
        for arch in archs:
            rows = [r for r in result.rows if r.control == k and r.arch == arch]
            if not rows:
                cells.append("—")
                continue
            # a must-fail control whose cue carries too few points is reported, not judged
            weak = [r for r in rows if k in _MUST_FAIL and r.expected != FAIL]
            rows = [r for r in rows if r not in weak]
            carries = ", ".join(f"{r.verdict}, carries {_points(r)}" for r in weak)
            if not rows:
                cells.append(carries)
                continue
            right = sum(r.ok for r in rows)
            with_margin = [r for r in rows if r.detail.get("margin") is not None and r.deciding]
            # the closest call: the passing run nearest a bound, or the failing run least past one
            if with_margin:
                pick = min if k in _MUST_PASS else max
                near = pick(with_margin, key=lambda r: r.detail["margin"])
                what = near.deciding[0].removeprefix("closest: ")
                cell = f"{right}/{len(rows)} ({what})"
            else:
                cell = f"{right}/{len(rows)}"
            if k in _MUST_FAIL and len(rows) == 1:
                cell += f", carries {_points(rows[0])}"
            cells.append(cell + (f"; {carries}" if carries else ""))
        expected = "pass" if k in _MUST_PASS else "fail"
        out.append(f"| {_WHAT[k]} | {expected} | " + " | ".join(cells) + " |")
    return out


def _machines(result: ValidationResult) -> list[str]:
    """Where the candidates were trained (as their checkpoints record it), with how many
    rows each machine trained, and where they were gated."""
    counts = {
        role: Counter(
            machine_line(m[key]) for r in result.rows if (m := r.detail.get("machines", {})).get(key)
        )
        for role, key in (("trained", "candidate"), ("gated", "gate"))
    }
    out = [
        f"Candidates {role} on: " + "; ".join(f"{line} ({n} rows)" for line, n in lines.items()) + "."
        for role, lines in counts.items()
        if lines
    ]
    return [*out, ""] if out else []


def validation_markdown(result: ValidationResult) -> str:
    """The controls table (README and ``validate.md``)."""
    rates = error_rates(result)
    out = [
        f"## drift-gate validate: profile {result.profile}, `{result.thresholds_path}` — "
        f"{'every control got its expected verdict' if result.ok else 'SOME CONTROLS GOT THE WRONG VERDICT'}",
        "",
        *(["Expected verdicts per backbone (closest margin):", "", *rates, ""] if rates else []),
        *_machines(result),
        "| control | backbone | expected | verdict | AUC (reference → candidate) | true positives "
        "| deciding metrics | also |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        mark = "" if r.ok else " ✗"
        verdict = f"**{r.verdict.upper()}**{mark}" + (f": {r.label}" if r.verdict == FAIL else "")
        out.append(
            f"| {_WHAT[r.control]} | {r.arch} | {r.expected} | {verdict} | "
            f"{r.reference_auc:.3f} → {r.auc:.3f} | {r.n_selected}/{r.n_audit} | "
            f"{'; '.join(r.deciding)} | {_extra(r)} |"
        )
    loc = [
        (r, m, v)
        for r in result.rows
        for m, v in r.detail.get("localisation", {}).items()
        if v.get("mask_energy") is not None
    ]
    if loc:
        out += [
            "",
            "Reference-based localisation (ground-truth finding masks; true positives with a finding):",
            "",
            "| control | backbone | method | pointing game (ref → cand) | mask energy (ref → cand) |",
            "|---|---|---|---|---|",
        ]
        for r, m, v in loc:

            def f(x: float | None) -> str:
                return "—" if x is None else f"{x:.3f}"

            out.append(
                f"| {r.control} | {r.arch} | {m} | {f(v.get('reference_pointing_game'))} → "
                f"{f(v.get('pointing_game'))} | {f(v.get('reference_mask_energy'))} → "
                f"{f(v.get('mask_energy'))} |"
            )
    return "\n".join(out) + "\n"
