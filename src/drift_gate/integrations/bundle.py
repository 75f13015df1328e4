"""Change-control evidence bundles: one archive per gated model update.

``drift-gate bundle --result reports/gate.json`` writes, for each candidate of the
result, ``bundle-<arch>-<candidate sha256[:12]>.tar`` holding (under
``drift-gate-bundle/``):

* ``summary.md``: the update laid out by the sections of a predetermined change control
  plan: what changed (candidate and reference, model), how it was evaluated (data, audit
  set, methods, rules), the outcome (verdict, AUC, every rule), who approved (history),
  and what it all rests on (hashes, library versions);
* ``bundle.json``: the same, machine-readable;
* ``gate/``: the gate's reports (``gate.json`` and those written beside it);
* ``baseline/``: the baseline's files as they are now (``baseline.json``, ``audit.json``,
  ``maps.npz``, and ``signature.json`` when signed);
* ``MANIFEST.sha256``: the sha256 of every other file, in ``sha256sum`` format;
* ``MANIFEST.sig``: with a signing key, an Ed25519 signature over the manifest.

``drift-gate verify-bundle FILE`` checks an archive without unpacking it to disk:
regular files only, paths inside the bundle, sizes bounded, every file listed in the
manifest with its hash and nothing else, ``bundle.json`` consistent with the gate result
and baseline it names, and, with a public key, the manifest's signature.

Size: the bundle's writer and its verifier side by side, so that what one writes and the
other checks are read against each other in one file.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from drift_gate._io import atomic_write_bytes, read_bounded
from drift_gate._machine import machines_line, well_formed
from drift_gate.errors import BundleMismatchError, DataError, StaleBaselineError
from drift_gate.gating.signing import BASELINE_FILES, SIGNATURE_FILE, files_digest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from drift_gate.gating.signing import Keyring

__all__ = ["BundleCheck", "make_bundles", "verify_bundle"]

TOP = "drift-gate-bundle"
MANIFEST = "MANIFEST.sha256"
MANIFEST_SIG = "MANIFEST.sig"
_FORMAT = "drift-gate-bundle"
_REPORT_SUFFIXES = (".md", ".html", ".junit.xml")
_MAX_MEMBER = 256 * 1024 * 1024
_MAX_TOTAL = 1024 * 1024 * 1024
_MAX_MEMBERS = 64


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path, what: str) -> bytes:
    return read_bounded(path, _MAX_MEMBER, what, DataError)


def _gate_doc(result: Path) -> tuple[bytes, dict[str, Any]]:
    raw = _read(result, "gate result")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{result}: not a gate result ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("candidates"), list):
        raise DataError(f"{result}: not a gate result (no candidates)")
    return raw, doc


def _approvals(meta: dict[str, Any], sha256: str) -> list[dict[str, Any]]:
    history = meta.get("history")
    return (
        [h for h in history if isinstance(h, dict) and h.get("candidate_sha256") == sha256]
        if isinstance(history, list)
        else []
    )


def _baseline_files(folder: Path, cand: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any], str]:
    """The baseline's files as they are now, checked against what the gate read: the same
    reference and audit set, and either the same files or an approval of this candidate
    since."""
    files = {n: _read(folder / n, "baseline file") for n in BASELINE_FILES}
    if (folder / SIGNATURE_FILE).is_file():
        files[SIGNATURE_FILE] = _read(folder / SIGNATURE_FILE, "baseline signature")
    try:
        meta = json.loads(files["baseline.json"])
        reference, audit = meta["reference"]["sha256"], meta["audit"]["sha256"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise StaleBaselineError(f"{folder}: baseline.json is not a drift-gate baseline") from None
    if reference != cand.get("reference_sha256") or audit != cand.get("audit_sha256"):
        raise StaleBaselineError(
            f"{folder}: the baseline now has another reference or audit set than the gate result "
            "records; run the gate again and bundle its result"
        )
    now = files_digest({n: files[n] for n in BASELINE_FILES})
    at_gate = cand.get("baseline_digest")
    if now != at_gate and not _approvals(meta, str(cand.get("candidate_sha256"))):
        raise StaleBaselineError(
            f"{folder}: the baseline changed since the gate ran, and not by approving this candidate; "
            "run the gate again and bundle its result"
        )
    return files, meta, now


def _rule_rows(cand: dict[str, Any]) -> list[str]:
    rows = ["| rule | status | observed | bound | set in |", "|---|---|---|---|---|"]
    for r in cand.get("rules", []):
        observed = "—" if r.get("observed") is None else f"{r['observed']:.4f}"
        rows.append(
            f"| {r['rule']} | {r['status']} | {observed} | {r['direction']} | {r.get('source', '')} |"
        )
    return rows


_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _summary(info: dict[str, Any], cand: dict[str, Any]) -> str:
    """summary.md, by the sections of a predetermined change control plan."""
    ref, data, ev = info["reference"], info["data"], info["evaluation"]
    approvals = info["approvals"]
    lines = [
        f"# Model update evidence: {info['candidate']['arch']}",
        "",
        f"Bundle made {info['created']} by drift-gate {info['versions'].get('drift_gate', '?')}.",
        "",
        "## 1. Description of the modification (what changed)",
        "",
        f"- Candidate: `{info['candidate']['path']}`, sha256 `{info['candidate']['sha256']}`",
        f"- Replaces the reference: `{ref['path']}`, sha256 `{ref['sha256']}`",
        f"- Model: `{info['model']}`; classes: {', '.join(info['classes'])}",
        "",
        "## 2. Modification protocol (how it was evaluated)",
        "",
        f"- Data: manifest sha256 `{data.get('manifest_sha256', 'not recorded')}`"
        + (f" ({data['read_as']})" if data.get("read_as") else ""),
        f"- Audit set: {ev['n_audit']} images, sha256 `{ev['audit_sha256']}`; {ev['n_selected']} selected "
        "for the drift rules",
        f"- Evidence: CAM methods {', '.join(ev['methods'])}, maps at the target layer "
        f"`{ev.get('layer') or 'default'}`, precision {ev['precision']}; predictions by {ev['predictions']}",
        f"- Rules: `{info['rules']['path']}` (resolved rules in gate/gate.json), statistic "
        f"{info['rules']['statistic']}",
        f"- Baseline: `{info['baseline']['path']}`, "
        + ("signature verified by the gate" if info["baseline"]["signed"] else "signature not verified"),
        "",
        "## 3. Performance evaluation (the outcome)",
        "",
        f"- Verdict: **{cand['verdict'].upper()}** — {cand.get('label', '')}",
        f"- AUC {cand['auc']:.4f} (reference {cand['reference_auc']:.4f})",
        "",
        *_rule_rows(cand),
        "",
        "## 4. Approval and version control (who approved)",
        "",
    ]
    if approvals:
        for a in approvals:
            forced = " (forced: the verdict was not pass)" if a.get("forced") else ""
            key = f", signed with key {a['key_id']}" if a.get("key_id") else ""
            lines.append(f"- Approved by {a.get('by', 'unknown')} at {a.get('at', '?')}{forced}{key}")
    else:
        lines.append("- Not approved (yet): the baseline records no approval of this candidate.")
    lines += [
        f"- Baseline files at the gate: digest `{info['baseline']['digest_at_gate']}`; now "
        f"`{info['baseline']['digest_now']}`",
        "",
        "## 5. Traceability",
        "",
        "Every file of this bundle is listed with its sha256 in MANIFEST.sha256 "
        "(`drift-gate verify-bundle` checks it). Library versions:",
        "",
        *(f"- {k} {v}" for k, v in sorted(info["versions"].items())),
        "",
        *([f"Machines: {machines_line(info['machines'])}.", ""] if info["machines"] else []),
    ]
    # every entry is one line: a path, class name or approver read from a file cannot forge one
    return "\n".join(_LINE_BREAKS.sub("?", line) for line in lines)


def _info(doc: dict[str, Any], cand: dict[str, Any], meta: dict[str, Any], digest: str) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "version": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "candidate": {"path": cand["candidate"], "sha256": cand["candidate_sha256"], "arch": cand["arch"]},
        "reference": meta.get("reference", {}),
        "model": meta.get("model") or meta.get("arch"),
        "classes": list(cand.get("classes", [])),
        "data": meta.get("data", {}),
        "evaluation": {
            "n_audit": cand["n_audit"],
            "n_selected": cand["n_selected"],
            "audit_sha256": cand["audit_sha256"],
            "methods": list(cand.get("summaries", {})),
            "layer": (meta.get("maps") or {}).get("layer"),
            "precision": cand.get("precision"),
            "predictions": cand.get("predictions"),
        },
        "rules": {"path": doc.get("thresholds_path"), "statistic": doc["thresholds"]["gate"]["statistic"]},
        "outcome": {
            "verdict": cand["verdict"],
            "auc": cand["auc"],
            "reference_auc": cand["reference_auc"],
            "rules": [
                {k: r.get(k) for k in ("rule", "status", "observed", "bound", "direction")}
                for r in cand["rules"]
            ],
        },
        "approvals": _approvals(meta, cand["candidate_sha256"]),
        "baseline": {
            "path": cand["baseline"],
            "signed": bool(cand.get("baseline_signed")),
            "digest_at_gate": cand.get("baseline_digest"),
            "digest_now": digest,
        },
        "gate_result_signed": isinstance(doc.get("signature"), dict),
        "versions": doc.get("versions", {}),
        "machines": well_formed(cand.get("machines")),
    }


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            ti = tarfile.TarInfo(f"{TOP}/{name}")
            ti.size, ti.mtime, ti.mode = len(files[name]), now, 0o644
            tar.addfile(ti, io.BytesIO(files[name]))
    return buf.getvalue()


def _manifest(files: dict[str, bytes]) -> bytes:
    return "".join(f"{_sha(files[n])}  {n}\n" for n in sorted(files)).encode()


def make_bundles(
    result: Path,
    out: Path | None = None,
    candidate: str | None = None,
    signer: Ed25519PrivateKey | None = None,
) -> list[Path]:
    """Writes one bundle per candidate of the gate result ``result`` (or only
    ``candidate``): into the folder ``out`` (default: the result's folder), or to the file
    ``out`` when it ends in ``.tar`` and one candidate is bundled. Returns their paths.

    Raises:
        DataError: an unreadable result, no such candidate, or a file ``out`` for several.
        StaleBaselineError: the baseline no longer is the one the result was made against.
    """
    from drift_gate.gating.signing import key_id

    result = Path(result)
    raw, doc = _gate_doc(result)
    chosen = [c for c in doc["candidates"] if isinstance(c, dict) and candidate in (None, c.get("candidate"))]
    if not chosen:
        raise DataError(
            f"{result}: no candidate {candidate!r} in the gate result"
            if candidate
            else f"{result}: no candidate"
        )
    to_file = out is not None and str(out).endswith(".tar")
    if to_file and len(chosen) > 1:
        raise DataError(f"{out}: one file for {len(chosen)} candidates; give a folder, or --candidate")
    written = []
    for cand in chosen:
        try:
            folder = Path(str(cand["baseline"]))
            sha = str(cand["candidate_sha256"])
        except KeyError as exc:
            raise DataError(f"{result}: a candidate has no {exc}") from None
        base_files, meta, digest = _baseline_files(folder, cand)
        info = _info(doc, cand, meta, digest)
        files = {f"baseline/{n}": b for n, b in base_files.items()}
        files["gate/gate.json"] = raw
        for suffix in _REPORT_SUFFIXES:
            beside = result.with_name(result.stem + suffix)
            if beside.is_file():
                files[f"gate/{beside.name}"] = _read(beside, "report")
        files["bundle.json"] = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
        files["summary.md"] = _summary(info, cand).encode()
        manifest = _manifest(files)
        files[MANIFEST] = manifest
        if signer is not None:
            sig = signer.sign(manifest)
            files[MANIFEST_SIG] = (
                json.dumps({"algorithm": "ed25519", "key_id": key_id(signer), "signature": sig.hex()}) + "\n"
            ).encode()
        folder_out = Path(out) if out is not None else result.parent
        path = folder_out if to_file else folder_out / f"bundle-{cand['arch']}-{sha[:12]}.tar"
        try:
            atomic_write_bytes(path, _tar(files))
        except OSError as exc:
            raise DataError(f"{path}: cannot write the bundle ({exc.strerror or exc})") from None
        written.append(path)
    return written


@dataclass(frozen=True)
class BundleCheck:
    """What ``verify-bundle`` found in a bundle that checks out."""

    path: Path
    files: int
    candidate: str
    verdict: str
    approvals: int
    signed_by: str | None


def _members(path: Path) -> dict[str, bytes]:
    """The bundle's files by name (relative to its top folder), read in memory, refusing
    anything but bounded regular files inside the top folder."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read the bundle ({exc.strerror or exc})") from None
    if size > _MAX_TOTAL:
        raise DataError(f"{path}: larger than a bundle can be ({size} bytes)")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for n, m in enumerate(tar):
                if n >= _MAX_MEMBERS:
                    raise BundleMismatchError(f"{path}: more files than a bundle holds")
                name = PurePosixPath(m.name)
                if not m.isfile() or name.is_absolute() or ".." in name.parts or name.parts[:1] != (TOP,):
                    raise BundleMismatchError(f"{path}: {m.name[:80]!r} is not a file of a drift-gate bundle")
                if m.size > _MAX_MEMBER:
                    raise BundleMismatchError(f"{path}: {m.name[:80]} is larger than a bundle file can be")
                rel = name.relative_to(TOP).as_posix()
                if rel in files:
                    raise BundleMismatchError(f"{path}: {rel} appears twice")
                fh = tar.extractfile(m)
                files[rel] = fh.read() if fh is not None else b""
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise BundleMismatchError(f"{path}: not a readable bundle archive (damaged: {exc})") from None
    return files


def verify_bundle(path: Path, ring: Keyring | None = None) -> BundleCheck:
    """Checks a bundle (see the module docstring).

    Raises:
        DataError: the file cannot be read.
        BundleMismatchError: anything in it does not check out (exit code 1).
    """
    path = Path(path)
    files = _members(path)
    if MANIFEST not in files:
        raise BundleMismatchError(f"{path}: no {MANIFEST}")
    listed: dict[str, str] = {}
    lines = files[MANIFEST].decode("utf-8", "replace").split("\n")
    if lines[-1] != "":
        raise BundleMismatchError(f"{path}: {MANIFEST} does not end with a line break")
    for n, line in enumerate(lines[:-1], 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or name in listed:
            raise BundleMismatchError(f"{path}: {MANIFEST} line {n} is malformed")
        listed[name] = digest
    present = set(files) - {MANIFEST, MANIFEST_SIG}
    for name in sorted(present | set(listed)):
        if name not in listed:
            raise BundleMismatchError(
                f"{path}: {name} is not in {MANIFEST} (added after the bundle was made)"
            )
        if name not in files:
            raise BundleMismatchError(f"{path}: {name} is listed in {MANIFEST} but missing")
        if _sha(files[name]) != listed[name]:
            raise BundleMismatchError(f"{path}: {name} changed after the bundle was made (sha256 differs)")
    if _manifest({n: files[n] for n in present}) != files[MANIFEST]:
        raise BundleMismatchError(f"{path}: {MANIFEST} is not in its canonical form (it was edited)")
    signed_by = _check_signature(path, files, ring)
    try:
        info = json.loads(files["bundle.json"])
        gate = json.loads(files["gate/gate.json"])
        cand = next(c for c in gate["candidates"] if c["candidate_sha256"] == info["candidate"]["sha256"])
        base = {n: files[f"baseline/{n}"] for n in BASELINE_FILES}
    except (KeyError, ValueError, TypeError, StopIteration, RecursionError):
        raise BundleMismatchError(f"{path}: bundle.json, gate/gate.json or baseline/ is incomplete") from None
    if files_digest(base) != info["baseline"]["digest_now"]:
        raise BundleMismatchError(f"{path}: baseline/ is not the baseline bundle.json names")
    if cand["verdict"] != info["outcome"]["verdict"] or cand["reference_sha256"] != info["reference"].get(
        "sha256"
    ):
        raise BundleMismatchError(f"{path}: bundle.json does not agree with gate/gate.json")
    return BundleCheck(
        path, len(files), info["candidate"]["path"], cand["verdict"], len(info["approvals"]), signed_by
    )


def _check_signature(path: Path, files: dict[str, bytes], ring: Keyring | None) -> str | None:
    if MANIFEST_SIG not in files:
        if ring is not None:
            raise BundleMismatchError(f"{path}: the bundle is not signed, and a public key is configured")
        return None
    try:
        sig = json.loads(files[MANIFEST_SIG])
        kid, value = str(sig["key_id"]), bytes.fromhex(sig["signature"])
    except (ValueError, KeyError, TypeError):
        raise BundleMismatchError(f"{path}: {MANIFEST_SIG} is malformed") from None
    if ring is None:
        return None
    pub = ring.get(kid)
    if pub is None:
        raise BundleMismatchError(f"{path}: signed by key {kid[:16]!r}, not by {ring.describe()}")
    from cryptography.exceptions import InvalidSignature

    try:
        pub.verify(value, files[MANIFEST])
    except InvalidSignature:
        raise BundleMismatchError(f"{path}: the manifest's signature does not verify") from None
    return kid
