"""Bad baselines: each message names the file and says how to re-make it (exit code 2)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from drift_gate.cli import main
from drift_gate.gating.stored import load_baseline
from gatekit import RULES, assert_error, gate

REFRESH = "re-make it: `drift-gate baseline"


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CASES: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing": (shutil.rmtree, r"tiny/baseline\.json: no baseline \(missing or partially written\)"),
    "partially written (no baseline.json)": (
        lambda b: (b / "baseline.json").unlink(),
        r"baseline\.json: no baseline \(missing or partially written\)",
    ),
    "partially written (no maps.npz)": (
        lambda b: (b / "maps.npz").unlink(),
        r"maps\.npz: missing from the baseline",
    ),
    "baseline.json truncated": (
        lambda b: (b / "baseline.json").write_text((b / "baseline.json").read_text()[:40]),
        r"baseline\.json: unreadable baseline",
    ),
    "baseline.json lacks a field": (
        lambda b: _edit_json(b / "baseline.json", lambda d: d.pop("maps")),
        r"baseline\.json: baseline\.json lacks the field 'maps'",
    ),
    "maps tampered": (lambda b: _flip_byte(b / "maps.npz"), r"maps\.npz: hash differs from baseline\.json"),
    "audit set tampered": (
        lambda b: _edit_json(b / "audit.json", lambda d: d["samples"].reverse()),
        r"audit\.json: hash differs from baseline\.json",
    ),
    "audit.json not JSON": (
        lambda b: (b / "audit.json").write_text("{"),
        r"audit\.json: unreadable audit set",
    ),
    "older schema": (
        lambda b: _edit_json(b / "baseline.json", lambda d: d.update(schema_version=0)),
        r"baseline\.json: baseline schema 0 but this drift-gate reads schema 1",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_baseline(env: dict[str, Path], case: str, capsys: pytest.CaptureFixture[str]) -> None:
    damage, message = CASES[case]
    damage(env["baselines"] / "tiny")
    line = assert_error(gate(env, env["tl"]), capsys, message)
    assert REFRESH in line, line


def test_baseline_from_another_reference(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert gate(env, env["tl"], "--reference", str(env["tl"])) == 0
    capsys.readouterr()
    line = assert_error(
        gate(env, env["tl"], "--reference", str(env["ft"])), capsys, "sha256 differs from the reference"
    )
    assert "re-make the baseline: `drift-gate baseline --reference" in line


def test_thresholds_need_a_method_the_baseline_lacks(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    env["thresholds"].write_text(
        RULES.replace('"gradcam++"]', '"gradcam++", "xgradcam"]').format(drift="iou.min=0")
    )
    line = assert_error(gate(env, env["tl"]), capsys, r"tiny: baseline has no maps for xgradcam")
    assert "re-make it with these rules" in line


def test_approved_under_another_statistic(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Relative bounds compare like with like: a mean approved is no bound for a median."""
    env["thresholds"].write_text(RULES.format(drift="iou.min = 0.0\niou.max_drop = 0.1"))
    assert gate(env, env["ft"]) == 0
    assert main(["approve", "--result", str(env["reports"] / "gate.json")]) == 0
    env["thresholds"].write_text(
        RULES.format(drift="iou.min = 0.0\niou.max_drop = 0.1").replace('"mean"', '"median"')
    )
    capsys.readouterr()
    assert_error(
        gate(env, env["ft"]), capsys, r"baseline\.json: the approved result was recorded as the mean.*approve"
    )


def test_approve_refuses_a_result_for_another_baseline(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert gate(env, env["ft"]) == 0
    _edit_json(env["reports"] / "gate.json", lambda d: d["candidates"][0].update(audit_sha256="0" * 64))
    capsys.readouterr()
    assert_error(
        main(["approve", "--result", str(env["reports"] / "gate.json")]),
        capsys,
        "the baseline changed since this gate result was made; run the gate again",
    )


def test_approve_with_unreadable_result(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert_error(
        main(["approve", "--result", str(env["tmp"] / "none.json")]),
        capsys,
        "none.json: cannot read gate result",
    )


def test_refresh_that_cannot_write_keeps_the_old_baseline(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills up while the new set is written: exit 2, the old baseline whole."""
    import errno

    import drift_gate.gating.baseline as store
    from gatekit import baseline_args, tree_digest

    before = tree_digest(env["baselines"])
    real = store.atomic_write_bytes

    def full(path: Path, data: bytes) -> None:
        if path.name == "baseline.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(store, "atomic_write_bytes", full)
    code = main(baseline_args(env, env["ft"]))
    assert_error(code, capsys, r"tiny: cannot write the baseline \(No space left")
    assert tree_digest(env["baselines"]) == before
    assert not [p for p in env["baselines"].iterdir() if ".new-" in p.name]


def test_a_swap_cut_short_is_recovered(env: dict[str, Path]) -> None:
    """Where the two folders cannot be exchanged in one step, a crash between the two
    renames leaves ``.tiny.old`` and no ``tiny``: the next reader puts it back."""
    folder = env["baselines"] / "tiny"
    folder.rename(env["baselines"] / ".tiny.old")
    base = load_baseline(folder)
    assert base.path == folder and folder.is_dir() and not (env["baselines"] / ".tiny.old").exists()


def _rehashed(env: dict[str, Path], edit: Callable[[dict[str, np.ndarray], dict], None]) -> None:  # type: ignore[type-arg]
    """Edits the stored arrays (and baseline.json) and records the new maps hash, as
    someone would who wanted the edit to pass the hash check."""
    import hashlib
    import io

    folder = env["baselines"] / "tiny"
    with np.load(folder / "maps.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads((folder / "baseline.json").read_text())
    edit(arrays, meta)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (folder / "maps.npz").write_bytes(buf.getvalue())
    meta["maps"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (folder / "baseline.json").write_text(json.dumps(meta))


def _set(key: str, value: object) -> Callable[[dict[str, np.ndarray], dict], None]:  # type: ignore[type-arg]
    def edit(arrays: dict[str, np.ndarray], meta: dict) -> None:  # type: ignore[type-arg]
        if key in arrays:
            arrays[key] = value(arrays[key]) if callable(value) else value  # type: ignore[assignment]
        else:
            meta[key] = value

    return edit


STORED = {
    "maps at another resolution": (
        _set("map_layercam", lambda a: np.repeat(np.repeat(a, 2, 1), 2, 2)),
        r"layercam maps have shape \(10, 16, 16\), but the baseline records 10 maps of 8x8",
    ),
    "extra rows": (_set("map_layercam", lambda a: np.concatenate([a, a])), r"shape \(20, 8, 8\)"),
    "logits of another width": (
        _set("logits", lambda a: a[:, :3]),
        r"logits \(10, 3\) .* do not fit 10 images of 5",
    ),
    "NaN in the stored maps": (
        _set("map_gradcam++", lambda a: a * np.nan),
        r"stored gradcam\+\+ maps contain NaN or Inf \(the baseline is damaged, not the candidate\)",
    ),
    "AUC of NaN": (_set("auc", float("nan")), r"records an AUC of nan, not a number in \[0, 1\]"),
    "AUC above 1": (_set("auc", 1e300), r"records an AUC of 1e\+300"),
    "AUC as text": (_set("auc", "0.9"), r"records an AUC of '0.9'"),
    "a zip bomb": (
        _set("labels", lambda a: np.zeros(200_000_000, np.uint8)),
        r"declares 200,000,000 bytes in its header where 10 audit images need about .*; refused unread",
    ),
}


@pytest.mark.parametrize("case", list(STORED), ids=list(STORED))
def test_stored_arrays_are_checked_even_when_rehashed(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], case: str
) -> None:
    edit, message = STORED[case]
    _rehashed(env, edit)
    assert_error(gate(env, env["ft"]), capsys, message)


def test_candidate_with_another_map_grid_is_refused(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A baseline whose maps are consistently 4x4 (shape recorded, hash updated) against a
    candidate whose layer gives 8x8: comparing upsampled maps of different grids would
    otherwise pass silently."""

    def coarser(arrays: dict[str, np.ndarray], meta: dict) -> None:  # type: ignore[type-arg]
        for m in ("map_layercam", "map_gradcam++"):
            arrays[m] = arrays[m][:, ::2, ::2]
        meta["maps"]["shape"] = [4, 4]

    _rehashed(env, coarser)
    assert_error(
        gate(env, env["ft"]), capsys, r"ft.pt: its target layer gives 8x8 maps, the baseline .* stores 4x4"
    )
