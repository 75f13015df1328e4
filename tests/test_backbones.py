"""Backbone registry, CAM target layers and the offline weight paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from drift_gate.errors import CheckpointError, ConfigError, WeightsUnavailableError
from drift_gate.models.backbones import BACKBONES, build_classifier, get_backbone
from drift_gate.models.weights import load_body_weights


def test_unknown_backbone_lists_known_ones() -> None:
    with pytest.raises(
        ConfigError,
        match="unknown backbone 'vgg16'; known backbones: densenet201, inception_v3, mobilenet_v3_small, "
        "resnet50v2, tiny",
    ):
        get_backbone("vgg16")


@pytest.mark.parametrize(
    ("name", "size", "channels", "target_type"),
    [
        ("tiny", 32, 32, nn.ReLU),
        ("densenet201", 64, 1920, nn.ReLU),
        ("resnet50v2", 64, 2048, None),
        ("inception_v3", 80, 2048, None),
        ("mobilenet_v3_small", 64, 576, None),
    ],
)
def test_body_ends_at_the_cam_target(
    name: str, size: int, channels: int, target_type: type[nn.Module] | None
) -> None:
    torch.manual_seed(0)
    model = build_classifier(name, num_classes=5).eval()
    assert model.target_layer is model.body[-1]
    if target_type is not None:
        assert isinstance(model.target_layer, target_type)
        assert not getattr(model.target_layer, "inplace", False), "target must not be an in-place alias"
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        act = model.body(x)
        assert act.shape[:2] == (2, channels)
        assert torch.allclose(model(x), model.forward_head(act))
    if name == "densenet201":
        assert float(act.min()) >= 0.0, "DenseNet's target is the post-ReLU activation"
    if name == "resnet50v2":
        assert type(model.target_layer).__name__ == "BatchNormAct2d"
    if name == "inception_v3":
        assert type(model.target_layer).__name__ == "InceptionE"


def test_imagenet_weights_offline_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(
        WeightsUnavailableError, match=r"densenet201-c1103571\.pth and put it at .*checkpoints"
    ):
        build_classifier("densenet201", 5, imagenet=True)
    with pytest.raises(WeightsUnavailableError, match="inception_v3"):
        build_classifier("inception_v3", 5, imagenet=True)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(
        WeightsUnavailableError, match=r"timm/resnetv2_50\.a1h_in1k are not in the Hugging Face cache"
    ):
        build_classifier("resnet50v2", 5, imagenet=True)
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        build_classifier("tiny", 5, imagenet=True)


def test_imagenet_weights_load_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the file where torchvision caches it, nothing is downloaded and it is used."""
    from torchvision.models import densenet201

    torch.manual_seed(1)
    reference = densenet201()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "densenet201-c1103571.pth")
    model = build_classifier("densenet201", 5, imagenet=True)
    assert torch.equal(model.body[0].conv0.weight, reference.features.conv0.weight)


def test_the_pinned_reference_backbone_loads_imagenet_weights_and_keeps_short_run_batchnorm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MobileNetV3-small (the ci profile's pinned reference): ImageNet weights from the cache;
    its BatchNorm running statistics follow a short training run (momentum 0.1, not
    torchvision's 0.01)."""
    from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

    torch.manual_seed(2)
    reference = mobilenet_v3_small()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    name = Path(MobileNet_V3_Small_Weights.IMAGENET1K_V1.url).name
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / name)
    model = build_classifier("mobilenet_v3_small", 5, imagenet=True)
    assert torch.equal(model.body[0][0][0].weight, reference.features[0][0].weight)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)


def test_local_weights_file(tmp_path: Path) -> None:
    source = build_classifier("tiny", 3)
    torch.save(source.body.state_dict(), tmp_path / "body.pt")
    from safetensors.torch import save_file

    save_file(source.body.state_dict(), str(tmp_path / "body.safetensors"))
    for name in ("body.pt", "body.safetensors"):
        target = build_classifier("tiny", 3)
        load_body_weights(target.body, tmp_path / name)
        assert torch.equal(target.body[0].weight, source.body[0].weight)
    wrong = build_classifier("densenet201", 3)
    with pytest.raises(CheckpointError, match="weights do not fit this backbone"):
        load_body_weights(wrong.body, tmp_path / "body.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        load_body_weights(wrong.body, tmp_path / "junk.pt")


def test_registry_names() -> None:
    assert set(BACKBONES) == {"densenet201", "resnet50v2", "inception_v3", "mobilenet_v3_small", "tiny"}
