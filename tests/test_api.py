"""The Python API: what a user's own pytest or training script calls."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import drift_gate
from drift_gate.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light_and_names_are_public() -> None:
    code = "import sys, drift_gate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "import drift_gate must not load torch"
    for name in drift_gate.__all__:
        assert getattr(drift_gate, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        drift_gate.nope  # noqa: B018


def test_gate_returns_typed_results(env: dict[str, Path]) -> None:
    result = drift_gate.gate(
        candidates=[env["ft"]],
        data=env["data"],
        baselines=env["baselines"],
        thresholds=env["thresholds"],
        device="cpu",
    )
    assert result.verdict is drift_gate.Status.PASS and result.exit_code == 0
    assert result.report_paths == {}, "no reports unless asked for"
    (c,) = result.candidates
    assert c.arch == "tiny" and c.verdict is drift_gate.Status.PASS
    by_scope = {r.scope for r in c.rules}
    assert by_scope == {"auc", "drift"}
    drift = [r for r in c.rules if r.scope == "drift"]
    assert {r.method for r in drift} == {"layercam", "gradcam++"} and {r.metric for r in drift} == {"iou"}
    assert all(isinstance(r.status, drift_gate.Status) and r.kind == "min" for r in drift)


def test_gate_writes_reports_and_approve_takes_the_result(env: dict[str, Path]) -> None:
    result = drift_gate.gate(
        candidates=[env["ft"]],
        data=env["data"],
        baselines=env["baselines"],
        thresholds=env["thresholds"],
        reports=env["reports"],
        device="cpu",
    )
    assert set(result.report_paths) == {"json", "markdown", "junit", "html"}
    assert json.loads(result.report_paths["json"].read_text())["verdict"] == "pass"
    (approval,) = drift_gate.approve(result=result)
    assert approval.baseline == env["baselines"] / "tiny" and not approval.forced
    assert approval.changes[0].startswith(f"{env['baselines'] / 'tiny'}: approved ft.pt")


def test_errors_are_raised_not_printed(env: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="nothing to gate"):
        drift_gate.gate(data=env["data"])
    with pytest.raises(drift_gate.StaleBaselineError, match="no baseline"):
        drift_gate.gate(candidates=[env["ft"]], data=env["data"], baselines=env["tmp"] / "none", device="cpu")


def test_readme_python_example_runs_as_written(env: dict[str, Path], tmp_path: Path) -> None:
    """The README's example, run in a folder laid out like the demo's (the tiny model
    stands in for DenseNet201)."""
    readme = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    work = tmp_path / "work"
    (work / "checkpoints" / "densenet201").mkdir(parents=True)
    shutil.copy(env["ft"], work / "checkpoints" / "densenet201" / "ft.pt")
    shutil.copytree(env["data"], work / "data" / "phantoms")
    shutil.copytree(env["baselines"], work / "checkpoints" / "baselines")  # where the demo makes them
    shutil.copy(env["thresholds"], work / "thresholds.toml")
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pass" in out.stdout


def test_importing_the_gate_loads_no_training_code() -> None:
    code = (
        "import sys, drift_gate.gating.gate, drift_gate.gating.report; "
        "print(sorted(m for m in sys.modules if m.startswith(('drift_gate.training', 'drift_gate.studies', "
        "'drift_gate.data.phantom', 'scipy.ndimage'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
