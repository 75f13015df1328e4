"""Bad baselines: each message names the file and says how to refresh it (exit code 2)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from drift_gate.cli import main
from gatekit import RULES, assert_error, gate

REFRESH = "refresh it with `drift-gate baseline"


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CASES: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing": (shutil.rmtree, r"tiny/baseline\.json: no baseline \(missing or partially written\)"),
    "partially written (no baseline.json)": (
        lambda b: (b / "baseline.json").unlink(),
        r"baseline\.json: no baseline \(missing or partially written\)",
    ),
    "partially written (no maps.npz)": (
        lambda b: (b / "maps.npz").unlink(),
        r"maps\.npz: missing from the baseline",
    ),
    "baseline.json truncated": (
        lambda b: (b / "baseline.json").write_text((b / "baseline.json").read_text()[:40]),
        r"baseline\.json: unreadable baseline",
    ),
    "baseline.json lacks a field": (
        lambda b: _edit_json(b / "baseline.json", lambda d: d.pop("maps")),
        r"baseline\.json: baseline\.json lacks the field 'maps'",
    ),
    "maps tampered": (lambda b: _flip_byte(b / "maps.npz"), r"maps\.npz: hash differs from baseline\.json"),
    "audit set tampered": (
        lambda b: _edit_json(b / "audit.json", lambda d: d["samples"].reverse()),
        r"audit\.json: hash differs from baseline\.json",
    ),
    "audit.json not JSON": (
        lambda b: (b / "audit.json").write_text("{"),
        r"audit\.json: unreadable audit set",
    ),
    "older schema": (
        lambda b: _edit_json(b / "baseline.json", lambda d: d.update(schema_version=0)),
        r"baseline\.json: baseline schema 0 but this drift-gate reads schema 1",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_baseline(env: dict[str, Path], case: str, capsys: pytest.CaptureFixture[str]) -> None:
    damage, message = CASES[case]
    damage(env["baselines"] / "tiny")
    line = assert_error(gate(env, env["tl"]), capsys, message)
    assert REFRESH in line, line


def test_baseline_from_another_reference(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert gate(env, env["tl"], "--reference", str(env["tl"])) == 0
    capsys.readouterr()
    line = assert_error(
        gate(env, env["tl"], "--reference", str(env["ft"])), capsys, "sha256 differs from the reference"
    )
    assert "refresh it with `drift-gate baseline --reference" in line


def test_thresholds_need_a_method_the_baseline_lacks(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    env["thresholds"].write_text(
        RULES.replace('"gradcam++"]', '"gradcam++", "xgradcam"]').format(drift="iou.min=0")
    )
    line = assert_error(gate(env, env["tl"]), capsys, r"tiny: baseline has no maps for xgradcam")
    assert "refresh it" in line


def test_approved_under_another_statistic(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Relative bounds compare like with like: a mean approved is no bound for a median."""
    env["thresholds"].write_text(RULES.format(drift="iou.min = 0.0\niou.max_drop = 0.1"))
    assert gate(env, env["ft"]) == 0
    assert main(["approve", "--result", str(env["reports"] / "gate.json")]) == 0
    env["thresholds"].write_text(
        RULES.format(drift="iou.min = 0.0\niou.max_drop = 0.1").replace('"mean"', '"median"')
    )
    capsys.readouterr()
    assert_error(
        gate(env, env["ft"]), capsys, r"baseline\.json: the approved result was recorded as the mean.*approve"
    )


def test_approve_refuses_a_result_for_another_baseline(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert gate(env, env["ft"]) == 0
    _edit_json(env["reports"] / "gate.json", lambda d: d["candidates"][0].update(audit_sha256="0" * 64))
    capsys.readouterr()
    assert_error(
        main(["approve", "--result", str(env["reports"] / "gate.json")]),
        capsys,
        "the baseline changed since this gate result was made; run the gate again",
    )


def test_approve_with_unreadable_result(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert_error(
        main(["approve", "--result", str(env["tmp"] / "none.json")]),
        capsys,
        "none.json: cannot read gate result",
    )
