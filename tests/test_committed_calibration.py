"""The committed ``thresholds.toml`` against what calibration proposes from the committed runs
(``calibration/*.runs.json``, pooled): a bound edited by hand, or runs added without
re-proposing, fail here. The arithmetic is re-done on the stored runs (no training); whether
they are still what this code measures is the runs' key, which the proposal's header reports.

Every section the proposal writes is the committed file's to the character, its comments (each
run's value, the sds, k) included; the ci profile's sections, calibrated on their own, are the
only ones the committed file adds."""

from __future__ import annotations

from pathlib import Path

from drift_gate.gating.thresholds import load_thresholds
from drift_gate.studies.calibrate import propose_from_runs
from drift_gate.studies.calibrate_report import thresholds_text
from drift_gate.training.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]
#: sections the committed file holds beside the demo's proposal (the ci profile's backbone)
OWN = ("[drift.mobilenet_v3_small.layercam]", '[drift.mobilenet_v3_small."gradcam++"]')


def test_the_committed_thresholds_are_what_the_committed_runs_propose() -> None:
    files = tuple(sorted((ROOT / "calibration").glob("*.runs.json")))
    assert files, "the runs the committed thresholds were proposed from are committed"
    committed = load_thresholds(ROOT / "thresholds.toml")
    cal = propose_from_runs("demo", committed, files, stale_ok=True)
    demo = load_profile(ROOT / "profiles.toml", "demo")
    assert sorted(cal.runs) == sorted(demo.backbones), "every demo backbone, and only those"
    assert all(len(runs) == 10 for runs in cal.runs.values()), "seeds, machines, a retrained TL, pretrainings"
    text = thresholds_text(cal, committed)
    written = (ROOT / "thresholds.toml").read_text()
    proposed, kept = _sections(text), _sections(written)
    assert sorted(kept) == sorted([*proposed, *OWN]), "the proposal's sections and the ci profile's"
    for header, lines in proposed.items():
        assert kept[header] == lines, header
    arithmetic = [line for line in text.splitlines() if line.startswith("#   ")]
    assert len(arithmetic) == 2 * len(demo.backbones), "[auc] and [counterfactual], per backbone"
    written_lines = set(written.splitlines())
    for line in arithmetic:
        assert line in written_lines, line
    margin = {r.arch: r.bound for r in cal.margin_rows}
    assert committed.counterfactual_max_drop == max(margin.values())
    assert committed.auc_max_drop == max(r.bound for r in cal.auc_rows)


def _sections(text: str) -> dict[str, list[str]]:
    """``[header]`` -> its lines (blank lines dropped; a comment after a blank line is the
    file's, not the section's)."""
    out: dict[str, list[str]] = {}
    header, blank = "", False
    for line in text.splitlines():
        if line.startswith("["):
            header = line.split("#")[0].strip()
            out[header] = []
        elif line.startswith("#") and blank:
            header = ""
        elif line.strip() and header:
            out[header].append(line)
        blank = not line.strip()
    return out
