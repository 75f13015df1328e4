"""Inputs stay inside the data root: manifest paths, masks, symlinks and audit ids that
leave it are refused with one line, unless --allow-outside-data-root says otherwise."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from drift_gate.cli import main
from gatekit import assert_error, baseline_args, gate


def _copy(phantom_root: Path, to: Path) -> Path:
    shutil.copytree(phantom_root, to)
    return to


def _rewrite_manifest(root: Path, change: dict[int, str]) -> None:
    """Replaces the path of the given rows of ``root/manifest.csv``."""
    with (root / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for i, path in change.items():
        rows[i]["path"] = path
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _train_rows(root: Path) -> tuple[int, str]:
    with (root / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    i = next(i for i, r in enumerate(rows) if r.get("split") == "train")
    return i, rows[i]["path"]


@pytest.mark.parametrize("how", ["dot-dot", "absolute", "symlink"])
def test_images_outside_the_data_root_are_refused(
    env: dict[str, Path], phantom_root: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    root = _copy(phantom_root, env["tmp"] / "data")
    outside = env["tmp"] / "elsewhere.png"
    i, rel = _train_rows(root)
    shutil.copy(root / rel, outside)
    if how == "dot-dot":
        _rewrite_manifest(root, {i: "../elsewhere.png"})
    elif how == "absolute":
        _rewrite_manifest(root, {i: str(outside)})
    else:
        (root / rel).unlink()
        (root / rel).symlink_to(outside)
    args = [*baseline_args({**env, "data": root}, env["tl"])]
    assert_error(
        main(args), capsys, r"image .* lies outside the data root .*refused. Pass --allow-outside-data-root"
    )
    assert main([*args, "--allow-outside-data-root"]) == 0


def test_an_audit_id_that_leaves_the_data_root_is_refused(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A re-hashed audit set whose id points out of the data root (to a copy of the same
    pixels, so only the confinement can catch it)."""
    folder = env["baselines"] / "tiny"
    audit = json.loads((folder / "audit.json").read_text())
    first = audit["samples"][0]["id"]
    shutil.copy(env["data"] / first, env["tmp"] / "copy.png")
    audit["samples"][0]["id"] = str(env["tmp"] / "copy.png")
    audit["sha256"] = hashlib.sha256(json.dumps(audit["samples"]).encode()).hexdigest()
    (folder / "audit.json").write_text(json.dumps(audit, indent=1) + "\n")
    meta = json.loads((folder / "baseline.json").read_text())
    meta["audit"]["sha256"] = audit["sha256"]
    (folder / "baseline.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    assert_error(gate(env, env["ft"]), capsys, r"audit image .*copy.png lies outside the data root")


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("a\x00b.png", r"image path '.*a\\x00b.png': not a usable path"),
        ("x" * 300 + ".png", r"image path 'x{40}'… \(304 characters\): not a usable path"),
    ],
    ids=["NUL byte", "over-long name"],
)
def test_nul_bytes_and_over_long_names_in_a_manifest(
    env: dict[str, Path], phantom_root: Path, capsys: pytest.CaptureFixture[str], path: str, pattern: str
) -> None:
    root = _copy(phantom_root, env["tmp"] / "data")
    i, _ = _train_rows(root)
    _rewrite_manifest(root, {i: path})
    assert_error(main(baseline_args({**env, "data": root}, env["tl"])), capsys, pattern)


def test_a_report_folder_that_cannot_be_written_keeps_the_previous_reports(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while the third report is written: exit 2, the previous set whole."""
    import errno

    import drift_gate.gating.report as report
    from gatekit import tree_digest

    assert gate(env, env["ft"]) in (0, 1)
    before = tree_digest(env["reports"])
    real = report.atomic_write_bytes

    def full(path: Path, data: bytes) -> None:
        if "junit" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(report, "atomic_write_bytes", full)
    assert_error(
        gate(env, env["ft"]), capsys, r"cannot write the reports \(No space left on device\); the previous"
    )
    assert tree_digest(env["reports"]) == before
    assert not [p for p in env["reports"].iterdir() if ".new-" in p.name]
