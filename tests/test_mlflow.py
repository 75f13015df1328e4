"""``gate --mlflow``: runs written to a real local tracking store (SQLite), read back with
MLflow's own client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drift_gate._machine import machine_line
from drift_gate.cli import main
from gatekit import assert_error, gate, result

mlflow = pytest.importorskip("mlflow")


def test_gate_logs_one_run_per_candidate_with_rules_and_artifacts(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(env["tmp"])  # a SQLite store keeps artifacts in ./mlruns, as MLflow does

    uri = f"sqlite:///{env['tmp'] / 'mlflow.db'}"
    code = gate(env, env["ft"], "--mlflow", uri, "--mlflow-experiment", "gates")
    doc = result(env)["candidates"][0]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("gates")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    run = parents[0]
    assert run.data.tags["verdict"] == doc["verdict"] and run.data.tags["exit_code"] == str(code)
    assert run.data.params["candidate_sha256"] == doc["candidate_sha256"]
    assert run.data.params["reference_sha256"] == doc["reference_sha256"]
    assert run.data.params["machine.gate"] == machine_line(doc["machines"]["gate"])
    assert run.data.metrics["auc"] == pytest.approx(doc["auc"])
    for r in doc["rules"]:
        key = r["rule"].replace("++", "pp")
        assert run.data.tags[f"rule.{key}"] == r["status"]
        if r["observed"] is not None:
            assert run.data.metrics[f"{key}.observed"] == pytest.approx(r["observed"])
        if r["bound"] is not None:
            assert run.data.metrics[f"{key}.bound"] == pytest.approx(r["bound"])
    assert sorted(c.data.tags["method"] for c in children) == sorted(doc["summaries"])
    for c in children:
        mean = doc["summaries"][c.data.tags["method"]]["iou"]["overall"]["mean"]
        assert c.data.metrics["iou.mean"] == pytest.approx(mean)
    files = {
        a.path for folder in ("reports", "overlays") for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert {"reports/gate.json", "reports/gate.html", "reports/gate.md", "reports/gate.junit.xml"} <= files
    assert any(f.startswith("overlays/layercam-") and f.endswith(".png") for f in files)
    local = client.download_artifacts(run.info.run_id, "reports/gate.json", str(env["tmp"]))
    assert json.loads(Path(local).read_text())["candidates"][0]["candidate_sha256"] == doc["candidate_sha256"]


def test_an_unusable_tracking_uri_fails_before_the_gate_runs(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "gate",
            "--candidate",
            str(env["ft"]),
            "--baselines",
            str(env["baselines"]),
            "--data",
            str(env["data"]),
            "--thresholds",
            str(env["thresholds"]),
            "--reports",
            str(env["reports"]),
            "--mlflow",
            "nosuchscheme://tracking",
            "--no-progress",
        ]
    )
    assert_error(code, capsys, r"--mlflow nosuchscheme://tracking: cannot use the tracking store")
    assert not env["reports"].exists()
