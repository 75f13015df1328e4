"""thresholds.toml parsing and rule evaluation (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drift_gate.evidence.summary import Summary
from drift_gate.gating.rules import (
    FAIL,
    FEWEST_TO_FAIL,
    INCONCLUSIVE,
    PASS,
    SKIPPED,
    decide_verdict,
    evaluate_rules,
)
from drift_gate.gating.thresholds import load_thresholds, parse_thresholds

TEXT = """\
[gate]
methods = ["layercam", "gradcam++"]
min_samples = 5
statistic = "mean"

[auc]
min = 0.9

[drift]
iou.min = 0.30
displacement.max = 0.15

[drift.resnet50v2]
iou.min = 0.25

[drift.resnet50v2."gradcam++"]
iou.min = 0.20
correlation.min = 0.4
"""


def test_most_specific_bound_wins_and_names_its_line() -> None:
    t = parse_thresholds(TEXT)
    by_metric = {b.metric: b for b in t.bounds("resnet50v2", "gradcam++")}
    assert by_metric["iou"].value == 0.20 and by_metric["iou"].source == "thresholds.toml:17"
    assert by_metric["correlation"].value == 0.4
    assert by_metric["displacement"].source == "thresholds.toml:11"
    assert {b.metric: b.value for b in t.bounds("resnet50v2", "layercam")}["iou"] == 0.25
    assert {b.metric: b.value for b in t.bounds("densenet201", "layercam")} == {
        "displacement": 0.15,
        "iou": 0.30,
    }
    assert t.as_dict()["gate"]["min_samples"] == 5


def test_repository_thresholds_are_valid() -> None:
    t = load_thresholds(Path(__file__).resolve().parents[1] / "thresholds.toml")
    assert t.methods == ("layercam", "gradcam++") and t.samples == "true-positive"
    assert t.bounds("densenet201", "layercam")


def _summary(
    mean: float, n: int = 40, lo: float | None = None, hi: float | None = None
) -> dict[str, Summary]:
    return {
        "overall": Summary(
            n,
            0,
            mean,
            mean,
            0.1,
            mean - 0.1,
            mean + 0.1,
            mean - 0.05 if lo is None else lo,
            mean + 0.05 if hi is None else hi,
        )
    }


def test_evaluate_rules_statuses() -> None:
    t = parse_thresholds(
        TEXT.replace("min_samples = 5", "min_samples = 30") + "\n[drift.densenet201]\niou.max_drop = 0.05\n"
    )
    rules = evaluate_rules(
        "densenet201", "layercam", {"iou": _summary(0.5), "displacement": _summary(0.2)}, t, approved={}
    )
    status = {r.rule: r.status for r in rules}
    assert status == {
        "densenet201/layercam/displacement.max": FAIL,
        "densenet201/layercam/iou.max_drop": SKIPPED,
        "densenet201/layercam/iou.min": PASS,
    }
    rules = evaluate_rules(
        "densenet201",
        "layercam",
        {"iou": _summary(0.5), "displacement": _summary(0.1)},
        t,
        approved={"layercam": {"iou": 0.6}},
    )
    drop = next(r for r in rules if r.rule.endswith("iou.max_drop"))
    assert drop.status == FAIL and drop.bound == pytest.approx(0.55)
    few = evaluate_rules(
        "densenet201",
        "layercam",
        {"iou": _summary(0.9, n=3), "displacement": _summary(0.0, n=3)},
        t,
        approved={},
    )
    assert {r.status for r in few if not r.rule.endswith("max_drop")} == {INCONCLUSIVE}


def test_below_min_samples_only_a_violation_beyond_the_ci_fails() -> None:
    """Too few samples cannot show a pass, but enough of them can show a violation: the
    whole 95 % CI beyond the bound fails; a CI that reaches the bound, or fewer than
    FEWEST_TO_FAIL samples, stays inconclusive."""
    text = TEXT.replace("min_samples = 5", "min_samples = 30")
    t = parse_thresholds(text.replace("[drift]\n", "[drift]\nconcentration_change.abs_max = 0.1\n"))

    def status(**s: dict[str, Summary]) -> dict[str, str]:
        rules = evaluate_rules("densenet201", "layercam", s, t, approved={})
        return {r.rule.rsplit("/", 1)[1]: r.status for r in rules}

    clear = status(
        iou=_summary(0.1, n=FEWEST_TO_FAIL, lo=0.05, hi=0.29),  # >= 0.30: all of the CI below
        displacement=_summary(0.2, n=FEWEST_TO_FAIL, lo=0.16, hi=0.25),  # <= 0.15: all above
        concentration_change=_summary(-0.2, n=FEWEST_TO_FAIL, lo=-0.3, hi=-0.11),  # |x| <= 0.1
    )
    assert clear == {"iou.min": FAIL, "displacement.max": FAIL, "concentration_change.abs_max": FAIL}
    reaches = status(
        iou=_summary(0.1, n=20, lo=0.05, hi=0.31),
        displacement=_summary(0.2, n=20, lo=0.15, hi=0.25),
        concentration_change=_summary(-0.2, n=20, lo=-0.3, hi=-0.05),
    )
    assert set(reaches.values()) == {INCONCLUSIVE}
    too_few = status(
        iou=_summary(0.1, n=FEWEST_TO_FAIL - 1, lo=0.05, hi=0.29),
        displacement=_summary(0.2, n=FEWEST_TO_FAIL - 1, lo=0.16, hi=0.25),
        concentration_change=_summary(-0.2, n=FEWEST_TO_FAIL - 1, lo=-0.3, hi=-0.11),
    )
    assert set(too_few.values()) == {INCONCLUSIVE}
    rule = next(
        r
        for r in evaluate_rules(
            "densenet201", "layercam", {"displacement": _summary(0.2, n=12, lo=0.16, hi=0.25)}, t, approved={}
        )
        if r.metric == "displacement"
    )
    assert (
        rule.observed == 0.2
        and "only 12 usable samples" in rule.message
        and "[0.1600, 0.2500]" in rule.message
    )
    assert decide_verdict([rule])[0] == FAIL


def test_ci_statistic_takes_the_conservative_end() -> None:
    t = parse_thresholds(TEXT.replace('statistic = "mean"', 'statistic = "ci"'))
    rules = evaluate_rules(
        "densenet201",
        "layercam",
        {"iou": _summary(0.35, lo=0.28, hi=0.42), "displacement": _summary(0.1, lo=0.05, hi=0.16)},
        t,
        approved={},
    )
    got = {r.rule.rsplit("/", 1)[1]: (r.status, r.observed) for r in rules}
    assert got["iou.min"] == (FAIL, 0.28) and got["displacement.max"] == (FAIL, 0.16)


def test_widening_a_proposal_by_another_calibration_keeps_the_looser_bound() -> None:
    """tools/widen_thresholds.py: per shared [drift] bound the looser of two calibrations
    (min: lower, max and abs_max: higher), said in the line's comment; the rest unchanged."""
    import importlib.util

    from drift_gate.gating.thresholds import parse_thresholds

    path = Path(__file__).resolve().parents[1] / "tools" / "widen_thresholds.py"
    spec = importlib.util.spec_from_file_location("widen_thresholds", path)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    proposed = (
        '[gate]\nmethods = ["layercam", "gradcam++"]\n\n[drift]\niou.min = 0.20\n\n'
        "[drift.tiny.layercam]\n"
        "iou.min = 0.35                       # runs 0.5 0.6\n"
        "displacement.max = 0.07              # runs 0.05 0.06\n"
        "correlation.min = 0.50\n\n"
        '[drift.tiny."gradcam++"]\nconcentration_change.abs_max = 0.06  # runs 0.01\n'
    )
    other = (
        "[drift]\niou.min = 0.25\n[drift.tiny.layercam]\niou.min = 0.28\ndisplacement.max = 0.06\n"
        'correlation.min = 0.6\n[drift.tiny."gradcam++"]\nconcentration_change.abs_max = 0.08\n'
        "[drift.other.layercam]\niou.min = 0.01\n"
    )
    text, changed = tool.widen(proposed, other, "B")
    assert changed == 2
    lines = text.splitlines()
    assert (
        "iou.min = 0.28                       "
        "# looser of two calibrations: 0.28 from B (here 0.35); runs 0.5 0.6" in lines
    )
    assert (
        "concentration_change.abs_max = 0.08  "
        "# looser of two calibrations: 0.08 from B (here 0.06); runs 0.01" in lines
    )
    assert "displacement.max = 0.07              # runs 0.05 0.06" in lines  # B's 0.06 is tighter
    assert "correlation.min = 0.50" in lines and "iou.min = 0.20" in lines  # tighter in B: kept
    rules = parse_thresholds(text)
    assert {(b.metric, b.kind): b.value for b in rules.bounds("tiny", "layercam")}[("iou", "min")] == 0.28
