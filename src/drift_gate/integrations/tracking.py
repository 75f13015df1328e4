"""Gate results as MLflow runs (``pip install drift-gate[mlflow]``, ``gate --mlflow URI``).

Layout, one run per gated candidate in the experiment (default ``drift-gate``):

* **candidate run** ``<arch>: <candidate file>``:
  params: candidate, its sha256, baseline, reference and audit-set hashes, thresholds
  file, methods, audit size, precision, what computed the predictions, library versions;
  metrics: ``auc``, ``reference_auc``, ``auc_drop``, ``n_audit``, ``n_selected`` and,
  for every rule, ``<rule>.observed`` and ``<rule>.bound``;
  tags: ``verdict`` (pass / fail / inconclusive), ``verdict_label``, ``exit_code``, and
  ``rule.<rule>`` = its status;
  artifacts: ``reports/`` (gate.json, gate.md, gate.junit.xml, gate.html),
  ``overlays/<method>-most.png`` and ``-least.png`` (the samples that drifted most and
  least), ``thresholds.json`` (the resolved rules).
* **nested run per CAM method** ``<arch>/<method>``: every metric's summary over the
  selected samples (``<metric>.mean``, ``.median``, ``.p10``, ``.p90``, ``.n``).

MLflow's metric names allow letters, digits and ``_-. /:``; other characters become
``_`` (``gradcam++`` is logged as ``gradcampp``).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drift_gate._machine import machine_line
from drift_gate.errors import ConfigError, DataError

if TYPE_CHECKING:
    from drift_gate.gating.gate import CandidateResult, GateResult

__all__ = ["Tracking", "log_gate", "open_tracking"]

_FIELD = 500


@dataclass(frozen=True)
class Tracking:
    """An MLflow tracking store and the experiment runs go to."""

    uri: str
    experiment_id: str
    client: Any
    experiment: str = "drift-gate"


def open_tracking(uri: str, experiment: str = "drift-gate") -> Tracking:
    """Connects to the tracking store at ``uri`` (``sqlite:///mlflow.db``, ``http://…``,
    ``databricks``) and finds or creates ``experiment`` (before the gate runs, so that a
    wrong URI costs nothing).

    Raises:
        ConfigError: MLflow is not installed, or the store cannot be used.
    """
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("--mlflow needs MLflow: pip install 'drift-gate[mlflow]'") from None
    if not uri or "\x00" in uri or len(uri) > 2048:
        raise ConfigError("--mlflow: not a tracking URI")
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    except Exception as exc:  # MLflow raises many types for bad URIs and stores
        raise ConfigError(
            f"--mlflow {uri}: cannot use the tracking store ({type(exc).__name__}); give a tracking "
            "URI such as sqlite:///mlflow.db or http(s)://server"
        ) from None
    return Tracking(uri, str(exp_id), client, experiment)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("…" if len(text) > 200 else "")


def metric_key(name: str) -> str:
    """``name`` as an MLflow metric, param or tag key."""
    return re.sub(r"[^\w\-. /:]", "_", name.replace("++", "pp"))[:250]


def _value(x: object) -> str:
    text = x if isinstance(x, str) else json.dumps(x, sort_keys=True, default=str)
    return text[:_FIELD]


def _candidate_run(t: Tracking, result: GateResult, c: CandidateResult) -> str:
    from mlflow.entities import Metric, Param, RunTag

    run = t.client.create_run(t.experiment_id, run_name=f"{c.arch}: {Path(c.candidate).name}")
    rid = run.info.run_id
    params = {
        "candidate": c.candidate,
        "candidate_sha256": c.candidate_sha256,
        "arch": c.arch,
        "baseline": c.baseline,
        "reference_sha256": c.reference_sha256,
        "audit_sha256": c.audit_sha256,
        "baseline_digest": c.baseline_digest,
        "baseline_signed": c.baseline_signed,
        "thresholds_path": result.thresholds_path,
        "methods": ",".join(c.summaries),
        "classes": ",".join(c.classes),
        "precision": c.precision,
        "predictions": c.predictions,
        **{f"version.{k}": v for k, v in result.versions.items()},
        **{f"machine.{k}": machine_line(v) for k, v in c.machines.items()},
    }
    metrics = {
        "auc": c.auc,
        "reference_auc": c.reference_auc,
        "auc_drop": c.reference_auc - c.auc,
        "n_audit": c.n_audit,
        "n_selected": c.n_selected,
    }
    for r in c.rules:
        if r.observed is not None:
            metrics[f"{r.rule}.observed"] = r.observed
        if r.bound is not None:
            metrics[f"{r.rule}.bound"] = r.bound
    tags = {
        "verdict": str(c.verdict),
        "verdict_label": c.label,
        "exit_code": "0" if c.verdict == "pass" else "1",
        **{f"rule.{r.rule}": str(r.status) for r in c.rules},
    }
    t.client.log_batch(
        rid,
        metrics=[Metric(metric_key(k), float(v), 0, 0) for k, v in metrics.items() if v == v],
        params=[Param(metric_key(k), _value(v)) for k, v in params.items()],
        tags=[RunTag(metric_key(k), _value(v)) for k, v in tags.items()],
    )
    return str(rid)


def _method_runs(t: Tracking, c: CandidateResult, parent: str) -> None:
    from mlflow.entities import Metric

    for method, metrics in c.summaries.items():
        child = t.client.create_run(
            t.experiment_id,
            run_name=f"{c.arch}/{method}",
            tags={"mlflow.parentRunId": parent, "method": method, "verdict": str(c.verdict)},
        )
        values = []
        for metric, groups in metrics.items():
            overall = groups.get("overall", {})
            for stat in ("mean", "median", "p10", "p90", "n"):
                v = overall.get(stat)
                if isinstance(v, int | float) and v == v:
                    values.append(Metric(metric_key(f"{metric}.{stat}"), float(v), 0, 0))
        for i in range(0, len(values), 900):  # MLflow takes at most 1000 metrics per batch
            t.client.log_batch(child.info.run_id, metrics=values[i : i + 900])
        t.client.set_terminated(child.info.run_id)


def log_gate(
    t: Tracking,
    result: GateResult,
    artifacts: Mapping[str, Mapping[str, Any]],
    report_paths: Mapping[str, Path],
) -> list[str]:
    """Logs every candidate of ``result`` as a run (see the module docstring); returns
    the candidate runs' ids.

    Raises:
        DataError: the tracking store refused a write (the gate's own reports are
            already written by then).
    """
    from drift_gate.gating.report import overlay_pngs

    ids = []
    try:
        for c in result.candidates:
            rid = _candidate_run(t, result, c)
            ids.append(rid)
            _method_runs(t, c, rid)
            for path in report_paths.values():
                t.client.log_artifact(rid, str(path), "reports")
            with tempfile.TemporaryDirectory() as tmp:
                rules = Path(tmp) / "thresholds.json"
                rules.write_text(json.dumps(result.thresholds, indent=2, sort_keys=True) + "\n")
                t.client.log_artifact(rid, str(rules))
                for method in c.summaries:
                    for which, fig in overlay_pngs(c, method, artifacts.get(c.candidate)).items():
                        out = Path(tmp) / f"{metric_key(method)}-{which}.png"
                        out.write_bytes(fig.png)
                        out.with_suffix(".txt").write_text("\n".join(fig.captions) + "\n", encoding="utf-8")
                        t.client.log_artifact(rid, str(out), "overlays")
                        t.client.log_artifact(rid, str(out.with_suffix(".txt")), "overlays")
            t.client.set_terminated(rid, "FINISHED")
    except Exception as exc:  # the store's errors come in many types
        raise DataError(
            f"--mlflow {t.uri}: logging the gate result failed ({_short(exc)}); the reports are written"
        ) from None
    return ids
