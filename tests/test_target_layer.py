"""A profile's ``target_layer``: CAMs of drift-gate's own backbones at an earlier layer,
carried from the profile through the checkpoints into the baseline and the gate."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from drift_gate.cli import main
from drift_gate.data.datasets import DataSet
from drift_gate.errors import CheckpointError, ConfigError
from drift_gate.evidence.cam import CamEngine
from drift_gate.evidence.sanity import randomised_copy
from drift_gate.models.checkpoint import load_checkpoint, save_checkpoint
from drift_gate.training.profiles import BackboneOverrides, load_profile
from gatekit import TINY_TRAINING, assert_error, gate, make_env, result, train_tiny

#: The tiny body's first ReLU: a 16x16 grid at 32 px (its last module gives 8x8).
EARLIER = "body.2"


def _train(out: Path, data: DataSet, layer: str | None) -> Path:
    overrides = {} if layer is None else {"tiny": BackboneOverrides(target_layer=layer)}
    profile = dataclasses.replace(TINY_TRAINING, out=str(out), per_backbone=overrides)
    train_tiny(profile, data, out / "cache")
    return out / "tiny"


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory, phantom_data: DataSet) -> Path:
    """TL and FT checkpoints of the tiny backbone trained with ``target_layer = EARLIER``."""
    return _train(tmp_path_factory.mktemp("earlier"), phantom_data, EARLIER)


def test_the_layer_travels_with_the_checkpoints(earlier: Path, trained: Path) -> None:
    for phase in ("tl", "ft"):
        model, meta = load_checkpoint(earlier / f"{phase}.pt")
        assert meta.target_layer == EARLIER
        assert model.target is not None and model.target.path == EARLIER and model.target.grid == (16, 16)
        raw = torch.load(earlier / f"{phase}.pt", weights_only=True)
        assert raw["schema_version"] == 2, "an older drift-gate must refuse it, not read it at another layer"
        assert json.loads(raw["meta"])["target_layer"] == EARLIER
    # the default keeps the checkpoint format (and so the demo's bytes) as before
    raw = torch.load(trained / "tl.pt", weights_only=True)
    assert raw["schema_version"] == 1 and "target_layer" not in json.loads(raw["meta"])
    assert load_checkpoint(trained / "tl.pt")[0].target is None


def test_maps_are_computed_at_the_named_layer(earlier: Path) -> None:
    model, _ = load_checkpoint(earlier / "ft.pt")
    x = torch.rand(3, 3, 32, 32)
    batch = CamEngine(model)(x)
    assert {tuple(m.shape) for m in batch.maps.values()} == {(3, 16, 16)}
    # the same maps as the engine's hook on that layer of a model without the setting
    model.target, layer = None, model.target
    assert CamEngine(model)(x).maps["layercam"].shape[-1] == 8, "without it: the body's last module"
    again = CamEngine(model, layer=layer)(x)
    for m, t in batch.maps.items():
        assert torch.equal(t, again.maps[m])
    # head+block randomises the last weights up to the named layer (the BatchNorm before
    # that ReLU), not the body's last stage
    model.target = layer
    twin = randomised_copy(model, "head+block")
    changed = {
        name
        for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True)
        if not torch.equal(a, b)
    }
    assert changed and {n.split(".")[0] + "." + n.split(".")[1] for n in changed} == {
        "head.weight",
        "head.bias",
        "body.1",
    }, changed


def test_baseline_and_gate_use_the_layer(
    earlier: Path, trained: Path, tmp_path: Path, phantom_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = make_env(tmp_path, phantom_root, earlier / "tl.pt", earlier / "ft.pt", drift="iou.min = 0.0")
    stored = json.loads((env["baselines"] / "tiny" / "baseline.json").read_text())
    assert stored["maps"]["layer"] == EARLIER and stored["maps"]["shape"] == [16, 16]
    # exported to ONNX (predictions) while the maps still come from PyTorch at that layer
    cand = tmp_path / "cand" / "model.pt"
    cand.parent.mkdir()
    shutil.copy(earlier / "ft.pt", cand)
    export = [
        "export",
        "--checkpoint",
        str(cand),
        "--data",
        str(phantom_root),
        "--baselines",
        str(env["baselines"]),
    ]
    assert main([*export, "--device", "cpu", "--no-progress"]) == 0
    assert gate(env, cand) in (0, 1)
    (c,) = result(env)["candidates"]
    assert c["rules"] and c["predictions"] == "onnxruntime (CPUExecutionProvider)"
    capsys.readouterr()
    # a candidate whose maps come from another layer is refused, not compared
    code = gate(env, trained / "ft.pt")
    assert_error(code, capsys, r"target layer is None, the baseline .* was made on 'body.2'")


def test_a_wrong_layer_fails_before_training(tmp_path: Path, phantom_data: DataSet) -> None:
    with pytest.raises(ConfigError, match=r"per_backbone.tiny.target_layer: .*'body.99'"):
        _train(tmp_path, phantom_data, "body.99")
    assert not any(tmp_path.rglob("*.pt")), "nothing trained"


def test_a_checkpoint_naming_a_missing_layer_is_refused(earlier: Path, tmp_path: Path) -> None:
    model, meta = load_checkpoint(earlier / "tl.pt")
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, model, dataclasses.replace(meta, target_layer="body.42"))
    with pytest.raises(CheckpointError, match=r"bad.pt: its CAM target layer: .*body.42"):
        load_checkpoint(bad)
    save_checkpoint(bad, model, dataclasses.replace(meta, target_layer="body.0; import os"))
    with pytest.raises(CheckpointError, match="target_layer must be a module path"):
        load_checkpoint(bad)


def test_profiles_read_and_hash_the_layer(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(
        '[a]\nbackbones = ["densenet201"]\n'
        '[b]\nbackbones = ["densenet201"]\nper_backbone = { densenet201 = { input_size = 256 } }\n'
        '[c]\nbackbones = ["densenet201"]\n'
        'per_backbone = { densenet201 = { input_size = 256, target_layer = "body.0.denseblock3" } }\n'
        '[d]\nper_backbone = { densenet201 = { target_layer = "body[0]" } }\n'
    )
    b, c = load_profile(path, "b"), load_profile(path, "c")
    assert (
        c.target_layer_for("densenet201") == "body.0.denseblock3"
        and b.target_layer_for("densenet201") is None
    )
    assert load_profile(path, "a").target_layer_for("densenet201") is None
    assert c.training_key("densenet201", "tl", "x") != b.training_key("densenet201", "tl", "x"), (
        "the layer is part of the training key"
    )
    with pytest.raises(ConfigError, match=r"per_backbone.densenet201: target_layer: expected a module path"):
        load_profile(path, "d")
