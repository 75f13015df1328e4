"""A profile's ``output_stride``: drift-gate's own backbones built with half their output
stride (a CAM grid twice as fine), carried from the profile through the pretraining and the
checkpoints into the baseline and the gate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from drift_gate.data.datasets import DataSet
from drift_gate.errors import CheckpointError, ConfigError
from drift_gate.models.backbones import build_classifier, get_backbone
from drift_gate.models.checkpoint import load_checkpoint, save_checkpoint
from drift_gate.training import loops
from drift_gate.training.loops import to_training_layout, training_layout
from drift_gate.training.pipeline import finetune_from
from drift_gate.training.profiles import BackboneOverrides, load_profile
from gatekit import TINY_TRAINING, assert_error, gate, make_env, train_tiny


@pytest.mark.parametrize(
    ("name", "size", "grid", "finer_grid"),
    [
        ("tiny", 32, 8, 16),
        ("densenet201", 64, 2, 4),
        ("resnet50v2", 64, 2, 4),
        # unpadded reductions: 160 px gives 8x8 before Mixed_7a, 3x3 after it
        ("inception_v3", 160, 3, 8),
    ],
)
def test_half_the_output_stride_doubles_the_grid_with_the_same_weights(
    name: str, size: int, grid: int, finer_grid: int
) -> None:
    spec = get_backbone(name)
    torch.manual_seed(0)
    own = build_classifier(name, 5).eval()
    finer = build_classifier(name, 5, output_stride=spec.output_stride // 2).eval()
    own_shapes = {k: v.shape for k, v in own.state_dict().items()}
    assert own_shapes == {k: v.shape for k, v in finer.state_dict().items()}, "ImageNet weights still fit"
    finer.load_state_dict(own.state_dict())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert own.body(x).shape[-2:] == (grid, grid)
        act = finer.body(x)
        assert act.shape[-2:] == (finer_grid, finer_grid)
        assert torch.allclose(finer(x), finer.forward_head(act))


def test_resnet50v2_at_output_stride_16_is_timms() -> None:
    """The reference: timm builds ResNetV2 at output stride 16 itself (stride 1, dilated)."""
    import timm

    torch.manual_seed(0)
    ours = build_classifier("resnet50v2", 5, output_stride=16).eval()
    ref = timm.create_model("resnetv2_50.a1h_in1k", pretrained=False, num_classes=0, output_stride=16)
    parts = {"0": "stem", "1": "stages", "2": "norm"}
    state = {
        parts[k.split(".", 1)[0]] + "." + k.split(".", 1)[1]: v for k, v in ours.body.state_dict().items()
    }
    ref.load_state_dict(state)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(ours.body(x), ref.eval().forward_features(x))


def test_inception_v3_runs_its_reduction_block_at_stride_1() -> None:
    torch.manual_seed(0)
    model = build_classifier("inception_v3", 5, output_stride=16).eval()
    mixed_7a = model.body[15]
    assert mixed_7a.branch3x3_2.conv.stride == (1, 1) and mixed_7a.branch7x7x3_4.conv.stride == (1, 1)
    assert model.body[16].branch3x3_2a.conv.dilation == (1, 2), "a 1x3 kernel is dilated along its 3"
    with torch.no_grad():
        assert mixed_7a(torch.randn(1, 768, 8, 8)).shape[-2:] == (8, 8)


@pytest.mark.parametrize(
    ("name", "stride", "pattern"),
    [
        ("mobilenet_v3_small", 16, "mobilenet_v3_small can be built with 32$"),
        ("densenet201", 8, "densenet201 can be built with 32 or 16"),
        ("tiny", 3, "tiny can be built with 4 or 2"),
    ],
)
def test_unsupported_strides_are_named(name: str, stride: int, pattern: str) -> None:
    with pytest.raises(ConfigError, match=f"output_stride = {stride}: {pattern}"):
        build_classifier(name, 2, output_stride=stride)


@pytest.fixture(scope="module")
def finer(tmp_path_factory: pytest.TempPathFactory, phantom_data: DataSet) -> Path:
    """TL and FT checkpoints of the tiny backbone trained with ``output_stride = 2``."""
    out = tmp_path_factory.mktemp("finer")
    profile = dataclasses.replace(
        TINY_TRAINING, out=str(out), per_backbone={"tiny": BackboneOverrides(output_stride=2)}
    )
    train_tiny(profile, phantom_data, out / "cache")
    return out / "tiny"


def test_the_stride_travels_with_the_checkpoints(finer: Path, trained: Path) -> None:
    for phase in ("tl", "ft"):
        model, meta = load_checkpoint(finer / f"{phase}.pt")
        assert meta.output_stride == 2
        with torch.no_grad():
            assert model.body(torch.rand(1, 3, 32, 32)).shape[-2:] == (16, 16)
        raw = torch.load(finer / f"{phase}.pt", weights_only=True)
        assert raw["schema_version"] == 3, "an older drift-gate must refuse it, not build it at stride 4"
    raw = torch.load(trained / "tl.pt", weights_only=True)
    assert raw["schema_version"] == 1 and "output_stride" not in json.loads(raw["meta"])


def test_a_halved_stride_trains_channels_last_and_the_own_stride_channels_first(
    finer: Path, trained: Path, phantom_data: DataSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert training_layout(None) == torch.contiguous_format and training_layout(16) == torch.channels_last
    seen: list[torch.memory_format] = []

    def spy(model: torch.nn.Module, device: torch.device, layout: torch.memory_format) -> torch.nn.Module:
        seen.append(layout)
        return to_training_layout(model, device, layout)

    monkeypatch.setattr(loops, "to_training_layout", spy)
    for reference in (finer, trained):
        finetune_from(
            reference / "tl.pt",
            phantom_data,
            TINY_TRAINING.phase_for("tiny", "ft"),
            out=tmp_path / f"{reference.parent.name}.pt",
            seed=5,
            batch_size=TINY_TRAINING.batch_size,
            device=torch.device("cpu"),
        )
    assert seen == [torch.channels_last, torch.contiguous_format]


def test_hostile_strides_in_a_checkpoint_are_refused(finer: Path, tmp_path: Path) -> None:
    model, meta = load_checkpoint(finer / "tl.pt")
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, model, dataclasses.replace(meta, output_stride=3))
    with pytest.raises(CheckpointError, match=r"bad.pt: output_stride = 3: tiny can be built with 4 or 2"):
        load_checkpoint(bad)
    save_checkpoint(bad, model, dataclasses.replace(meta, output_stride=True))  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="output_stride must be an integer, 1 to 1024"):
        load_checkpoint(bad)


def test_a_candidate_of_another_stride_is_refused_by_the_baseline(
    finer: Path, trained: Path, tmp_path: Path, phantom_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = make_env(tmp_path, phantom_root, finer / "tl.pt", finer / "ft.pt", drift="iou.min = 0.0")
    stored = json.loads((env["baselines"] / "tiny" / "baseline.json").read_text())
    assert stored["maps"]["shape"] == [16, 16] and stored["output_stride"] == 2
    assert gate(env, finer / "ft.pt") in (0, 1)
    capsys.readouterr()
    assert_error(gate(env, trained / "ft.pt"), capsys, r"output_stride None \(baseline 2\)")


def test_profiles_read_check_and_hash_the_stride(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(
        '[a]\nbackbones = ["densenet201"]\n'
        '[b]\nbackbones = ["densenet201"]\nper_backbone = { densenet201 = { output_stride = 16 } }\n'
        '[c]\nbackbones = ["densenet201"]\nper_backbone = { densenet201 = { output_stride = 8 } }\n'
        '[d]\nper_backbone = { densenet201 = { output_stride = "16" } }\n'
    )
    a, b = load_profile(path, "a"), load_profile(path, "b")
    assert a.output_stride_for("densenet201") is None and b.output_stride_for("densenet201") == 16
    assert a.training_key("densenet201", "tl") != b.training_key("densenet201", "tl")
    with pytest.raises(ConfigError, match=r"\[c\].per_backbone.densenet201.output_stride = 8: .*32 or 16"):
        load_profile(path, "c")
    with pytest.raises(ConfigError, match=r"output_stride"):
        load_profile(path, "d")
