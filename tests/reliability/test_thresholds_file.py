"""Bad thresholds files: one line naming the file, line and key; never a silent pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from drift_gate.errors import ConfigError
from drift_gate.gating.thresholds import load_thresholds, parse_thresholds
from gatekit import assert_error, gate

CASES = {
    "syntax error": ("[drift\n", r"invalid TOML: .*\(at line 1, column \d+\)"),
    "bad value syntax": ("[drift]\niou.min = 0.3.1\n", r"invalid TOML: .*line 2, column"),
    "unknown table": ("[gates]\n", r"thresholds\.toml:1: gates: unknown table"),
    "unknown key in [gate]": (
        "[gate]\nmetods = ['layercam']\n[drift]\niou.min = 0.3\n",
        r"thresholds\.toml:2: gate\.metods: unknown key",
    ),
    "unknown key in [auc]": ("[auc]\nminimum = 0.9\n", r"thresholds\.toml:2: auc\.minimum: unknown key"),
    "gate not a table": (
        "gate = 5\n[auc]\nmin = 0.5\n",
        r"thresholds\.toml:1: gate: expected a table \[gate\], got int",
    ),
    "drift not a table": (
        "drift = 5\n[auc]\nmin = 0.5\n",
        r"thresholds\.toml:1: drift: expected a table \[drift\]",
    ),
    "backbone not a table": (
        "[drift]\nresnet50v2 = 3\n",
        r"thresholds\.toml:2: drift\.resnet50v2: expected a table of bounds",
    ),
    "misspelled metric": ("[drift]\niuo.min = 0.3\n", r"thresholds\.toml:2: drift\.iuo: unknown metric"),
    "newly_correct: a relative bound": (
        "[drift]\niou.min = 0.3\n[newly_correct]\niou.max_drop = 0.1\n",
        r"thresholds\.toml:4: newly_correct\.iou\.max_drop: newly-correct bounds are absolute",
    ),
    "sanity: what to randomise": (
        "[drift]\niou.min = 0.3\n[sanity]\nrandomise = 'all'\nmax_randomised_correlation = 0.5\n",
        r"thresholds\.toml:4: sanity\.randomise: expected 'head' or 'head\+block'",
    ),
    "sanity: a correlation out of range": (
        "[drift]\niou.min = 0.3\n[sanity]\nmax_class_correlation = 1.5\n",
        r"thresholds\.toml:4: sanity\.max_class_correlation: a correlation lies in \[-1, 1\]",
    ),
    "sanity: no bound": (
        "[drift]\niou.min = 0.3\n[sanity]\nrandomise = 'head'\n",
        r"thresholds\.toml:3: sanity: set max_randomised_correlation and/or max_class_correlation",
    ),
    "counterfactual: no bound": (
        "[drift]\niou.min = 0.3\n[counterfactual]\nborder = 0.1\n",
        r"thresholds\.toml:3: counterfactual: set max_score_drop",
    ),
    "counterfactual: border out of range": (
        "[drift]\niou.min = 0.3\n[counterfactual]\nborder = 0.6\nmax_score_drop = 0.1\n",
        r"thresholds\.toml:4: counterfactual\.border: a share of the side in \(0, 0\.5\)",
    ),
    "counterfactual: replacement": (
        "[drift]\niou.min = 0.3\n[counterfactual]\nbaseline = 'noise'\nmax_score_drop = 0.1\n",
        r"thresholds\.toml:4: counterfactual\.baseline: expected 'swap', 'edge', 'mean' or 'blur'",
    ),
    "newly_correct: min_samples": (
        "[drift]\niou.min = 0.3\n[newly_correct]\nmin_samples = 0\n",
        r"thresholds\.toml:4: newly_correct\.min_samples: expected a whole number >= 1",
    ),
    "misspelled bound": ("[drift]\niou.mni = 0.3\n", r"thresholds\.toml:2: drift\.iou\.mni: unknown bound"),
    "misspelled method": (
        "[gate]\nmethods = ['layercm']\n[drift]\niou.min = 0.3\n",
        r"thresholds\.toml:2: gate\.methods: unknown method 'layercm'",
    ),
    "misspelled method table": (
        "[drift.tiny.layercm]\niou.min = 0.3\n",
        r"thresholds\.toml:1: drift\.tiny\.layercm: unknown method 'layercm'",
    ),
    "wrong type (string)": (
        "[drift]\niou.min = 'high'\n",
        r"thresholds\.toml:2: drift\.iou\.min: expected a finite number, got str",
    ),
    "wrong type (bool)": ("[drift]\niou.min = true\n", "expected a finite number, got bool"),
    "wrong type (methods)": (
        "[gate]\nmethods = 'layercam'\n[drift]\niou.min = 0.3\n",
        "expected a non-empty list",
    ),
    "NaN bound": ("[drift]\niou.min = nan\n", "expected a finite number"),
    "contradictory bounds": (
        "[drift]\n\n\niou.min = 0.6\niou.max = 0.4\n",
        r"thresholds\.toml:4: drift\.iou\.min: contradictory",
    ),
    "negative relative bound": ("[drift]\niou.max_drop = -0.1\n", "max_drop must be >= 0"),
    "AUC bound outside [0, 1]": (
        "[auc]\nmin = 1.5\n",
        r"thresholds\.toml:2: auc\.min: an AUC bound must lie in",
    ),
    "bad sample selection": (
        "[gate]\nsamples = 'some'\n[drift]\niou.min=0.1\n",
        r"gate\.samples: expected one of",
    ),
    "min_samples 0": ("[gate]\nmin_samples = 0\n[drift]\niou.min=0.1\n", "expected an integer >= 1"),
    "no rules": ("[gate]\nstatistic = 'mean'\n", "no rules"),
    "empty file": ("", "no rules"),
}


@pytest.mark.parametrize("case", CASES)
def test_parser(case: str) -> None:
    text, message = CASES[case]
    with pytest.raises(ConfigError, match=message):
        parse_thresholds(text)


@pytest.mark.parametrize("case", CASES)
def test_gate_refuses(env: dict[str, Path], case: str, capsys: pytest.CaptureFixture[str]) -> None:
    text, message = CASES[case]
    env["thresholds"].write_text(text)
    line = assert_error(gate(env, env["tl"]), capsys, message)
    assert str(env["thresholds"].name) in line
    assert not (env["reports"] / "gate.json").exists()


def test_missing_file(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    env["thresholds"] = env["tmp"] / "nope.toml"
    assert_error(gate(env, env["tl"]), capsys, r"nope\.toml: thresholds file not found")


@pytest.mark.parametrize(
    ("bound", "pattern"),
    [
        ("iou.min = 2", r"iou.min: 2 is outside what iou can take: min must lie in \[0, 1\]"),
        ("correlation.min = -5", r"correlation.min: -5 is outside .* \[-1, 1\]"),
        ("displacement.max = 1.5", r"displacement.max: 1.5 is outside"),
        ("concentration_change.abs_max = 3", r"concentration_change.abs_max: 3 is outside .* \[0, 1\]"),
        (
            "correlation.max_drop = 2.5",
            r"correlation.max_drop: 2.5 is outside .* max_drop must lie in \[0, 2\]",
        ),
    ],
)
def test_bounds_outside_a_metrics_range_are_refused(tmp_path: Path, bound: str, pattern: str) -> None:
    path = tmp_path / "thresholds.toml"
    path.write_text(f"[auc]\nmin = 0.5\n[drift]\n{bound}\n")
    with pytest.raises(ConfigError, match=r"thresholds.toml:4: drift\." + pattern):
        load_thresholds(path)
