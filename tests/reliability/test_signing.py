"""Signed baselines and gate results: forged, re-hashed, missing or foreign signatures are
refused with one line, and nothing is changed; approval takes only a gate result the gate
made against the baseline as it is now."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from drift_gate.cli import main
from gatekit import assert_error, baseline_args, fixed_key_pair, gate, result, tree_digest


@pytest.fixture(autouse=True)
def _no_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFT_GATE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("DRIFT_GATE_PUBLIC_KEY", raising=False)


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    fixed_key_pair(tmp_path / "keys" / "ci", 1)
    fixed_key_pair(tmp_path / "keys" / "other", 2)
    return {
        "key": tmp_path / "keys" / "ci.key",
        "pub": tmp_path / "keys" / "ci.pub",
        "other_key": tmp_path / "keys" / "other.key",
        "other_pub": tmp_path / "keys" / "other.pub",
    }


@pytest.fixture()
def signed(env: dict[str, Path], keys: dict[str, Path]) -> dict[str, Path]:
    """``env``'s baseline made again, signed with the ``ci`` key."""
    assert main([*baseline_args(env, env["tl"]), "--signing-key", str(keys["key"])]) == 0
    assert (env["baselines"] / "tiny" / "signature.json").is_file()
    return {**env, **keys}


def test_keygen_never_overwrites_and_keeps_the_private_key_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys" / "ci"
    assert main(["keygen", "--out", str(out)]) == 0
    key = Path(f"{out}.key")
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    assert_error(main(["keygen", "--out", str(out)]), capsys, r"ci.key: exists already")
    assert key.read_bytes() == before


def test_a_signed_baseline_verifies_and_the_gate_says_so(signed: dict[str, Path]) -> None:
    code = gate(signed, signed["ft"], "--public-key", str(signed["pub"]))
    doc = result(signed)
    assert code == doc["exit_code"]
    assert doc["candidates"][0]["baseline_signed"] is True


def test_without_a_public_key_a_signed_baseline_is_gated_with_a_warning(signed: dict[str, Path]) -> None:
    gate(signed, signed["ft"])
    assert any("no public key is configured" in w for w in result(signed)["candidates"][0]["warnings"])


def _rehash(folder: Path) -> None:
    """Tampering that the hashes in baseline.json alone cannot catch: new maps, re-hashed."""
    with np.load(folder / "maps.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["map_layercam"] = arrays["map_layercam"][::-1].copy()
    np.savez_compressed(folder / "maps.npz", **arrays)
    meta = json.loads((folder / "baseline.json").read_text())
    meta["maps"]["sha256"] = hashlib.sha256((folder / "maps.npz").read_bytes()).hexdigest()
    (folder / "baseline.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _edit_signature(folder: Path) -> None:
    sig = json.loads((folder / "signature.json").read_text())
    sig["files"]["maps.npz"] = "0" * 64
    (folder / "signature.json").write_text(json.dumps(sig))


@pytest.mark.parametrize(
    ("tamper", "pattern"),
    [
        (_rehash, r"baseline.json: changed after the baseline was signed"),
        (
            lambda f: (f / "signature.json").unlink(),
            r"the baseline is not signed, and a public key is configured",
        ),
        (_edit_signature, r"signature.json: the signature does not verify"),
    ],
    ids=["re-hashed maps", "signature removed", "signature edited"],
)
def test_tampered_baselines_are_refused(
    signed: dict[str, Path], capsys: pytest.CaptureFixture[str], tamper: object, pattern: str
) -> None:
    folder = signed["baselines"] / "tiny"
    tamper(folder)  # type: ignore[operator]
    before = tree_digest(signed["baselines"])
    assert_error(gate(signed, signed["ft"], "--public-key", str(signed["pub"])), capsys, pattern)
    assert tree_digest(signed["baselines"]) == before
    assert not signed["reports"].exists()


def test_a_baseline_signed_by_another_key_is_refused(
    signed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_error(
        gate(signed, signed["ft"], "--public-key", str(signed["other_pub"])),
        capsys,
        r"signature.json: signed by key '[0-9a-f]{16}', not by the configured public key",
    )


def test_key_rotation_through_a_ring_of_public_keys(
    signed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Rotation: while the ring holds the old and the new key, a baseline signed by either
    passes; after re-signing with the new key and dropping the old one from the ring, a
    baseline still signed by the old key is refused by its key id."""
    ring = signed["tmp"] / "ring.pub"
    ring.write_bytes(signed["pub"].read_bytes() + signed["other_pub"].read_bytes())
    assert gate(signed, signed["ft"], "--public-key", str(ring)) in (0, 1)  # old key, in the ring
    assert result(signed)["candidates"][0]["baseline_signed"] is True
    assert main([*baseline_args(signed, signed["tl"]), "--signing-key", str(signed["other_key"])]) == 0
    assert gate(signed, signed["ft"], "--public-key", str(ring)) in (0, 1)  # new key, in the ring
    assert gate(signed, signed["ft"], "--public-key", str(signed["other_pub"])) in (0, 1)  # old one dropped
    assert main([*baseline_args(signed, signed["tl"]), "--signing-key", str(signed["key"])]) == 0
    assert_error(
        gate(signed, signed["ft"], "--public-key", str(signed["other_pub"])),
        capsys,
        r"signature.json: signed by key '[0-9a-f]{16}', not by the configured public key",
    )
    ring.write_bytes(
        signed["other_pub"].read_bytes() + b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )
    assert_error(
        gate(signed, signed["ft"], "--public-key", str(ring)), capsys, "public key 2 of 2 is not a PEM"
    )


def _approve(env: dict[str, Path], *extra: str) -> int:
    return main(["approve", "--result", str(env["reports"] / "gate.json"), "--force", *extra])


def test_approve_takes_a_signed_result_and_re_signs_the_baseline(signed: dict[str, Path]) -> None:
    gate(signed, signed["ft"], "--public-key", str(signed["pub"]), "--signing-key", str(signed["key"]))
    assert result(signed)["signature"]["algorithm"] == "ed25519"
    keys = ["--public-key", str(signed["pub"]), "--signing-key", str(signed["key"])]
    assert _approve(signed, *keys) == 0
    approved = json.loads((signed["baselines"] / "tiny" / "baseline.json").read_text())["approved"]
    assert approved["candidate_sha256"] == result(signed)["candidates"][0]["candidate_sha256"]
    # the approved baseline verifies: the next gate runs
    assert gate(signed, signed["ft"], "--public-key", str(signed["pub"])) in (0, 1)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda d: d["candidates"][0].update(auc=1.0), r"gate.json: the signature does not verify"),
        (lambda d: d.pop("signature"), r"gate.json: not signed, and a public key is configured"),
    ],
    ids=["edited", "unsigned"],
)
def test_approve_refuses_an_edited_or_unsigned_result(
    signed: dict[str, Path], capsys: pytest.CaptureFixture[str], edit: object, pattern: str
) -> None:
    gate(signed, signed["ft"], "--signing-key", str(signed["key"]))
    doc = result(signed)
    edit(doc)  # type: ignore[operator]
    (signed["reports"] / "gate.json").write_text(json.dumps(doc))
    before = tree_digest(signed["baselines"])
    keys = ["--public-key", str(signed["pub"]), "--signing-key", str(signed["key"])]
    assert_error(_approve(signed, *keys), capsys, pattern)
    assert tree_digest(signed["baselines"]) == before


def test_approve_with_a_public_key_needs_the_signing_key(
    signed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gate(signed, signed["ft"], "--signing-key", str(signed["key"]))
    before = tree_digest(signed["baselines"])
    assert_error(
        _approve(signed, "--public-key", str(signed["pub"])), capsys, r"the approved baseline must be signed"
    )
    assert tree_digest(signed["baselines"]) == before


def test_approve_refuses_a_result_made_against_another_state_of_the_baseline(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gate(env, env["ft"])
    assert main(baseline_args(env, env["tl"])) == 0  # refreshed since: same reference, new files
    (env["baselines"] / "tiny" / "baseline.json").write_text(
        (env["baselines"] / "tiny" / "baseline.json").read_text().replace('"history": []', '"history": [{}]')
    )
    before = tree_digest(env["baselines"])
    assert_error(_approve(env), capsys, r"the baseline changed since this gate result was made")
    doc = result(env)
    del doc["candidates"][0]["baseline_digest"]
    (env["reports"] / "gate.json").write_text(json.dumps(doc))
    assert_error(_approve(env), capsys, r"does not say which state of the baseline it was made against")
    assert tree_digest(env["baselines"]) == before
