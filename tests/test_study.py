"""`drift-gate study` and `drift-gate track` with the tiny backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drift_gate.cli import main
from gatekit import RULES, gate_args


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, phantom_root: Path) -> Path:
    """A tiny profile trained with --keep-epochs (2 FT epochs)."""
    root = tmp_path_factory.mktemp("study")
    (root / "p.toml").write_text(
        f'[t]\ndata = "{phantom_root}"\nbackbones = ["tiny"]\ninput_size = 32\nweights = "none"\n'
        f"batch_size = 8\ntl = {{ epochs = 3, lr = 1e-2 }}\nft = {{ epochs = 2, lr = 3e-3 }}\n"
        f'out = "{root / "ck"}"\n'
    )
    argv = ["train", "--profile", "t", "--profiles", str(root / "p.toml"), "--device", "cpu", "--no-progress"]
    assert main([*argv, "--keep-epochs", "--cache-dir", str(root / "cache")]) == 0
    return root


def test_keep_epochs_writes_one_checkpoint_per_epoch(run: Path) -> None:
    names = sorted(p.name for p in (run / "ck" / "tiny").glob("ft.epoch*.pt"))
    assert names == ["ft.epoch1.pt", "ft.epoch2.pt"]


def test_study_writes_table_json_plot_and_report(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run / "study"
    argv = ["study", "--profile", "t", "--profiles", str(run / "p.toml"), "--out", str(out)]
    assert (
        main([*argv, "--device", "cpu", "--no-progress", "--methods", "layercam,gradcam++,ablationcam"]) == 0
    )
    doc = json.loads((out / "study.json").read_text())
    assert [(r["backbone"], r["method"]) for r in doc["rows"]] == [
        ("tiny", "layercam"),
        ("tiny", "gradcam++"),
        ("tiny", "ablationcam"),
    ]
    row = doc["rows"][0]
    assert {"tl_auc", "ft_auc", "n", "iou", "displacement", "correlation", "concentration_change"} <= set(row)
    if row["n"] > 1:
        assert row["iou"]["ci_low"] <= row["iou"]["mean"] <= row["iou"]["ci_high"]
    assert set(doc["rankings"]) == {"layercam", "gradcam++", "ablationcam"}
    assert [c["check"].split(" ")[0] for c in doc["checks"]] == ["AUC", "displacement", "the"]
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "study.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page
    printed = capsys.readouterr().out
    assert "| tiny | ablationcam |" in printed and "stability ranking" in printed
    assert set(row["consistency"]) == {"reference", "candidate"} and "intra-class consistency" in printed


def test_track_first_epoch_equals_the_gate_on_that_checkpoint(run: Path) -> None:
    folder = run / "ck" / "tiny"
    env = {
        "baselines": run / "baselines",
        "thresholds": run / "thresholds.toml",
        "reports": run / "reports",
        "data": Path(json.loads((folder / "profile.json").read_text())["data"]),
    }
    env["thresholds"].write_text(RULES.format(drift="iou.min = 0.0"))
    base = [
        "baseline",
        "--reference",
        str(folder / "tl.pt"),
        "--data",
        str(env["data"]),
        "--thresholds",
        str(env["thresholds"]),
    ]
    assert main([*base, "--out", str(env["baselines"] / "tiny"), "--per-class", "2", "--device", "cpu"]) == 0
    out = run / "track"
    argv = [
        "track",
        "--checkpoints",
        str(folder),
        "--data",
        str(env["data"]),
        "--thresholds",
        str(env["thresholds"]),
    ]
    assert main([*argv, "--baselines", str(env["baselines"]), "--out", str(out), "--device", "cpu"]) == 0
    rows = json.loads((out / "track.json").read_text())["rows"]
    assert [r["epoch"] for r in rows] == [1, 2] and "vs_previous" in rows[1]
    assert main(gate_args(env, folder / "ft.epoch1.pt")) == 0
    (c,) = json.loads((env["reports"] / "gate.json").read_text())["candidates"]
    for method in ("layercam", "gradcam++"):
        for metric, value in rows[0]["vs_tl"][method].items():
            assert value == c["summaries"][method][metric]["overall"]["mean"], (method, metric)
    assert rows[0]["auc"] == c["auc"]
    assert rows[0]["consistency"]["layercam"] == c["consistency"]["layercam"]["candidate"]["overall"]["mean"]
    assert (out / "track.png").read_bytes()[:4] == b"\x89PNG"


def test_track_without_epoch_checkpoints(
    tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    folder = tmp_path / "tiny"
    folder.mkdir()
    shutil.copy(run / "ck" / "tiny" / "tl.pt", folder / "tl.pt")
    data = json.loads((run / "ck" / "tiny" / "profile.json").read_text())["data"]
    assert main(["track", "--checkpoints", str(folder), "--data", data, "--out", str(tmp_path / "o")]) == 2
    assert (
        "no ft.epoch<k>.pt checkpoints; train with `drift-gate train --keep-epochs`"
        in capsys.readouterr().err
    )


def test_stability_ranking_and_reversal() -> None:
    from drift_gate.evidence.registry import CORE_METRICS as CORE
    from drift_gate.studies.study import _stability_ranking

    def row(backbone: str, method: str, iou: float, disp: float) -> dict[str, object]:
        stats = {"mean": 0.0, "ci_low": None, "ci_high": None, "std": None, "n_degenerate": 0}
        out: dict[str, object] = {"backbone": backbone, "method": method, "n": 10}
        for metric in CORE:
            out[metric] = dict(stats)
        out["iou"] = {**stats, "mean": iou}
        out["correlation"] = {**stats, "mean": iou}
        out["displacement"] = {**stats, "mean": disp}
        return out

    rows = [
        row("a", "m1", 0.9, 0.01),
        row("b", "m1", 0.5, 0.05),
        row("c", "m1", 0.2, 0.09),
        row("a", "m2", 0.2, 0.09),
        row("b", "m2", 0.5, 0.05),
        row("c", "m2", 0.9, 0.01),
    ]
    assert _stability_ranking(rows, "m1") == ["a", "b", "c"]
    assert _stability_ranking(rows, "m2") == ["c", "b", "a"]
