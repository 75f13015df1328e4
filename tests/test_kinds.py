"""Bound kinds as types (drift_gate.gating.kinds): each kind's reading, comparison,
margin and conservative CI end; and a kind registered in KINDS alone reaches the
thresholds parser, the rules and validate's margins."""

from __future__ import annotations

import math

import pytest

from drift_gate.errors import ConfigError
from drift_gate.evidence.registry import Direction
from drift_gate.evidence.summary import Summary
from drift_gate.gating.kinds import KINDS, Kind, for_direction
from drift_gate.gating.rules import FAIL, PASS, SKIPPED, evaluate_rules
from drift_gate.gating.thresholds import parse_thresholds
from drift_gate.studies.calibrate import propose_bound
from drift_gate.studies.validate_report import _margin
from gatekit import RULES

#: kind -> (bound given, approved, direction text, effective bound, observed that holds, that breaks)
CASES = {
    "min": (0.3, None, ">= 0.3", 0.3, 0.3, 0.29),
    "max": (0.2, None, "<= 0.2", 0.2, 0.2, 0.21),
    "abs_max": (0.1, None, "|x| <= 0.1", 0.1, -0.1, -0.11),
    "max_drop": (0.05, 0.8, ">= approved 0.8000 - 0.05", 0.75, 0.75, 0.74),
    "max_rise": (0.05, 0.1, "<= approved 0.1000 + 0.05", 0.15000000000000002, 0.15, 0.16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_kind_reads_compares_and_measures_its_margin(name: str) -> None:
    value, approved, text, bound, ok, broken = CASES[name]
    kind = KINDS[name]
    assert kind.effective(value, approved) == (text, bound)
    assert kind.holds(ok, bound) and not kind.holds(broken, bound)
    assert kind.margin(ok, bound) >= -1e-12 and kind.margin(broken, bound) < 0
    assert math.isclose(abs(kind.margin(broken, bound)), 0.01, abs_tol=1e-9)


def test_the_conservative_end_and_a_whole_interval_beyond_the_bound() -> None:
    assert KINDS["min"].conservative(0.2, 0.4) == 0.2 == KINDS["max_drop"].conservative(0.2, 0.4)
    assert KINDS["max"].conservative(0.2, 0.4) == 0.4 == KINDS["max_rise"].conservative(0.2, 0.4)
    assert KINDS["abs_max"].conservative(-0.5, 0.4) == 0.5
    assert KINDS["min"].interval_breaks(0.1, 0.2, 0.3) and not KINDS["min"].interval_breaks(0.1, 0.3, 0.3)
    assert KINDS["max"].interval_breaks(0.4, 0.5, 0.3) and not KINDS["max"].interval_breaks(0.2, 0.5, 0.3)
    assert KINDS["abs_max"].interval_breaks(-0.5, -0.2, 0.1) and not KINDS["abs_max"].interval_breaks(
        -0.5, 0.0, 0.1
    )


def test_allowed_values_and_calibrations_proposals() -> None:
    assert KINDS["min"].allowed(-1, 1) == (-1, 1)
    assert KINDS["abs_max"].allowed(-1, 0.5) == (0.0, 1)
    assert KINDS["max_drop"].allowed(0, 1) == (0.0, 1)
    assert [for_direction(d).name for d in Direction] == ["min", "max", "abs_max"]
    assert propose_bound(Direction.HIGHER, 0.5, 0.05, 3.0, (0, 1)) == ("min", 0.35)
    assert propose_bound(Direction.LOWER, 0.1, 0.02, 3.0, (0, 1)) == ("max", 0.16)
    assert propose_bound(Direction.ZERO, -0.05, 0.02, 3.0, (-1, 1)) == ("abs_max", 0.11)
    assert propose_bound(Direction.HIGHER, 0.05, 0.05, 3.0, (0, 1)) == ("min", 0.0)  # kept in range
    assert propose_bound(Direction.LOWER, -0.2, 0.02, 3.0, (0, 1)) == ("max", 0.0)  # on both sides
    with pytest.raises(AssertionError):
        KINDS["max_drop"].propose(0.5, 0.1, 3.0, (0, 1))


def _summary(mean: float, n: int = 50) -> Summary:
    return Summary(n, 0, mean, mean, 0.01, mean, mean, mean - 0.01, mean + 0.01)


def test_a_kind_registered_once_is_parsed_ruled_on_and_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension point: one entry in KINDS (here a floor spelled ``at_least``) and
    nothing else, and thresholds files, rules and margins know it."""
    with pytest.raises(ConfigError, match="unknown bound 'at_least'"):
        parse_thresholds(RULES.format(drift="iou.at_least = 0.3"))
    monkeypatch.setitem(KINDS, "at_least", Kind("at_least", lower=True))
    t = parse_thresholds(RULES.format(drift="iou.at_least = 0.3"))
    with pytest.raises(ConfigError, match=r"at_least must lie in \[0, 1\]"):
        parse_thresholds(RULES.format(drift="iou.at_least = 1.5"))
    for mean, status in ((0.35, PASS), (0.25, FAIL)):
        (rule,) = evaluate_rules("tiny", "layercam", {"iou": {"overall": _summary(mean)}}, t, approved={})
        assert (rule.rule, rule.status, rule.direction) == ("tiny/layercam/iou.at_least", status, ">= 0.3")
        assert math.isclose(_margin(rule), mean - 0.3)


def test_a_relative_kind_waits_for_an_approved_value_and_is_refused_per_class() -> None:
    t = parse_thresholds(RULES.format(drift="iou.max_drop = 0.05"))
    summaries = {"iou": {"overall": _summary(0.5)}}
    (waiting,) = evaluate_rules("tiny", "layercam", summaries, t, approved={})
    assert waiting.status == SKIPPED and "approve" in waiting.message
    (checked,) = evaluate_rules("tiny", "layercam", summaries, t, approved={"layercam": {"iou": 0.6}})
    assert checked.status == FAIL and checked.bound == pytest.approx(0.55)
    with pytest.raises(ConfigError, match=r"per-class bounds are absolute \(min, max, abs_max\)"):
        parse_thresholds(RULES.format(drift="[drift.tiny.labels.normal]\niou.max_drop = 0.1"))
