"""Backbone registry: the study's three CNNs, a small one for the pinned CI reference and a
tiny one for tests.

Every model is a :class:`Classifier`: a ``body`` whose *last* module is the CAM
target layer (so the body's output is exactly the activation that CAMs are
computed on), global average pooling, and a linear ``head``. Keeping the target
layer at the end of the body lets the CAM engine take the gradient of a logit
with respect to that activation alone, and lets the transfer-learning phase
train the head on pooled body outputs computed once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from drift_gate.errors import ConfigError
from drift_gate.models.layers import TargetLayer
from drift_gate.models.weights import timm_weights_file, torchvision_weights_file

__all__ = [
    "BACKBONES",
    "HALF",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "Classifier",
    "build_classifier",
    "get_backbone",
]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


class Classifier(nn.Module):
    """``head(mean_hw(body(x)))``; ``body``'s last module is the CAM target layer unless
    ``target`` names an earlier one (a profile's ``target_layer``, stored in the checkpoint).

    Attributes:
        target: ``None`` (CAMs on the body's output, with the fast path of
            :class:`~drift_gate.evidence.cam.CamEngine`), or a located layer inside the
            body (e.g. ``body.0.denseblock3``), whose output the engine captures with a hook.
    """

    def __init__(self, body: nn.Sequential, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(num_features, num_classes)
        self.target: TargetLayer | None = None

    @property
    def target_layer(self) -> nn.Module:
        """The module whose output CAMs are computed on."""
        return self.body[-1] if self.target is None else self.get_submodule(self.target.path)

    def forward_head(self, activation: torch.Tensor) -> torch.Tensor:
        """Logits from the target layer's activation ``(B, C, h, w)``."""
        logits: torch.Tensor = self.head(activation.mean(dim=(2, 3)))
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.body(x))


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone.

    Attributes:
        name: registry name.
        build_body: ``imagenet -> (body, num_features)``; with ``imagenet=True`` the
            body carries the ImageNet weights (see :mod:`drift_gate.weights`).
        target: human-readable name of the CAM target layer.
        min_input: smallest input side the architecture accepts.
        imagenet_norm: ``(mean, std)`` the ImageNet weights expect.
    """

    name: str
    build_body: Callable[[bool], tuple[nn.Sequential, int]]
    target: str
    min_input: int
    imagenet_norm: tuple[tuple[float, float, float], tuple[float, float, float]]


def _densenet201(imagenet: bool) -> tuple[nn.Sequential, int]:
    from torchvision.models import DenseNet201_Weights, densenet201

    if imagenet:
        torchvision_weights_file("densenet201")  # fails clearly instead of downloading
    net = densenet201(weights=DenseNet201_Weights.IMAGENET1K_V1 if imagenet else None)
    # torchvision applies F.relu(inplace=True) after norm5 inside forward(); a
    # separate, non-inplace ReLU makes the post-ReLU activation a module output
    # of its own that no later op overwrites.
    return nn.Sequential(net.features, nn.ReLU(inplace=False)), net.classifier.in_features


def _resnet50v2(imagenet: bool) -> tuple[nn.Sequential, int]:
    import timm

    kwargs: dict[str, Any] = {}
    if imagenet:
        kwargs["pretrained_cfg_overlay"] = {"file": str(timm_weights_file("resnetv2_50.a1h_in1k"))}
    net = timm.create_model("resnetv2_50.a1h_in1k", pretrained=imagenet, num_classes=0, **kwargs)
    parts = [cast(nn.Module, getattr(net, name)) for name in ("stem", "stages", "norm")]
    return nn.Sequential(*parts), int(cast(int, net.num_features))


def _inception_v3(imagenet: bool) -> tuple[nn.Sequential, int]:
    from torchvision.models import Inception_V3_Weights, inception_v3

    if imagenet:
        # The ImageNet weights come with aux logits; they are dropped below.
        torchvision_weights_file("inception_v3")
        net = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1)
    else:
        net = inception_v3(weights=None, aux_logits=False, init_weights=True)
    names = [
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "maxpool1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "maxpool2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
    ]
    # torchvision's transform_input maps ImageNet-normalised input to (x-0.5)/0.5;
    # the body expects the latter directly (imagenet_norm below).
    return nn.Sequential(*(getattr(net, n) for n in names)), net.fc.in_features


def _mobilenet_v3_small(imagenet: bool) -> tuple[nn.Sequential, int]:
    from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

    if imagenet:
        torchvision_weights_file("mobilenet_v3_small")
    net = mobilenet_v3_small(weights=MobileNet_V3_Small_Weights.IMAGENET1K_V1 if imagenet else None)
    # torchvision builds it with BatchNorm momentum 0.01 (its ImageNet recipe's hundreds of
    # epochs); in a short training run the running statistics would stay near their
    # initial values, so they get PyTorch's default 0.1. The last block's Hardswish output
    # is the body's output (nothing later overwrites it); the classifier's 1024-wide
    # hidden layer is replaced by the linear head.
    for m in net.features.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return nn.Sequential(net.features), int(net.features[-1].out_channels)


def _tiny(imagenet: bool) -> tuple[nn.Sequential, int]:
    if imagenet:
        raise ConfigError("the tiny test backbone has no ImageNet weights; use weights = 'none'")

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]

    return nn.Sequential(*block(3, 16, 2), *block(16, 32, 2), *block(32, 32, 1)), 32


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec(
            "densenet201",
            _densenet201,
            "features -> ReLU (non-inplace copy)",
            32,
            (IMAGENET_MEAN, IMAGENET_STD),
        ),
        BackboneSpec("resnet50v2", _resnet50v2, "norm (BN + ReLU before pooling)", 32, (HALF, HALF)),
        BackboneSpec("inception_v3", _inception_v3, "Mixed_7c", 75, (HALF, HALF)),
        # The small pinned reference of the pull-request check and the Docker example
        # (profile `ci`): 0.9 M parameters, its TL checkpoint committed (references/ci).
        BackboneSpec(
            "mobilenet_v3_small",
            _mobilenet_v3_small,
            "features (last conv block, Hardswish)",
            32,
            (IMAGENET_MEAN, IMAGENET_STD),
        ),
        BackboneSpec("tiny", _tiny, "last ReLU (non-inplace)", 8, (IMAGENET_MEAN, IMAGENET_STD)),
    )
}


def get_backbone(name: str) -> BackboneSpec:
    """Looks up a backbone by name.

    Raises:
        ConfigError: for an unknown name; the message lists the known ones.
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(
            f"unknown backbone {name!r}; known backbones: {', '.join(sorted(BACKBONES))}"
        ) from None


def build_classifier(name: str, num_classes: int, imagenet: bool = False) -> Classifier:
    """Builds backbone ``name`` with a fresh ``num_classes``-way linear head."""
    spec = get_backbone(name)
    body, num_features = spec.build_body(imagenet)
    return Classifier(body, num_features, num_classes)
