"""Backbone registry: the study's three CNNs, a small one for the pinned CI reference and a
tiny one for tests.

Every model is a :class:`Classifier`: a ``body`` whose *last* module is the CAM
target layer (so the body's output is exactly the activation that CAMs are
computed on), global average pooling, and a linear ``head``. Keeping the target
layer at the end of the body lets the CAM engine take the gradient of a logit
with respect to that activation alone, and lets the transfer-learning phase
train the head on pooled body outputs computed once.

The CAM grid is the input side over the body's *output stride* (32 for the study's three
CNNs: 4x4 at 128 px). ``output_stride`` halves it the way DeepLab does: the last
downsampling step runs at stride 1 and every later 3x3 (or 1xk, kx1) convolution is dilated
by 2, so each filter still spans the extent it was trained on and the ImageNet weights still
fit; the grid doubles (8x8 at 128 px) for about 1.2-1.4x the training step's time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
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
    "check_output_stride",
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
        output_stride: the body's own output stride (input side / CAM grid side).
        halve_stride: makes a built body's output stride half of ``output_stride`` (see the
            module's docstring); ``None`` where the backbone does not offer it.
    """

    name: str
    build_body: Callable[[bool], tuple[nn.Sequential, int]]
    target: str
    min_input: int
    imagenet_norm: tuple[tuple[float, float, float], tuple[float, float, float]]
    output_stride: int = 32
    halve_stride: Callable[[nn.Sequential], None] | None = None

    @property
    def output_strides(self) -> tuple[int, ...]:
        """The output strides this backbone can be built with, its own first."""
        own = self.output_stride
        return (own,) if self.halve_stride is None else (own, own // 2)


def _dilate(module: nn.Module, dilation: int) -> None:
    """Dilates every convolution in ``module`` along each axis its kernel spans, with the
    padding that keeps the spatial size."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            m.dilation = (dilation if kh > 1 else 1, dilation if kw > 1 else 1)
            m.padding = ((kh - 1) // 2 * m.dilation[0], (kw - 1) // 2 * m.dilation[1])


def _unstride(conv: nn.Conv2d) -> None:
    """A strided, unpadded convolution at stride 1 with the padding that keeps the size."""
    kh, kw = conv.kernel_size
    conv.stride, conv.padding = (1, 1), ((kh - 1) // 2, (kw - 1) // 2)


def _densenet201(imagenet: bool) -> tuple[nn.Sequential, int]:
    from torchvision.models import DenseNet201_Weights, densenet201

    if imagenet:
        torchvision_weights_file("densenet201")  # fails clearly instead of downloading
    net = densenet201(weights=DenseNet201_Weights.IMAGENET1K_V1 if imagenet else None)
    # torchvision applies F.relu(inplace=True) after norm5 inside forward(); a
    # separate, non-inplace ReLU makes the post-ReLU activation a module output
    # of its own that no later op overwrites.
    return nn.Sequential(net.features, nn.ReLU(inplace=False)), net.classifier.in_features


def _densenet201_halve(body: nn.Sequential) -> None:
    features: Any = body[0]
    features.transition3.pool = nn.Identity()
    _dilate(features.denseblock4, 2)


def _resnet50v2(imagenet: bool) -> tuple[nn.Sequential, int]:
    import timm

    kwargs: dict[str, Any] = {}
    if imagenet:
        kwargs["pretrained_cfg_overlay"] = {"file": str(timm_weights_file("resnetv2_50.a1h_in1k"))}
    net = timm.create_model("resnetv2_50.a1h_in1k", pretrained=imagenet, num_classes=0, **kwargs)
    parts = [cast(nn.Module, getattr(net, name)) for name in ("stem", "stages", "norm")]
    return nn.Sequential(*parts), int(cast(int, net.num_features))


def _resnet50v2_halve(body: nn.Sequential) -> None:
    # as timm.create_model(..., output_stride=16): the pre-activation bottleneck that strided
    # its 3x3 conv and its shortcut's 1x1 conv runs at stride 1, the blocks after it dilated
    stages: Any = body[1]
    first, *rest = stages[3].blocks
    first.conv2.stride = (1, 1)
    first.downsample.conv.stride = (1, 1)
    for block in rest:
        _dilate(block.conv2, 2)


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


class _ReductionAtStride1(nn.Module):
    """Mixed_7a (torchvision's ``InceptionD``, its modules under the same names, so its
    weights load as they are) without its reduction: its two strided 3x3 convolutions and
    its max-pool at stride 1, padded to keep the size."""

    BRANCHES = ("branch3x3_1", "branch3x3_2", *(f"branch7x7x3_{i}" for i in range(1, 5)))
    branch3x3_1: nn.Module
    branch3x3_2: nn.Module
    branch7x7x3_1: nn.Module
    branch7x7x3_2: nn.Module
    branch7x7x3_3: nn.Module
    branch7x7x3_4: nn.Module

    def __init__(self, reduction: nn.Module) -> None:
        super().__init__()
        for name in self.BRANCHES:
            self.add_module(name, reduction.get_submodule(name))
        for name in ("branch3x3_2.conv", "branch7x7x3_4.conv"):
            _unstride(cast(nn.Conv2d, self.get_submodule(name)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=1, padding=1)], 1)


def _inception_v3_halve(body: nn.Sequential) -> None:
    body[15] = _ReductionAtStride1(body[15])  # Mixed_7a
    _dilate(body[16], 2)  # Mixed_7b
    _dilate(body[17], 2)  # Mixed_7c


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


def _tiny_halve(body: nn.Sequential) -> None:
    _unstride(cast(nn.Conv2d, body[3]))
    _dilate(body[6], 2)


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec(
            "densenet201",
            _densenet201,
            "features -> ReLU (non-inplace copy)",
            32,
            (IMAGENET_MEAN, IMAGENET_STD),
            halve_stride=_densenet201_halve,
        ),
        BackboneSpec(
            "resnet50v2",
            _resnet50v2,
            "norm (BN + ReLU before pooling)",
            32,
            (HALF, HALF),
            halve_stride=_resnet50v2_halve,
        ),
        BackboneSpec(
            "inception_v3", _inception_v3, "Mixed_7c", 75, (HALF, HALF), halve_stride=_inception_v3_halve
        ),
        # The small pinned reference of the pull-request check and the Docker example
        # (profile `ci`): 0.9 M parameters, its TL checkpoint committed (references/ci).
        BackboneSpec(
            "mobilenet_v3_small",
            _mobilenet_v3_small,
            "features (last conv block, Hardswish)",
            32,
            (IMAGENET_MEAN, IMAGENET_STD),
        ),
        BackboneSpec(
            "tiny",
            _tiny,
            "last ReLU (non-inplace)",
            8,
            (IMAGENET_MEAN, IMAGENET_STD),
            output_stride=4,
            halve_stride=_tiny_halve,
        ),
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


def check_output_stride(name: str, output_stride: int | None) -> None:
    """Raises :class:`ConfigError` unless backbone ``name`` can be built with
    ``output_stride`` (``None``: its own)."""
    strides = get_backbone(name).output_strides
    if output_stride is not None and output_stride not in strides:
        raise ConfigError(
            f"output_stride = {output_stride!r}: {name} can be built with " + " or ".join(map(str, strides))
        )


def build_classifier(
    name: str, num_classes: int, imagenet: bool = False, output_stride: int | None = None
) -> Classifier:
    """Builds backbone ``name`` with a fresh ``num_classes``-way linear head; ``output_stride``
    (``None``: the backbone's own) halves its CAM grid's cell where the backbone offers it."""
    check_output_stride(name, output_stride)
    spec = get_backbone(name)
    body, num_features = spec.build_body(imagenet)
    if output_stride is not None and output_stride != spec.output_stride:
        assert spec.halve_stride is not None  # checked above
        spec.halve_stride(body)
    return Classifier(body, num_features, num_classes)
