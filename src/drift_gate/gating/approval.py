"""Approvals: a reviewed gate result recorded in its baseline, under the baseline's lock, with
the baseline's history. Only a result that passed, unless forced.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drift_gate._io import (
    atomic_write_text,
)
from drift_gate.errors import DataError, StaleBaselineError
from drift_gate.gating.baseline import APPROVED_STATISTIC, Baseline, baseline_lock, read_baseline

if TYPE_CHECKING:
    pass

__all__ = ["approve"]


def approve(result: dict[str, Any], candidate: dict[str, Any], *, force: bool = False) -> list[str]:
    """Records one candidate of a gate result (``gate.json``) as the approved one in
    its baseline (atomically); returns the lines describing what changed. Every
    approval is appended to the baseline's ``history``.

    Args:
        force: approve a candidate whose verdict was not ``pass`` (recorded as
            forced in the history).

    Raises:
        DataError: the candidate did not pass and ``force`` is not set.
        StaleBaselineError: the baseline changed since the gate ran (other
            reference, audit set or maps), so the result no longer applies.
    """
    verdict = candidate.get("verdict")
    if verdict != "pass" and not force:
        raise DataError(
            f"{Path(str(candidate.get('candidate'))).name}: its gate verdict was {verdict!r}, not 'pass'; "
            "review the report, then approve with --force to accept it anyway (recorded in the "
            "baseline's history)"
        )
    folder = Path(candidate["baseline"])
    with baseline_lock(folder):  # one approval at a time: none is lost
        return _record(result, candidate, read_baseline(folder), verdict)


def _record(result: dict[str, Any], candidate: dict[str, Any], base: Baseline, verdict: Any) -> list[str]:
    """Writes the approval of ``candidate`` into ``base`` (the caller holds its lock)."""
    if (
        candidate["reference_sha256"] != base.meta["reference"]["sha256"]
        or candidate["audit_sha256"] != base.audit.sha256
    ):
        raise StaleBaselineError(
            f"{base.path}: the baseline changed since this gate result was "
            "made; run the gate again before approving"
        )
    statistic = result["thresholds"]["gate"]["statistic"]
    key = APPROVED_STATISTIC[statistic]
    stats = {
        m: {metric: groups["overall"][key] for metric, groups in per.items()}
        for m, per in candidate["summaries"].items()
    }
    new = {
        "candidate": candidate["candidate"],
        "candidate_sha256": candidate["candidate_sha256"],
        "auc": candidate["auc"],
        "statistic": key,
        "statistics": stats,
    }
    old = base.approved
    changes = [
        f"{base.path}: approved {Path(candidate['candidate']).name} "
        f"(sha256 {candidate['candidate_sha256'][:12]}…)"
    ]
    if old.get("auc") != new["auc"]:
        changes.append(f"  auc: {old.get('auc', '—')} -> {new['auc']:.4f}")
    for m, per in stats.items():
        for metric, value in per.items():
            before = (old.get("statistics") or {}).get(m, {}).get(metric)
            if value is not None and before != value:
                shown = "—" if before is None else f"{before:.4f}"
                changes.append(f"  {m}/{metric} ({key}): {shown} -> {value:.4f}")
    if verdict != "pass":
        changes.append(f"  forced: the gate's verdict was {verdict}")
    meta = dict(base.meta)
    meta["approved"] = new
    meta["history"] = [
        *(meta.get("history") or []),
        {
            "event": "approve",
            "candidate": candidate["candidate"],
            "candidate_sha256": candidate["candidate_sha256"],
            "verdict": verdict,
            "forced": verdict != "pass",
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    ]
    atomic_write_text(base.path / "baseline.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return changes
