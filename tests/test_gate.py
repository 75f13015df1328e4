"""The gate end to end, by exit code, with the tiny backbone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from drift_gate.cli import main
from drift_gate.models.checkpoint import load_checkpoint, save_checkpoint
from gatekit import RULES, assert_error, baseline_args, gate, result, run_suggested, tree_digest


def test_reference_against_itself_passes_at_ideal_values(env: dict[str, Path]) -> None:
    before = tree_digest(env["baselines"])
    assert gate(env, env["tl"]) == 0
    res = result(env)
    assert res["verdict"] == "pass" and res["schema_version"] == 1
    (c,) = res["candidates"]
    for method in ("layercam", "gradcam++"):
        s = c["summaries"][method]
        assert s["iou"]["overall"]["mean"] == pytest.approx(1.0)
        assert s["correlation"]["overall"]["mean"] == pytest.approx(1.0, abs=1e-3)
        assert s["displacement"]["overall"]["mean"] == pytest.approx(0.0, abs=1e-3)
    assert tree_digest(env["baselines"]) == before, "the gate must never write to baselines/"


def test_iou_violation_is_evidence_drift_despite_stable_auc(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    env["thresholds"].write_text(
        RULES.format(drift="iou.min = 0.999").replace("max_drop = 0.2", "max_drop = 1.0")
    )
    assert gate(env, env["ft"]) == 1
    (c,) = result(env)["candidates"]
    assert c["verdict"] == "fail" and c["label"] == "evidence drift despite stable AUC"
    failed = [r for r in c["rules"] if r["status"] == "fail"]
    assert failed and all(r["rule"].startswith("tiny/") and r["rule"].endswith("/iou.min") for r in failed)
    assert failed[0]["bound"] == 0.999 and failed[0]["direction"] == ">= 0.999"
    assert "thresholds.toml:" in failed[0]["source"]
    out = capsys.readouterr().out
    assert "FAIL" in out and "tiny/layercam/iou.min" in out


def test_auc_drop(env: dict[str, Path]) -> None:
    """A reference fitted to the audit images (AUC ~1 there) vs a candidate whose head
    says nothing (AUC exactly 0.5): the AUC rule fails, the label says so."""
    from drift_gate.data.datasets import ImageDataset
    from drift_gate.gating.stored import load_baseline
    from drift_gate.training.loops import extract_features, train_head
    from drift_gate.training.profiles import PhaseConfig

    model, meta = load_checkpoint(env["tl"])
    audit = load_baseline(env["baselines"] / "tiny").audit.resolve(env["data"], meta.classes)
    feats = extract_features(model, ImageDataset(audit, 32, meta.mean, meta.std), torch.device("cpu"), 8)
    train_head(
        model, feats, feats, PhaseConfig(epochs=300, lr=1e-2), batch_size=10, seed=0, classes=meta.classes
    )
    fitted = env["tmp"] / "fitted.pt"
    save_checkpoint(fitted, model, meta)
    assert main(baseline_args(env, fitted)) == 0
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    blank = env["tmp"] / "blank.pt"
    save_checkpoint(blank, model, meta)
    env["thresholds"].write_text(
        RULES.format(drift="displacement.max = 1.0").replace("max_drop = 0.2", "max_drop = 0.05")
    )
    assert gate(env, blank) == 1
    (c,) = result(env)["candidates"]
    assert c["reference_auc"] > 0.9 and c["auc"] == pytest.approx(0.5)
    assert c["label"] == "AUC regression"
    assert any(r["rule"] == "tiny/auc.max_drop" and r["status"] == "fail" for r in c["rules"])


def test_reports_and_github_integration(
    env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a GitHub job sees: the step summary, outputs and error annotations."""
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    env["thresholds"].write_text(RULES.format(drift="iou.min = 0.999"))
    assert gate(env, env["ft"]) == 1
    rules = result(env)["candidates"][0]["rules"]
    failed = [r for r in rules if r["status"] == "fail"]
    assert failed
    text = summary.read_text()
    assert text.startswith("earlier step\n## drift-gate: FAIL"), "the summary is appended, not overwritten"
    assert "| backbone | candidate | predictions | AUC | reference AUC | samples | verdict |" in text
    assert "| tiny | `ft.pt` | torch (cpu) |" in text and "**FAIL** evidence drift despite stable AUC" in text
    for r in failed:
        assert f"| `{r['rule']}` | FAIL |" in text
    assert output.read_text() == "verdict=fail\nexit_code=1\n"
    # an input error still tells the workflow its exit code
    assert gate(env, env["tmp"] / "missing.pt") == 2
    assert output.read_text().endswith("verdict=fail\nexit_code=1\nexit_code=2\n")
    annotations = [line for line in capsys.readouterr().out.splitlines() if line.startswith("::error")]
    assert sorted(a.split("::")[1] for a in annotations) == sorted(
        f"error title=drift-gate {r['rule']}" for r in failed
    )
    assert all("thresholds.toml:" in a for a in annotations), "each annotation says where the bound was set"
    suites = ET.parse(env["reports"] / "gate.junit.xml").getroot()
    cases = suites.findall(".//testcase")
    assert len(cases) == len(rules)
    assert {c.get("name") for c in cases if c.find("failure") is not None} == {r["rule"] for r in failed}
    page = (env["reports"] / "gate.html").read_text()
    assert page.count("<img") >= 6 and "data:image/png;base64," in page and "<table>" in page


def test_approve_records_results_and_enables_relative_rules(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    env["thresholds"].write_text(RULES.format(drift="iou.min = 0.0\niou.max_drop = 0.0"))
    assert gate(env, env["ft"]) == 0
    rel = [r for r in result(env)["candidates"][0]["rules"] if r["rule"].endswith("iou.max_drop")]
    assert rel and all(r["status"] == "skipped" for r in rel)
    assert main(["approve", "--result", str(env["reports"] / "gate.json")]) == 0
    assert "layercam/iou (mean): — ->" in capsys.readouterr().out
    approved = json.loads((env["baselines"] / "tiny" / "baseline.json").read_text())["approved"]
    assert approved["candidate_sha256"] == hashlib.sha256(env["ft"].read_bytes()).hexdigest()
    assert gate(env, env["ft"]) == 0  # same candidate: exactly at the approved value
    rel = [r for r in result(env)["candidates"][0]["rules"] if r["rule"].endswith("iou.max_drop")]
    assert rel and all(r["status"] == "pass" for r in rel)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("DRIFT_GATE_REQUIRE_BROWSER"),
    reason="Debian's chromium is not installed (.ci/run installs it)",
)
def test_html_report_renders_in_headless_chromium(env: dict[str, Path], tmp_path: Path) -> None:
    chromium = _chromium()
    assert chromium is not None, "DRIFT_GATE_REQUIRE_BROWSER is set but chromium is missing"
    env["thresholds"].write_text(RULES.format(drift="iou.min = 0.999"))
    gate(env, env["ft"])
    page = (env["reports"] / "gate.html").resolve()
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert 'data-images-ok="true"' in dom, "every <img> must decode in the browser"
    assert dom.count("<table") >= 3 and "tiny/layercam/iou.min" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    assert pixels.getextrema()[0] < 100, "the screenshot shows dark content (text, plots)"


@pytest.mark.parametrize("source", ["folder", "manifest"])
def test_profile_mode_creates_missing_baselines_and_gates_every_backbone(
    tmp_path: Path, trained: Path, phantom_root: Path, capsys: pytest.CaptureFixture[str], source: str
) -> None:
    """What `nox -s gate` runs: FT checkpoints of a profile, baselines made from TL when missing;
    the profile's data may be the folder or its manifest file."""
    out = trained.parent
    data = phantom_root / "manifest.csv" if source == "manifest" else phantom_root
    (tmp_path / "profiles.toml").write_text(
        f'[t]\ndata = "{data}"\nbackbones = ["tiny"]\ninput_size = 32\nweights = "none"\nout = "{out}"\n'
    )
    (tmp_path / "thresholds.toml").write_text(RULES.format(drift="iou.min = 0.0"))
    args = [
        "gate",
        "--profile",
        "t",
        "--profiles",
        str(tmp_path / "profiles.toml"),
        "--thresholds",
        str(tmp_path / "thresholds.toml"),
        "--baselines",
        str(tmp_path / "b"),
        "--reports",
        str(tmp_path / "r"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(args) == 2  # no baseline and no permission to create one
    assert "no baseline" in capsys.readouterr().err
    assert main([*args, "--create-missing-baselines"]) == 0
    assert "is missing: creating it from" in capsys.readouterr().err
    assert (tmp_path / "b" / "tiny" / "baseline.json").is_file()
    (c,) = json.loads((tmp_path / "r" / "gate.json").read_text())["candidates"]
    assert c["candidate"].endswith("ft.pt") and c["verdict"] == "pass"
    # a baseline made from another model than the TL checkpoint beside the FT one is refused
    made_from_ft = [
        *baseline_args(
            {"data": phantom_root, "baselines": tmp_path / "b", "thresholds": tmp_path / "thresholds.toml"},
            trained / "ft.pt",
        )
    ]
    assert main(made_from_ft) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "tl.pt: sha256 differs from the reference the baseline in" in err
    assert "gated against maps of a model it does not descend from" in err
    # the command it suggests runs as written, and then the gate does too
    assert run_suggested(err) == 0
    assert main(args) == 0


def test_profile_mode_gates_only_the_backbones_asked_for(
    tmp_path: Path, trained: Path, phantom_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nox -s train gate -- --backbone X` trains one backbone of a profile; the gate then
    takes the same --backbone and leaves the untrained ones alone."""
    (tmp_path / "profiles.toml").write_text(
        f'[t]\ndata = "{phantom_root}"\nbackbones = ["tiny", "mobilenet_v3_small"]\ninput_size = 32\n'
        f'weights = "none"\nout = "{trained.parent}"\n'
    )
    (tmp_path / "thresholds.toml").write_text(RULES.format(drift="iou.min = 0.0"))
    args = ["gate", "--profile", "t", "--profiles", str(tmp_path / "profiles.toml"), "--thresholds"]
    args += [str(tmp_path / "thresholds.toml"), "--baselines", str(tmp_path / "b"), "--reports"]
    args += [str(tmp_path / "r"), "--device", "cpu", "--no-progress", "--create-missing-baselines"]
    assert main(args) == 2  # mobilenet_v3_small was not trained
    assert "mobilenet_v3_small" in capsys.readouterr().err
    assert main([*args, "--backbone", "tiny"]) == 0
    (c,) = json.loads((tmp_path / "r" / "gate.json").read_text())["candidates"]
    assert c["arch"] == "tiny" and not (tmp_path / "b" / "mobilenet_v3_small").exists()
    capsys.readouterr()
    assert_error(
        main([*args, "--backbone", "resnet50v2"]),
        capsys,
        r"--backbone resnet50v2: not a backbone of profile 't' \(tiny, mobilenet_v3_small\)",
    )


def test_newly_correct_samples_are_their_own_group_with_their_own_rules(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Samples the reference got wrong and the candidate right are counted and summarised
    apart; [newly_correct] bounds apply to them, and are skipped (not failed) when the group
    is smaller than its min_samples."""
    env["thresholds"].write_text(
        RULES.format(drift="iou.min = 0.0") + "[newly_correct]\nmin_samples = 1\niou.min = 0.9999\n"
    )
    gate(env, env["ft"])
    c = result(env)["candidates"][0]
    assert sum(c["groups"].values()) == c["n_audit"] and c["groups"]["newly_correct"] > 0, c["groups"]
    newly = [r for r in c["rules"] if "/newly_correct/" in r["rule"]]
    assert {r["rule"] for r in newly} == {
        "tiny/layercam/newly_correct/iou.min",
        "tiny/gradcam++/newly_correct/iou.min",
    }
    assert all(r["status"] == "fail" for r in newly) and c["verdict"] == "fail"
    group = c["summaries"]["layercam"]["iou"]["newly_correct"]
    assert group["n"] + group["n_degenerate"] == c["groups"]["newly_correct"]
    assert "newly right" in capsys.readouterr().out
    env["thresholds"].write_text(
        RULES.format(drift="iou.min = 0.0") + "[newly_correct]\nmin_samples = 999\niou.min = 0.9999\n"
    )
    gate(env, env["ft"])
    c = result(env)["candidates"][0]
    newly = [r for r in c["rules"] if "/newly_correct/" in r["rule"]]
    assert newly and all(r["status"] == "skipped" for r in newly) and c["verdict"] == "pass"
