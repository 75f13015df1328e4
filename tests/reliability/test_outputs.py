"""Outputs that are not the verdict can fail without changing it: the job summary, the
GitHub outputs, stdout and the report's figures each say so in one stderr line, and the
gate still exits with its verdict (gate.json is the record). File names are data: never
interpreted, always printable."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drift_gate.cli import main
from gatekit import baseline_args, gate, gate_args, result

ROOT = Path(__file__).resolve().parents[2]


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("drift-gate: warning:")]


@pytest.mark.parametrize("which", ["summary in a missing folder", "output is a folder"])
def test_github_files_that_cannot_be_written_keep_the_verdict(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    if which == "output is a folder":
        (env["tmp"] / "out-dir").mkdir()
        monkeypatch.setenv("GITHUB_OUTPUT", str(env["tmp"] / "out-dir"))
    else:
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(env["tmp"] / "no" / "such" / "summary.md"))
    assert gate(env, env["tl"]) == 0  # the reference against itself: a pass
    err = capsys.readouterr().err
    warned = _warnings(err)  # one line per output that failed (GITHUB_OUTPUT: verdict, exit code)
    assert warned and all("the verdict stands" in w for w in warned), err
    assert all(
        ("GITHUB_OUTPUT" if which == "output is a folder" else "GITHUB_STEP_SUMMARY") in w for w in warned
    )
    assert "drift-gate: error" not in err
    assert result(env)["verdict"] == "pass"


def _cli(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "drift_gate", *args], env=env, timeout=300, **kwargs
    )


@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_a_stdout_that_cannot_be_written_keeps_the_verdict(env: dict[str, Path], stdout: str) -> None:
    """`/dev/full` (every write fails) and a closed descriptor: still exit 0 for a pass."""
    args = gate_args(env, env["tl"])
    if stdout == "full":
        with open("/dev/full", "w") as full:
            proc = _cli(args, stdout=full, stderr=subprocess.PIPE)
    else:
        proc = _cli(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "drift-gate: error" not in err, err
    if stdout == "full":
        assert any("stdout" in w for w in _warnings(err)), err
    assert result(env)["verdict"] == "pass"


def test_a_candidate_name_that_is_not_utf8_is_gated_and_shown_escaped(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    name = os.fsdecode(b"cand-\xff\xfe.pt")  # what the OS gives for these bytes
    candidate = env["tmp"] / name
    shutil.copy(env["ft"], candidate)
    code = gate(env, candidate)
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    assert "Traceback" not in err and "unexpected" not in err, err
    assert "cand-\\udcff\\udcfe.pt" in (env["reports"] / "gate.md").read_text(encoding="utf-8")
    assert "cand-\\udcff\\udcfe.pt" in out


@pytest.mark.parametrize("name", ["a$x^2$.png", "b%s{0}.png", "c<i>&amp;.png", "d\\$\\frac.png"])
def test_an_audit_file_name_is_never_interpreted(
    env: dict[str, Path], phantom_root: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Mathtext, format strings and HTML in a file name stay its characters in every report."""
    root = shutil.copytree(phantom_root, env["tmp"] / "data")
    with (root / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    test_rows = [r for r in rows if r["split"] == "test"]
    for r in test_rows:  # every test image, so the renamed ones are in the audit set
        old = root / r["path"]
        r["path"] = str(Path(r["path"]).with_name(f"{old.stem}-{name}"))
        old.rename(root / r["path"])
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    local = {**env, "data": root, "baselines": env["tmp"] / "b2"}
    assert main(baseline_args(local, env["tl"])) == 0
    code = gate(local, env["ft"])
    err = capsys.readouterr().err
    assert code in (0, 1), err
    assert "unexpected" not in err and "Traceback" not in err, err
    page = (env["reports"] / "gate.html").read_text(encoding="utf-8")
    import html

    assert html.escape(name) in page
    assert json.loads((env["reports"] / "gate.json").read_text())["candidates"][0]["sample_ids"]


def test_a_figure_that_cannot_be_drawn_keeps_the_verdict(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An audit image gone between the gate's pass and the report (here: reading fails):
    the overlays are left out with one warning, the report and the exit code stay."""
    import drift_gate.gating.report as report

    def gone(*args: object, **kwargs: object) -> object:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(report, "_overlays", gone)
    assert gate(env, env["tl"]) == 0
    warned = _warnings(capsys.readouterr().err)
    assert warned and all("overlays" in w and "the verdict stands" in w for w in warned), warned
    assert "drifted most" not in (env["reports"] / "gate.html").read_text()
