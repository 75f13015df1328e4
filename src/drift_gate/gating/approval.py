"""Approvals: a reviewed gate result recorded in its baseline, under the baseline's lock, with
the baseline's history. Only a result that passed, unless forced; only one the gate made
against the baseline as it is now (bound by :attr:`Baseline.digest`); with a public key
configured, only a signed one; the new baseline is written whole and, with a signing key,
signed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drift_gate.errors import DataError, StaleBaselineError
from drift_gate.gating.baseline import APPROVED_STATISTIC, write_set
from drift_gate.gating.signing import key_id
from drift_gate.gating.stored import Baseline, baseline_lock, read_baseline

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from drift_gate.gating.signing import Keyring

__all__ = ["approve", "approver"]


def approver(by: str | None = None) -> str:
    """Who approves: ``by``, else ``$GITHUB_ACTOR`` (in a GitHub workflow), else the user
    running the process.

    Raises:
        DataError: a name that is empty, over 200 characters or holds control characters.
    """
    import getpass
    import os

    if by is None:
        by = os.environ.get("GITHUB_ACTOR") or ""
        if not by:
            try:
                by = getpass.getuser()
            except (OSError, KeyError):
                by = "unknown"
    if not by.strip() or len(by) > 200 or any(ord(ch) < 32 or ord(ch) == 127 for ch in by):
        raise DataError(f"approver {by[:40]!r}: not a usable name (1-200 printable characters)")
    return by


def approve(
    result: dict[str, Any],
    candidate: dict[str, Any],
    *,
    force: bool = False,
    public_key: Keyring | None = None,
    signer: Ed25519PrivateKey | None = None,
    by: str | None = None,
) -> list[str]:
    """Records one candidate of a gate result (``gate.json``) as the approved one in
    its baseline (atomically); returns the lines describing what changed. Every
    approval is appended to the baseline's ``history``.

    Args:
        force: approve a candidate whose verdict was not ``pass`` (recorded as
            forced in the history).
        public_key: verify the baseline's signature before changing it.
        signer: sign the approved baseline (required when ``public_key`` is given:
            an unsigned baseline would then be refused by every gate).
        by: who approves, for the history (default :func:`approver`).

    Raises:
        DataError: the candidate did not pass and ``force`` is not set.
        StaleBaselineError: the baseline changed since the gate ran (other
            reference, audit set or maps), so the result no longer applies.
    """
    name, verdict = candidate.get("candidate"), candidate.get("verdict")
    if not isinstance(name, str) or not name:
        raise DataError(f"the gate result names no candidate ({name!r}): not a result the gate wrote")
    if verdict not in ("pass", "fail", "inconclusive"):
        raise DataError(
            f"{Path(name).name}: the gate result records no verdict ({verdict!r}): not a result the "
            "gate wrote"
        )
    if verdict != "pass" and not force:
        raise DataError(
            f"{Path(name).name}: its gate verdict was {verdict!r}, not 'pass'; "
            "review the report, then approve with --force to accept it anyway (recorded in the "
            "baseline's history)"
        )
    if public_key is not None and signer is None:
        raise DataError(
            "a public key is configured, so the approved baseline must be signed: set "
            "DRIFT_GATE_SIGNING_KEY (or --signing-key); nothing was changed"
        )
    named = candidate.get("baseline")
    folder = Path(named) if isinstance(named, str) and named and "\x00" not in named else None
    if folder is None or not (folder / "baseline.json").is_file():
        raise StaleBaselineError(f"the gate result names no baseline that exists ({str(named)[:80]!r})")
    with baseline_lock(folder):  # one approval at a time: none is lost
        base = read_baseline(folder, public_key)
        try:
            return _record(result, candidate, base, verdict, signer, approver(by))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"the gate result is malformed ({exc.__class__.__name__}: {exc}); nothing was changed"
            ) from None


def _record(
    result: dict[str, Any],
    candidate: dict[str, Any],
    base: Baseline,
    verdict: Any,
    signer: Ed25519PrivateKey | None,
    by: str,
) -> list[str]:
    """Writes the approval of ``candidate`` into ``base`` (the caller holds its lock)."""
    bound = candidate.get("baseline_digest")
    if bound is None:
        raise DataError(
            f"{base.path}: the gate result does not say which state of the baseline it was made "
            "against (made by an older drift-gate, or not by the gate); run the gate again"
        )
    if (
        bound != base.digest
        or candidate["reference_sha256"] != base.meta["reference"]["sha256"]
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
    changes = _changes(base, candidate, new, verdict)
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
            "by": by,
            **({"key_id": key_id(signer)} if signer is not None else {}),
        },
    ]
    files = {
        "baseline.json": (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(),
        "audit.json": (base.path / "audit.json").read_bytes(),
        "maps.npz": (base.path / "maps.npz").read_bytes(),
    }
    write_set(base.path, files, signer)
    return changes


def _changes(base: Baseline, candidate: dict[str, Any], new: dict[str, Any], verdict: Any) -> list[str]:
    """What the approval changes, one line each: the candidate, then every approved value
    that moves (AUC and each method's statistics), and whether the approval was forced."""
    old, key = base.approved, new["statistic"]
    changes = [
        f"{base.path}: approved {Path(candidate['candidate']).name} "
        f"(sha256 {candidate['candidate_sha256'][:12]}…)"
    ]
    if old.get("auc") != new["auc"]:
        changes.append(f"  auc: {old.get('auc', '—')} -> {new['auc']:.4f}")
    for m, per in new["statistics"].items():
        for metric, value in per.items():
            before = (old.get("statistics") or {}).get(m, {}).get(metric)
            if value is not None and before != value:
                shown = "—" if before is None else f"{before:.4f}"
                changes.append(f"  {m}/{metric} ({key}): {shown} -> {value:.4f}")
    if verdict != "pass":
        changes.append(f"  forced: the gate's verdict was {verdict}")
    return changes
