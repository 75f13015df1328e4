"""Bad images, in the loader and in the gate's audit set: one line, exit code 2."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drift_gate.cli import main
from drift_gate.data.preprocess import read_image
from drift_gate.errors import DataError
from gatekit import assert_error, baseline_args, gate, write_dicom


def _png(mode: str, size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="TIFF" if mode in ("F", "CMYK") else "PNG")
    return buf.getvalue()


def _dicom_without_pixels() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.dcm"
        write_dicom(path, None)
        return path.read_bytes()


BAD: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "zero bytes": (lambda good: b"", "not a readable PNG, JPEG, TIFF or DICOM image"),
    "truncated": (lambda good: good[: len(good) // 3], "not a readable PNG, JPEG, TIFF or DICOM image"),
    "not an image": (lambda good: b"this is not a png", "not a readable PNG, JPEG, TIFF or DICOM image"),
    "RGBA": (lambda good: _png("RGBA"), r"alpha channel \(mode RGBA\)"),
    "gray + alpha": (lambda good: _png("LA"), r"alpha channel \(mode LA\)"),
    "32-bit float": (lambda good: _png("F"), "unsupported image mode F"),
    "CMYK": (lambda good: _png("CMYK"), "unsupported image mode CMYK"),
    "DICOM without pixel data": (lambda good: _dicom_without_pixels(), "DICOM file has no pixel data"),
}


@pytest.mark.parametrize("case", BAD)
def test_reader(tmp_path: Path, case: str) -> None:
    make, message = BAD[case]
    good = tmp_path / "good.png"
    Image.fromarray(np.arange(64 * 64).reshape(64, 64).astype(np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(make(good.read_bytes()))
    with pytest.raises(DataError, match=message) as info:
        read_image(bad, 16)
    assert str(info.value).startswith(str(bad)), "the message names the file"


def _audit_copy(env: dict[str, Path]) -> tuple[Path, Path]:
    """A copy of the data root; returns it and the path of its first audit image."""
    data = env["tmp"] / "data"
    shutil.copytree(env["data"], data)
    audit = json.loads((env["baselines"] / "tiny" / "audit.json").read_text())
    env["data"] = data
    return data, data / audit["samples"][0]["id"]


@pytest.mark.parametrize("case", BAD)
def test_bad_audit_image(env: dict[str, Path], case: str, capsys: pytest.CaptureFixture[str]) -> None:
    make, message = BAD[case]
    _, victim = _audit_copy(env)
    victim.write_bytes(make(victim.read_bytes()))
    assert_error(gate(env, env["tl"]), capsys, f"{victim}: .*{message}")


def test_changed_audit_image(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, victim = _audit_copy(env)
    with Image.open(victim) as im:
        im.load()
    im.point(lambda v: 255 - v).save(victim)
    assert_error(gate(env, env["tl"]), capsys, f"{victim}: pixels no longer match the audit set")


def test_missing_audit_image(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, victim = _audit_copy(env)
    victim.unlink()
    assert_error(gate(env, env["tl"]), capsys, f"audit image .* not found under {data}")


def test_reencoded_or_16_bit_audit_image_still_matches(env: dict[str, Path]) -> None:
    """The audit set is identified by decoded pixels, not file bytes."""
    _, victim = _audit_copy(env)
    before = victim.read_bytes()
    with Image.open(victim) as im:
        im.load()
    im.save(victim, compress_level=0)
    assert victim.read_bytes() != before
    assert gate(env, env["tl"]) == 0
    eight = np.asarray(im.convert("L"), dtype=np.uint16)
    Image.fromarray(eight * 257).save(victim)  # the same image as 16-bit grey
    with Image.open(victim) as im:
        assert im.mode.startswith("I")
    assert gate(env, env["tl"]) == 0
    sixteen = read_image(victim, 8)
    assert torch.all((sixteen >= 0) & (sixteen <= 1))


def test_audit_set_with_a_class_missing(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A data set whose test split lacks a class cannot give a balanced audit set."""
    data = env["tmp"] / "data"
    shutil.copytree(env["data"], data)
    with (data / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    victim = rows[0]["label"]
    kept = [r for r in rows if not (r["label"] == victim and r["split"] == "test")]
    with (data / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    env["data"] = data
    assert_error(main(baseline_args(env, env["tl"])), capsys, f"{victim}")
