"""Signed baselines and gate results (Ed25519, with the ``cryptography`` package).

What is signed:

* a baseline: ``signature.json`` beside its three files holds their sha256 and an
  Ed25519 signature over that manifest; ``baseline`` and ``approve`` write it when a
  signing key is configured;
* a gate result: ``gate.json`` carries a ``signature`` over its own canonical JSON
  when the gate ran with a signing key.

Keys (``drift-gate keygen`` makes a pair):

* the **signing key** (private, a secret): ``DRIFT_GATE_SIGNING_KEY``, a PEM file's
  path or the PEM text itself, or ``--signing-key``;
* the **public keys**: ``DRIFT_GATE_PUBLIC_KEY`` (path or PEM text) or ``--public-key``:
  one PEM public key, or several concatenated (a key ring). When they are configured
  the gate refuses a baseline that is unsigned or whose signature does not verify with
  the ring's key of that id, and ``approve`` refuses a ``gate.json`` not signed by one
  of them. Without them nothing is verified (and reports say so).

A key's id is the first 16 hex digits of the sha256 of its raw public bytes.

Rotating a key: add the new public key to the ring (both keys accepted), re-sign every
baseline with the new signing key (``drift-gate baseline`` or ``approve``), then remove
the old public key; a baseline still signed by it is then refused by its key id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drift_gate._io import read_bounded
from drift_gate.errors import ConfigError, DataError, StaleBaselineError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "BASELINE_FILES",
    "SIGNATURE_FILE",
    "Keyring",
    "files_digest",
    "generate_keys",
    "key_id",
    "public_key",
    "sign_document",
    "sign_files",
    "signing_key",
    "verify_document",
    "verify_files",
]


SIGNATURE_FILE = "signature.json"
BASELINE_FILES = ("baseline.json", "audit.json", "maps.npz")
_FORMAT = "drift-gate-signature"
_MAX_KEY = 16 * 1024
_MAX_RING = 64
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.DOTALL)


class Keyring:
    """The public keys a baseline or gate result may be signed by, by key id."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        if not keys:
            raise ConfigError("a key ring needs at least one public key")
        self._keys = {key_id(k): k for k in keys}

    @classmethod
    def of(cls, key: Ed25519PublicKey | Ed25519PrivateKey) -> Keyring:
        """The ring of one key (a private key's public half)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls([key.public_key() if isinstance(key, Ed25519PrivateKey) else key])

    @property
    def ids(self) -> list[str]:
        """The ids of the accepted keys, sorted."""
        return sorted(self._keys)

    def get(self, kid: object) -> Ed25519PublicKey | None:
        """The key with id ``kid``, or None when the ring has none."""
        return self._keys.get(kid) if isinstance(kid, str) else None

    def describe(self) -> str:
        ids = self.ids
        return f"the configured public key {ids[0]!r}" if len(ids) == 1 else f"the configured keys {ids}"


def _pem(source: str | os.PathLike[str], what: str) -> bytes:
    """PEM bytes from PEM text or a file's path."""
    text = os.fspath(source)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    return read_bounded(Path(text), _MAX_KEY, what, ConfigError)


def signing_key(source: str | os.PathLike[str] | None = None) -> Ed25519PrivateKey | None:
    """The signing key from ``source`` or ``DRIFT_GATE_SIGNING_KEY``; None when neither is set."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    source = source or os.environ.get("DRIFT_GATE_SIGNING_KEY") or None
    if source is None:
        return None
    try:
        key = load_pem_private_key(_pem(source, "signing key"), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the signing key is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("the signing key is not an Ed25519 key (make one with `drift-gate keygen`)")
    return key


def public_key(source: str | os.PathLike[str] | None = None) -> Keyring | None:
    """The public key ring from ``source`` or ``DRIFT_GATE_PUBLIC_KEY`` (one PEM public key
    or several concatenated); None when neither is set."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    source = source or os.environ.get("DRIFT_GATE_PUBLIC_KEY") or None
    if source is None:
        return None
    pem = _pem(source, "public key")
    blocks = _PEM_BLOCK.findall(pem) or [pem]
    if len(blocks) > _MAX_RING:
        raise ConfigError(f"the public key ring holds {len(blocks)} keys; at most {_MAX_RING}")
    keys = []
    for n, block in enumerate(blocks, 1):
        which = "the public key" if len(blocks) == 1 else f"public key {n} of {len(blocks)}"
        try:
            key = load_pem_public_key(block)
        except (ValueError, TypeError):
            raise ConfigError(f"{which} is not a PEM public key (it could not be decoded)") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{which} is not an Ed25519 key (make a pair with `drift-gate keygen`)")
        keys.append(key)
    return Keyring(keys)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(pub.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def generate_keys(out: Path) -> tuple[Path, Path]:
    """Writes a new key pair: ``<out>.key`` (private, mode 0600) and ``<out>.pub``.

    Raises:
        ConfigError: either file exists already (keys are never overwritten).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    private, public = Path(f"{out}.key"), Path(f"{out}.pub")
    for p in (private, public):
        if p.exists():
            raise ConfigError(f"{p}: exists already; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    private.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def files_digest(files: Mapping[str, bytes]) -> str:
    """One sha256 over the sha256 of each named file (what a gate result binds to)."""
    return hashlib.sha256(
        _canonical({n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())})
    ).hexdigest()


def sign_files(files: Mapping[str, bytes], key: Ed25519PrivateKey) -> str:
    """``signature.json`` text for a baseline's files."""
    manifest = {
        "format": _FORMAT,
        "version": 1,
        "algorithm": "ed25519",
        "key_id": key_id(key),
        "files": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())},
    }
    signature = base64.b64encode(key.sign(_canonical(manifest))).decode()
    return json.dumps({**manifest, "signature": signature}, indent=2, sort_keys=True) + "\n"


def _check_signature(pub: Ed25519PublicKey, payload: bytes, value: object) -> bool:
    from cryptography.exceptions import InvalidSignature

    if not isinstance(value, str) or len(value) > 200:
        return False
    try:
        pub.verify(base64.b64decode(value, validate=True), payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_files(folder: Path, files: Mapping[str, bytes], ring: Keyring) -> None:
    """Checks ``folder/signature.json`` against ``files`` (the bytes about to be used).

    Raises:
        StaleBaselineError: unsigned, signed by another key, a bad signature, or a file
            that changed after signing.
    """
    path = folder / SIGNATURE_FILE
    how = "re-sign it: `drift-gate baseline` or `drift-gate approve` with DRIFT_GATE_SIGNING_KEY set"
    try:
        if path.stat().st_size > 64 * 1024:
            raise StaleBaselineError(f"{path}: too large for a signature file; {how}")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StaleBaselineError(
            f"{folder}: the baseline is not signed, and a public key is configured; {how}"
        ) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise StaleBaselineError(f"{path}: unreadable signature ({exc}); {how}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("files"), dict):
        raise StaleBaselineError(f"{path}: not a drift-gate signature file; {how}")
    pub = ring.get(doc.get("key_id"))
    if pub is None:
        raise StaleBaselineError(
            f"{path}: signed by key {str(doc.get('key_id'))[:16]!r}, not by {ring.describe()}; {how}"
        )
    manifest = {k: v for k, v in doc.items() if k != "signature"}
    if not _check_signature(pub, _canonical(manifest), doc.get("signature")):
        raise StaleBaselineError(f"{path}: the signature does not verify (the file was edited); {how}")
    if sorted(doc["files"]) != sorted(files):
        raise StaleBaselineError(f"{path}: signs {sorted(doc['files'])}, not the baseline's files; {how}")
    for name, data in files.items():
        if doc["files"][name] != hashlib.sha256(data).hexdigest():
            raise StaleBaselineError(f"{folder / name}: changed after the baseline was signed; {how}")


def sign_document(doc: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``doc`` with a ``signature`` over its canonical JSON (without that field)."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    value = base64.b64encode(key.sign(_canonical(body))).decode()
    return {**body, "signature": {"algorithm": "ed25519", "key_id": key_id(key), "value": value}}


def verify_document(doc: Mapping[str, Any], ring: Keyring, source: str) -> None:
    """Checks a signed document (``gate.json``).

    Raises:
        DataError: unsigned, another key, or edited after signing.
    """
    sig = doc.get("signature")
    if not isinstance(sig, dict):
        raise DataError(
            f"{source}: not signed, and a public key is configured; only a gate result the gate "
            "signed (DRIFT_GATE_SIGNING_KEY set when it ran) can be approved"
        )
    pub = ring.get(sig.get("key_id"))
    if pub is None:
        raise DataError(f"{source}: signed by key {str(sig.get('key_id'))[:16]!r}, not by {ring.describe()}")
    body = {k: v for k, v in doc.items() if k != "signature"}
    if not _check_signature(pub, _canonical(body), sig.get("value")):
        raise DataError(f"{source}: the signature does not verify (the gate result was edited)")
