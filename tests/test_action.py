"""The reusable GitHub Action (action.yml): its metadata is consistent, and its steps,
run as GitHub runs them (``bash --noprofile --norc -eo pipefail``, inputs through the
step's ``env``, the runner's variables set), produce the outputs, the job summary and
the annotations; inputs cannot inject commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatekit import RULES

ROOT = Path(__file__).resolve().parents[1]
ACTION: dict[str, Any] = yaml.safe_load((ROOT / "action.yml").read_text())
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def _step(name: str) -> dict[str, Any]:
    return next(s for s in ACTION["runs"]["steps"] if s.get("name") == name)


def test_metadata_is_consistent() -> None:
    assert ACTION["runs"]["using"] == "composite"
    declared = set(ACTION["inputs"])
    assert all(spec.get("description") for spec in ACTION["inputs"].values())
    assert not [n for n, spec in ACTION["inputs"].items() if spec.get("required")]
    step_ids = {s.get("id") for s in ACTION["runs"]["steps"]}
    for name, out in ACTION["outputs"].items():
        assert out.get("description"), name
        step = re.fullmatch(r"\$\{\{ steps\.(\w+)\.outputs\.\w+ \}\}", out["value"])
        assert step and step.group(1) in step_ids, name
    text = (ROOT / "action.yml").read_text()
    used = set(re.findall(r"inputs\.([\w-]+)", text))
    assert used <= declared, used - declared
    for s in ACTION["runs"]["steps"]:
        assert ("run" in s) == ("shell" in s), s["name"]  # composite run steps need a shell
        if "run" in s:
            assert "${{" not in s["run"], f"{s['name']}: expressions go through env, never into the script"


def _inputs(**given: str) -> dict[str, str]:
    values = {k: str(v.get("default", "")) for k, v in ACTION["inputs"].items()}
    values.update({k.replace("_", "-"): v for k, v in given.items()})
    return values


def _evaluate(text: str, inputs: dict[str, str], steps: dict[str, dict[str, str]]) -> str:
    def one(m: re.Match[str]) -> str:
        expr = m.group(1)
        if expr.startswith("inputs."):
            return inputs[expr.removeprefix("inputs.")]
        step, _, key = expr.removeprefix("steps.").split(".")
        return steps.get(step, {}).get(key, "")

    return EXPR.sub(one, text)


def _condition(expr: str, inputs: dict[str, str], steps: dict[str, dict[str, str]]) -> bool:
    """The ``if:`` forms the action uses: ``always()`` and ``==`` / ``!=`` joined by ``&&``."""
    result = True
    for term in (t.strip() for t in expr.split("&&")):
        if term == "always()":
            continue
        m = re.fullmatch(r"([\w.-]+) (==|!=) '([^']*)'", term)
        assert m, f"unsupported condition {term!r}"
        value = _evaluate("${{ " + m.group(1) + " }}", inputs, steps)
        result &= (value == m.group(3)) == (m.group(2) == "==")
    return result


def _run_step(
    name: str, inputs: dict[str, str], cwd: Path, steps: dict[str, dict[str, str]] | None = None
) -> tuple[subprocess.CompletedProcess[str] | None, dict[str, str], Path]:
    """Runs one ``run`` step as the runner would; returns the process (None when its
    ``if:`` skips it), the outputs it wrote to ``$GITHUB_OUTPUT`` and the job summary file."""
    step = _step(name)
    if "if" in step and not _condition(step["if"], inputs, steps or {}):
        return None, {}, cwd
    outputs, summary = cwd / f".{name}.output", cwd / f".{name}.summary"
    outputs.write_text("")
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", str(cwd)),
        "GITHUB_ACTIONS": "true",
        "CI": "true",
        "GITHUB_OUTPUT": str(outputs),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_ACTION_PATH": str(ROOT),
        "GITHUB_WORKSPACE": str(cwd),
        "RUNNER_TEMP": str(cwd),
        "OMP_NUM_THREADS": "2",
        **{k: _evaluate(str(v), inputs, steps or {}) for k, v in step.get("env", {}).items()},
    }
    script = cwd / f".{name}.sh"
    script.write_text(step["run"])
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    written = dict(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)
    return proc, written, summary


def _workspace(env: dict[str, Path], drift: str) -> Path:
    """A repository checkout as the action sees it: baselines, rules, data, candidate."""
    ws = env["tmp"] / "ws"
    ws.mkdir()
    (ws / "thresholds.toml").write_text(RULES.format(drift=drift))
    os.symlink(env["baselines"], ws / "baselines")
    return ws


def _gate_inputs(env: dict[str, Path], **extra: str) -> dict[str, str]:
    return _inputs(candidate=str(env["ft"]), data=str(env["data"]), args="--device cpu", **extra)


def test_gate_step_passes_and_writes_outputs_and_summary(env: dict[str, Path]) -> None:
    """Several candidates, one per line (blank lines ignored), gated in one step."""
    import json

    ws = _workspace(env, "iou.min = 0.0")
    inputs = _gate_inputs(env)
    inputs["candidate"] = f"{env['ft']}\n\n{env['tl']}\n"
    proc, out, summary = _run_step("Gate", inputs, ws)
    assert proc is not None and proc.returncode == 0, proc and proc.stderr
    assert out["verdict"] == "pass" and out["exit_code"] == "0", out
    assert out["report"] == "drift-gate-reports/gate.json" and (ws / out["report"]).is_file()
    assert "drift-gate" in summary.read_text() and "PASS" in summary.read_text().upper()
    doc = json.loads((ws / out["report"]).read_text())
    assert [Path(c["candidate"]).name for c in doc["candidates"]] == [env["ft"].name, env["tl"].name]
    verdict, _, _ = _run_step("Verdict", _inputs(), ws, {"gate": out})
    assert verdict is None, "a pass skips the verdict step"


def test_a_failing_rule_is_annotated_and_fails_the_verdict_step(env: dict[str, Path]) -> None:
    ws = _workspace(env, "iou.min = 0.999\ncorrelation.min = 0.999")
    proc, out, _ = _run_step("Gate", _gate_inputs(env), ws)
    assert proc is not None and proc.returncode == 0, "the gate step never fails, so reports are uploaded"
    assert out["verdict"] == "fail" and out["exit_code"] == "1"
    assert re.search(r"^::error title=drift-gate tiny/\w.*iou.min::", proc.stdout, re.M), proc.stdout
    verdict, _, _ = _run_step("Verdict", _inputs(), ws, {"gate": out})
    assert verdict is not None and verdict.returncode == 1
    assert "::error title=drift-gate::verdict fail (exit code 1)" in verdict.stdout
    report_only, _, _ = _run_step("Verdict", _inputs(fail_on_verdict="false"), ws, {"gate": out})
    assert report_only is None


def test_bad_input_gives_verdict_error_and_exit_code_2(env: dict[str, Path]) -> None:
    ws = _workspace(env, "iou.min = 0.0")
    proc, out, _ = _run_step("Gate", _inputs(candidate=str(ws / "missing.pt")), ws)
    assert proc is not None and proc.returncode == 0
    assert out["verdict"] == "error" and out["exit_code"] == "2"
    assert proc.stderr.count("drift-gate: error:") == 1


def test_inputs_cannot_inject_commands(env: dict[str, Path]) -> None:
    ws = _workspace(env, "iou.min = 0.0")
    evil = "$(touch pwned-candidate); `touch pwned-backtick`"
    _, out, _ = _run_step(
        "Gate", _inputs(candidate=evil, model="$(touch pwned-model)", args="; touch pwned-args"), ws
    )
    assert out["exit_code"] == "2" and not list(ws.glob("pwned*"))


def test_install_step_installs_this_action_with_the_torch_index(tmp_path: Path) -> None:
    """Run with a stand-in ``python`` that records its arguments (nothing is installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"\n')
    (bin_dir / "python").chmod(0o755)
    step = _step("Install drift-gate")
    assert _condition(step["if"], _inputs(), {}) and not _condition(step["if"], _inputs(install="none"), {})
    for index, want in (("https://download.pytorch.org/whl/cpu", True), ("", False)):
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "GITHUB_ACTION_PATH": str(ROOT),
            "RECORD": str(tmp_path / "args"),
            "TORCH_INDEX": _evaluate(step["env"]["TORCH_INDEX"], _inputs(torch_index=index), {}),
        }
        subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], env=env, check=True
        )
        args = (tmp_path / "args").read_text().splitlines()
        assert args[:3] == ["-m", "pip", "install"] and args[-1] == f"{ROOT}[models]"
        assert ("--extra-index-url" in args) == want


@pytest.mark.parametrize("workflow", sorted((ROOT / ".github" / "workflows").glob("*.yml")))
def test_workflows_use_the_local_action_with_declared_inputs(workflow: Path) -> None:
    """actionlint checks ``uses: ./`` against action.yml too; this says the same offline."""
    doc = yaml.safe_load(workflow.read_text())
    for job in doc["jobs"].values():
        for s in job.get("steps", []):
            if s.get("uses") == "./":
                given = s.get("with", {})
                assert set(given) <= set(ACTION["inputs"]), s
                assert "candidate" in given or "--profile" in given.get("args", ""), s
