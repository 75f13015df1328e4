"""What keeps a verdict from depending on the machine: the demo gates each FT checkpoint
against its own TL checkpoint (baselines made, and re-made, by the gate), and a stored
baseline rests on a pinned reference that is committed beside it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from drift_gate._io import file_sha256
from drift_gate.cli import main
from drift_gate.data.datasets import DataSet
from drift_gate.errors import CheckpointError
from drift_gate.training.profiles import OWN_TL, PhaseConfig, load_profile
from gatekit import RULES, TINY_TRAINING, train_tiny

ROOT = Path(__file__).resolve().parents[1]


def _gate_profile(tmp_path: Path, out: Path, data: Path, **keys: str) -> list[str]:
    extra = "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    (tmp_path / "profiles.toml").write_text(
        f'[t]\ndata = "{data}"\nbackbones = ["tiny"]\ninput_size = 32\nweights = "none"\n'
        f'out = "{out}"\n{extra}'
    )
    (tmp_path / "thresholds.toml").write_text(RULES.format(drift="iou.min = 0.0"))
    return [
        "gate",
        "--profile",
        "t",
        "--profiles",
        str(tmp_path / "profiles.toml"),
        "--thresholds",
        str(tmp_path / "thresholds.toml"),
        "--reports",
        str(tmp_path / "r"),
        "--device",
        "cpu",
        "--no-progress",
    ]


def test_an_own_tl_profile_makes_its_baselines_and_remakes_them_when_the_tl_changes(
    tmp_path: Path, trained: Path, phantom_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ck"
    shutil.copytree(trained, out / "tiny")
    args = _gate_profile(tmp_path, out, phantom_root, baselines=OWN_TL)
    assert main(args) == 0
    made = [line for line in capsys.readouterr().err.splitlines() if line.startswith("baselines:")]
    assert len(made) == 1 and "made from the TL checkpoints just trained" in made[0], made
    stored = json.loads((out / "baselines" / "tiny" / "baseline.json").read_text())
    assert stored["reference"]["sha256"] == file_sha256(out / "tiny" / "tl.pt")
    before = (out / "baselines" / "tiny" / "maps.npz").read_bytes()
    # unchanged TL: the baseline is kept as it is
    assert main(args) == 0
    assert "baselines:" not in capsys.readouterr().err
    assert (out / "baselines" / "tiny" / "maps.npz").read_bytes() == before
    # a TL trained again (here: another file in its place) gets a new baseline, not an error
    shutil.copy(out / "tiny" / "ft.pt", out / "tiny" / "tl.pt")
    assert main(args) == 0
    assert "made from the TL checkpoints just trained" in capsys.readouterr().err
    stored = json.loads((out / "baselines" / "tiny" / "baseline.json").read_text())
    assert stored["reference"]["sha256"] == file_sha256(out / "tiny" / "tl.pt")
    (c,) = json.loads((tmp_path / "r" / "gate.json").read_text())["candidates"]
    assert c["baseline"] == str(out / "baselines" / "tiny") and c["verdict"] == "pass"


def test_a_stored_baselines_folder_is_never_remade_by_the_gate(
    tmp_path: Path, trained: Path, phantom_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side of own-tl: a profile's stored baselines are refused when their
    reference differs, as before (a pull request cannot have them re-made)."""
    out = tmp_path / "ck"
    shutil.copytree(trained, out / "tiny")
    args = _gate_profile(tmp_path, out, phantom_root, baselines=str(tmp_path / "stored"))
    assert main([*args, "--create-missing-baselines"]) == 0
    capsys.readouterr()
    shutil.copy(out / "tiny" / "ft.pt", out / "tiny" / "tl.pt")
    assert main([*args, "--create-missing-baselines"]) == 2
    assert "sha256 differs from the reference the baseline" in capsys.readouterr().err


def test_a_pinned_reference_is_copied_not_trained(
    tmp_path: Path, phantom_data: DataSet, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    profile = dataclasses.replace(TINY_TRAINING, out=str(tmp_path / "ck"), reference=str(tmp_path / "ref"))
    first = train_tiny(profile, phantom_data, tmp_path / "c", log=lines.append)
    pinned = tmp_path / "ref" / "tiny" / "tl.pt"
    assert any("made the pinned reference" in line for line in lines), lines
    assert file_sha256(pinned) == file_sha256(first.checkpoints["tl"])
    # another machine (here: a fresh output folder): the pinned bytes, and FT from them
    lines.clear()
    again = dataclasses.replace(profile, out=str(tmp_path / "ck2"))
    second = train_tiny(again, phantom_data, tmp_path / "c", log=lines.append)
    assert any("the pinned reference" in line and "not trained" in line for line in lines), lines
    assert not any("TL: frozen body" in line for line in lines), "the TL phase must not run"
    assert file_sha256(second.checkpoints["tl"]) == file_sha256(pinned)
    assert second.checkpoints["ft"].is_file()
    # a pinned reference made with other TL settings is refused, never silently replaced
    other = dataclasses.replace(again, tl=PhaseConfig(epochs=1, lr=1e-2))
    with pytest.raises(CheckpointError, match="pinned reference was not trained with profile"):
        train_tiny(other, phantom_data, tmp_path / "c", log=lines.append)
    assert file_sha256(pinned) == file_sha256(first.checkpoints["tl"])


def test_committed_baselines_rest_on_committed_references() -> None:
    """Every baseline in baselines/ was made from a TL checkpoint that is committed (a
    profile's pinned reference), so a fresh clone on any machine has what it was made
    from; the demo makes its own from the TL it trains."""
    doc = tomllib.loads((ROOT / "profiles.toml").read_text(encoding="utf-8"))
    profiles = [load_profile(ROOT / "profiles.toml", name) for name in doc]
    assert load_profile(ROOT / "profiles.toml", "demo").own_tl_baselines
    committed = sorted(p.parent.name for p in (ROOT / "baselines").glob("*/baseline.json"))
    assert committed, "the pull-request check and the Docker example need a stored baseline"
    for arch in committed:
        meta = json.loads((ROOT / "baselines" / arch / "baseline.json").read_text())
        owners = [
            p
            for p in profiles
            if not p.own_tl_baselines and p.baselines_folder() == Path("baselines") and arch in p.backbones
        ]
        assert owners, f"baselines/{arch}: no profile gates against it"
        for p in owners:
            pinned = p.pinned_tl(arch)
            assert pinned is not None, f"profile {p.name}: baselines/{arch} without a pinned reference"
            assert (ROOT / pinned).is_file(), f"{pinned} is not committed"
            assert file_sha256(ROOT / pinned) == meta["reference"]["sha256"], f"{pinned} != baselines/{arch}"
