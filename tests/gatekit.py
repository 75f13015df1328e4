"""Helpers shared by the gate tests and the reliability suite (``tests`` is on pythonpath).

The fixtures built on them (``trained``, ``env``) live in ``conftest.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drift_gate.cli import main
from drift_gate.models.checkpoint import load_checkpoint, save_checkpoint
from drift_gate.training.profiles import PhaseConfig, PretrainConfig, Profile

#: How the session's tiny TL and FT checkpoints are trained (``conftest.trained``);
#: calibration and the controls fine-tune again with the same settings.
TINY_TRAINING = Profile(
    name="t",
    data="unused",
    backbones=("tiny",),
    input_size=32,
    weights="none",
    pretrain=PretrainConfig(images=8, epochs=1, scale=1.0),
    batch_size=8,
    tl=PhaseConfig(epochs=4, lr=1e-2),
    ft=PhaseConfig(epochs=2, lr=3e-3),
)

RULES = """
[gate]
methods = ["layercam", "gradcam++"]
samples = "all"
min_samples = 2
statistic = "mean"
[auc]
min = 0.0
max_drop = 0.2
min_support = 2
[drift]
{drift}
"""


def multilabel_manifest(phantom_root: Path, out: Path, prefix: str = "") -> Path:
    """The phantom images relabelled as NIH ChestX-ray14 writes ``Finding Labels``: several
    findings joined by ``|``, ``No Finding``, and a finding a model may not know; image
    paths are ``prefix`` + the phantom manifest's (relative to ``out``'s folder)."""
    import csv

    with (phantom_root / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    combos = [
        "Effusion",
        "Nodule|Pneumonia",
        "No Finding",
        "Effusion|Nodule",
        "Pneumonia|Hernia",
        "No Finding",
    ]
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for i, r in enumerate(rows):
            w.writerow([prefix + r["path"], combos[i % len(combos)], r["split"]])
    return out


def make_env(tmp_path: Path, data: Path, tl: Path, ft: Path, drift: str = "iou.min = 0.3") -> dict[str, Path]:
    """A baselines folder made from ``tl`` under ``tmp_path``, and a thresholds file with
    ``drift`` as its ``[drift]`` table: what the gate tests share."""
    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text(RULES.format(drift=drift))
    env = {
        "baselines": tmp_path / "baselines",
        "thresholds": thresholds,
        "reports": tmp_path / "reports",
        "data": data,
        "tl": tl,
        "ft": ft,
        "tmp": tmp_path,
    }
    assert main(baseline_args(env, tl)) == 0
    return env


def baseline_args(env: dict[str, Path], reference: Path) -> list[str]:
    """``drift-gate baseline`` arguments that (re)make ``env``'s tiny baseline."""
    return [
        "baseline",
        "--reference",
        str(reference),
        "--data",
        str(env["data"]),
        "--out",
        str(env["baselines"] / "tiny"),
        "--thresholds",
        str(env["thresholds"]),
        "--per-class",
        "2",
        "--device",
        "cpu",
        "--no-progress",
    ]


def gate_args(env: dict[str, Path], candidate: Path, *extra: str) -> list[str]:
    return [
        "gate",
        "--candidate",
        str(candidate),
        "--baselines",
        str(env["baselines"]),
        "--thresholds",
        str(env["thresholds"]),
        "--data",
        str(env["data"]),
        "--reports",
        str(env["reports"]),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def gate(env: dict[str, Path], candidate: Path, *extra: str) -> int:
    """Runs ``drift-gate gate`` in-process on ``env``; returns the exit code."""
    return main(gate_args(env, candidate, *extra))


def result(env: dict[str, Path]) -> dict[str, Any]:
    return json.loads((env["reports"] / "gate.json").read_text())  # type: ignore[no-any-return]


def tree_digest(root: Path) -> str:
    """One hash over every file's name and bytes under ``root``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def resaved(env: dict[str, Path], name: str, **changes: object) -> Path:
    """The TL checkpoint saved again with changed metadata."""
    model, meta = load_checkpoint(env["tl"])
    path = env["tmp"] / name
    save_checkpoint(path, model, dataclasses.replace(meta, **changes))  # type: ignore[arg-type]
    return path


def write_dicom(
    path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", **tags: object
) -> None:
    """A minimal 16-bit DICOM file; ``pixels=None`` writes one without pixel data;
    ``tags`` are set as given (``WindowCenter=1000``, ``RescaleSlope=...``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)


def assert_error(code: int, capsys: pytest.CaptureFixture[str], pattern: str, exit_code: int = 2) -> str:
    """The command exited with ``exit_code`` after printing exactly one
    ``drift-gate: error:`` line, matching ``pattern``, and no traceback. Returns the line."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("drift-gate: error:")]
    assert code == exit_code, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    RECORDED.append((test, exit_code, shorten(lines[0].removeprefix("drift-gate: error: "))))
    return lines[0]


# --- docs/reference/failure-modes.md: generated from what assert_error saw ----------------

#: (test id, exit code, message) of every assert_error in this session, in order.
RECORDED: list[tuple[str, int, str]] = []
FAILURE_MODES = Path(__file__).resolve().parents[1] / "docs" / "reference" / "failure-modes.md"
_ROW = re.compile(r"^\| `(?P<test>.+?)` \| (?P<code>\d+) \| (?P<message>.*) \|$")


def shorten(message: str) -> str:
    """A message without what depends on the machine: every absolute folder becomes "…/",
    and a trained checkpoint's sha256 (its weights differ between CPUs) becomes "…"."""
    message = re.sub(r"(?:/[^/\s:'\"`()]+)+/", "…/", message)
    return re.sub(r"\bsha256 [0-9a-f]{8,64}…?", "sha256 …", message)


def failure_modes_page(rows: list[tuple[str, int, str]]) -> str:
    """The page: one row per checked error, in test order."""
    out = [
        "<!-- Generated from the test suite (`nox -s docs`); a test run fails when it is stale. -->",
        "",
        "# Failure modes",
        "",
        "Every row is an error case that a test runs through the real command line. The test",
        "checks the exit code, that exactly one `drift-gate: error:` line is printed and what it",
        "says, and that no traceback appears. Paths are shortened to `…/`.",
        "",
        "| test | exit | message (after `drift-gate: error: `) |",
        "|---|---|---|",
    ]
    out += [f"| `{t}` | {c} | {m.replace('|', chr(92) + '|')} |" for t, c, m in rows]
    return "\n".join(out) + "\n"


def parse_failure_modes(text: str) -> list[tuple[str, int, str]]:
    """The rows of a committed page."""
    rows = []
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            rows.append((m["test"], int(m["code"]), m["message"].replace(chr(92) + "|", "|")))
    return rows


def fixed_key_pair(out: Path, seed: int) -> None:
    """A key pair from a fixed seed (as ``keygen`` writes it), so messages that name key
    ids are the same in every run."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.key").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    Path(f"{out}.key").chmod(0o600)
    Path(f"{out}.pub").write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )


def run_suggested(message: str, **placeholders: str) -> int:
    """Runs the first ``drift-gate`` command a message suggests (in backticks), exactly as
    written but for its capitalised placeholders (``REFERENCE=...``); returns its exit code."""
    import shlex

    found = re.search(r"`(drift-gate [^`]+)`", message)
    assert found, f"no command suggested in: {message}"
    command = found.group(1)
    for word, value in placeholders.items():
        command = command.replace(word, shlex.quote(value))
    assert not re.search(r"\b[A-Z]{4,}\b", command.replace("drift-gate", "")), command
    return main(shlex.split(command)[1:])


def train_tiny(profile: Profile, data: Any, cache: Path, log: Any = lambda m: None, **kw: Any) -> Any:
    """``profile``'s tiny backbone trained on ``data`` on the CPU, without progress bars
    (``train_backbone``'s result); ``log`` gets its lines."""
    import torch

    from drift_gate.training.pipeline import train_backbone

    return train_backbone(
        profile, "tiny", data, torch.device("cpu"), cache_dir=cache, progress=False, log=log, **kw
    )
