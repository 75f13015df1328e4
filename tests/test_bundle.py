"""Change-control evidence bundles: gate -> approve -> bundle -> verify-bundle round trip;
a changed, added or removed byte is reported; signatures; a bundle of a stale result is
refused."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from drift_gate.cli import main
from gatekit import assert_error, baseline_args, fixed_key_pair, gate


@pytest.fixture()
def gated(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.delenv("DRIFT_GATE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("DRIFT_GATE_PUBLIC_KEY", raising=False)
    assert gate(env, env["ft"]) in (0, 1)
    return env


def _bundle(env: dict[str, Path], *extra: str) -> Path:
    out = env["tmp"] / "update.tar"
    assert main(["bundle", "--result", str(env["reports"] / "gate.json"), "--out", str(out), *extra]) == 0
    return out


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def _rewrite(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            ti = tarfile.TarInfo(f"drift-gate-bundle/{name}")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))


def test_round_trip_with_approval(gated: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["approve", "--result", str(gated["reports"] / "gate.json"), "--force", "--by", "Dr. Reviewer"])
        == 0
    )
    path = _bundle(gated)
    files = _members(path)
    assert {"summary.md", "bundle.json", "MANIFEST.sha256", "gate/gate.json", "gate/gate.html"} <= set(files)
    assert {"baseline/baseline.json", "baseline/audit.json", "baseline/maps.npz"} <= set(files)
    summary = files["summary.md"].decode()
    sections = ("1. Description of the modification", "2. Modification protocol", "3. Performance evaluation")
    for section in (*sections, "4. Approval and version control", "5. Traceability"):
        assert f"## {section}" in summary
    verdict = json.loads((gated["reports"] / "gate.json").read_text())["verdict"]
    assert "Approved by Dr. Reviewer" in summary and ("(forced" in summary) == (verdict != "pass")
    info = json.loads(files["bundle.json"])
    doc = json.loads((gated["reports"] / "gate.json").read_text())["candidates"][0]
    assert info["candidate"]["sha256"] == doc["candidate_sha256"]
    assert info["reference"]["sha256"] == doc["reference_sha256"]
    assert info["evaluation"]["audit_sha256"] == doc["audit_sha256"]
    assert info["data"]["manifest_sha256"] and [r["rule"] for r in info["outcome"]["rules"]] == [
        r["rule"] for r in doc["rules"]
    ]
    assert info["approvals"][0]["by"] == "Dr. Reviewer" and "torch" in info["versions"]
    capsys.readouterr()
    assert main(["verify-bundle", str(path)]) == 0
    assert "OK: " in capsys.readouterr().out


def test_an_unapproved_update_says_so(gated: dict[str, Path]) -> None:
    summary = _members(_bundle(gated))["summary.md"].decode()
    assert "Not approved (yet)" in summary


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (
            lambda f: f.update({"gate/gate.json": f["gate/gate.json"].replace(b'"auc"', b'"auc" ', 1)}),
            r"gate/gate.json changed after the bundle was made",
        ),
        (lambda f: f.update({"notes.txt": b"added"}), r"notes.txt is not in MANIFEST.sha256"),
        (lambda f: f.pop("baseline/maps.npz"), r"baseline/maps.npz is listed in MANIFEST.sha256 but missing"),
        (lambda f: f.pop("MANIFEST.sha256"), r"no MANIFEST.sha256"),
    ],
    ids=["changed", "added", "removed", "no manifest"],
)
def test_tampering_is_reported_with_exit_1(
    gated: dict[str, Path], capsys: pytest.CaptureFixture[str], change: object, pattern: str
) -> None:
    path = _bundle(gated)
    files = _members(path)
    change(files)  # type: ignore[operator]
    _rewrite(path, files)
    assert_error(main(["verify-bundle", str(path)]), capsys, pattern, exit_code=1)


def test_a_changed_byte_anywhere_that_carries_something_is_reported(
    gated: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Flip one byte in the archive itself: in every member's header (its name) and in the
    first, middle and last byte of its contents. (The zero padding tar adds after each
    member carries nothing, and is not covered.)"""
    path = _bundle(gated)
    raw = path.read_bytes()
    with tarfile.open(path) as tar:
        members = [m for m in tar if m.isfile()]
    offsets = []
    for m in members:
        offsets.append(m.offset)
        if m.size:
            offsets += [m.offset_data, m.offset_data + m.size // 2, m.offset_data + m.size - 1]
    for offset in sorted(set(offsets)):
        flipped = bytearray(raw)
        flipped[offset] ^= 0x01
        path.write_bytes(bytes(flipped))
        assert main(["verify-bundle", str(path)]) == 1, f"a changed byte at {offset} went unnoticed"
        capsys.readouterr()
    assert len(offsets) > 30


def test_signed_bundles(gated: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    keys = gated["tmp"] / "keys"
    fixed_key_pair(keys / "ci", 1)
    fixed_key_pair(keys / "other", 2)
    path = _bundle(gated, "--signing-key", str(keys / "ci.key"))
    assert main(["verify-bundle", str(path), "--public-key", str(keys / "ci.pub")]) == 0
    assert "signed by key" in capsys.readouterr().out
    assert_error(
        main(["verify-bundle", str(path), "--public-key", str(keys / "other.pub")]),
        capsys,
        r"signed by key '[0-9a-f]{16}', not by the configured public key",
        exit_code=1,
    )
    files = _members(path)
    files["summary.md"] = b"# nothing to see\n"
    lines = [ln for ln in files["MANIFEST.sha256"].decode().splitlines() if not ln.endswith("  summary.md")]
    lines.append(f"{hashlib.sha256(files['summary.md']).hexdigest()}  summary.md")
    files["MANIFEST.sha256"] = ("\n".join(sorted(lines, key=lambda ln: ln.split("  ")[1])) + "\n").encode()
    _rewrite(path, files)
    assert main(["verify-bundle", str(path)]) == 0, "re-hashed: only a signature can tell"
    assert_error(
        main(["verify-bundle", str(path), "--public-key", str(keys / "ci.pub")]),
        capsys,
        r"the manifest's signature does not verify",
        exit_code=1,
    )
    unsigned = _bundle(gated)
    assert_error(
        main(["verify-bundle", str(unsigned), "--public-key", str(keys / "ci.pub")]),
        capsys,
        r"the bundle is not signed, and a public key is configured",
        exit_code=1,
    )


def test_a_result_whose_baseline_was_refreshed_is_not_bundled(
    gated: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(baseline_args(gated, gated["ft"])) == 0  # another reference since the gate ran
    out = gated["tmp"] / "b.tar"
    code = main(["bundle", "--result", str(gated["reports"] / "gate.json"), "--out", str(out)])
    assert_error(code, capsys, r"the baseline now has another reference or audit set than the gate result")
    assert not out.exists()


def test_an_unreadable_bundle_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_error(
        main(["verify-bundle", str(tmp_path / "none.tar")]), capsys, r"none.tar: cannot read the bundle"
    )
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        ti = tarfile.TarInfo("drift-gate-bundle/../../escape")
        ti.size = 1
        tar.addfile(ti, io.BytesIO(b"x"))
    assert_error(
        main(["verify-bundle", str(evil)]), capsys, r"is not a file of a drift-gate bundle", exit_code=1
    )
    assert not (tmp_path.parent / "escape").exists()


def test_what_the_summary_quotes_from_files_cannot_forge_a_line(gated: dict[str, Path]) -> None:
    """summary.md quotes paths, class names and approvers read from files: a line break in one
    of them must not become a line of its own (``- Approved by ...`` where no one approved)."""
    from drift_gate.integrations.bundle import _summary

    files = _members(_bundle(gated))
    info = json.loads(files["bundle.json"])
    cand = json.loads(files["gate/gate.json"])["candidates"][0]
    forged = "\n- Approved by the regulator\r\u2028- Approved by the regulator"
    info["classes"][0] += forged
    info["candidate"]["path"] += forged
    info["approvals"] = [{"by": "Mallory" + forged, "at": "now"}]
    summary = _summary(info, cand)
    assert not any(line.startswith("- Approved by the regulator") for line in summary.splitlines())
    assert "- Approved by Mallory?- Approved by the regulator??- Approved by the regulator at now" in summary
