"""The explanation methods, registered once: each a small type that says what it needs from
the engine and makes a raw map from it.

* **Gradient CAMs** need the target activation ``A`` and the gradient of the target logit
  with respect to it (one forward pass per batch, :class:`~drift_gate.evidence.cam.CamEngine`),
  and are a few lines over ``(A, dY/dA)``.
* **Ablation-CAM** needs the activation and the target's score with each channel zeroed
  (:meth:`Evidence.ablation_scores`; the engine evaluates only the head where it can).
* **Integrated Gradients** needs the model and its input: the path integral of the input
  gradient from a baseline (all zeros in the normalised input space, the dataset mean) to
  the image, ``(x - x') * sum_i w_i dY/dx(x' + a_i (x - x'))`` over :data:`IG_STEPS` points
  ``a_i`` evenly from 0 to 1, with Captum's trapezoid weights (``1/n``, both ends halved),
  summed over channels and pooled to a grid of :data:`IG_CELL`-pixel cells (a 32x32 grid
  at 128 px): evidence at a resolution no CAM has, and not derived from the target layer.
  It equals Captum's ``IntegratedGradients`` (``method="riemann_trapezoid"``) before the
  pooling (tests/test_methods.py). It costs :data:`IG_STEPS` forward and backward passes
  through the whole network per image.

Adding a method is one entry in :data:`METHODS` (a :class:`Method` with its ``needs`` and
its ``compute``); the engine asks only for what the selected methods need.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["IG_CELL", "IG_STEPS", "METHODS", "Evidence", "Method", "Needs", "integrated_gradients"]

_SPATIAL = (2, 3)
#: Integration points of Integrated Gradients, and the side (pixels) of its grid's cells.
IG_STEPS, IG_CELL = 16, 4


class Needs(enum.Enum):
    """What a method needs from the engine."""

    GRADIENT = "the target activation and its gradient"
    ABLATION = "the target activation and the score with each channel zeroed"
    INPUT = "the model and its input"


class Evidence(Protocol):
    """What the engine hands a method for one batch (float64 grids)."""

    @property
    def activation(self) -> Tensor: ...  # (B, C, h, w)

    @property
    def gradient(self) -> Tensor: ...  # (B, C, h, w), dY_target / dA

    def ablation_scores(self) -> Tensor: ...  # (B, C): (y - y_without_channel_k) / y

    @property
    def inputs(self) -> Tensor: ...  # (B, channels, H, W), the model's input

    @property
    def targets(self) -> Tensor: ...  # (B,), the class each map explains

    def logits(self, x: Tensor) -> Tensor: ...  # the model's logits for an input batch


@dataclass(frozen=True)
class Method:
    """One explanation method.

    Attributes:
        name: its key in ``[gate] methods`` and in results.
        needs: what it takes from the engine.
        compute: ``Evidence -> (B, h, w)`` raw map, before the ReLU the engine applies.
        description: one line for reports.
    """

    name: str
    needs: Needs
    compute: Callable[[Evidence], Tensor]
    description: str


def _gradcam(e: Evidence) -> Tensor:
    return (e.gradient.mean(_SPATIAL, keepdim=True) * e.activation).sum(1)


def _gradcam_pp(e: Evidence) -> Tensor:
    a, g = e.activation, e.gradient
    g2 = g * g
    alpha = g2 / (2 * g2 + a.sum(_SPATIAL, keepdim=True) * g2 * g + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    weights = (g.clamp(min=0) * alpha).sum(_SPATIAL, keepdim=True)
    return (weights * a).sum(1)


def _layercam(e: Evidence) -> Tensor:
    return (e.gradient.clamp(min=0) * e.activation).sum(1)


def _xgradcam(e: Evidence) -> Tensor:
    a, g = e.activation, e.gradient
    weights = (g * a / (a.sum(_SPATIAL, keepdim=True) + 1e-7)).sum(_SPATIAL, keepdim=True)
    return (weights * a).sum(1)


def _hirescam(e: Evidence) -> Tensor:
    return (e.gradient * e.activation).sum(1)


def _ablationcam(e: Evidence) -> Tensor:
    """Desai & Ramaswamy (2020): ``w_k = (y_c - y_c^{(k)}) / y_c`` over the activation."""
    return (e.ablation_scores()[:, :, None, None] * e.activation).sum(1)


def integrated_gradients(e: Evidence, steps: int = IG_STEPS) -> Tensor:
    """Integrated Gradients of the target logit with respect to the input, ``(B, C, H, W)``
    float64 (before summing channels and pooling), from an all-zero baseline."""
    x = e.inputs.detach()
    baseline = torch.zeros_like(x)
    alphas = torch.linspace(0, 1, steps, dtype=torch.float64).tolist()
    weight = 1.0 / steps  # Captum's riemann_trapezoid: step 1/n, both ends halved
    total = torch.zeros_like(x, dtype=torch.float64)
    for i, alpha in enumerate(alphas):
        point = (baseline + alpha * (x - baseline)).requires_grad_(True)
        with torch.enable_grad():
            chosen = e.logits(point).gather(1, e.targets[:, None]).sum()
            (grad,) = torch.autograd.grad(chosen, point)
        w = weight / 2 if i in (0, steps - 1) else weight
        total += w * grad.double()
    return (x - baseline).double() * total


def _integrated_gradients_map(e: Evidence) -> Tensor:
    attribution = integrated_gradients(e).sum(1, keepdim=True)  # (B, 1, H, W)
    cell = IG_CELL if min(attribution.shape[-2:]) >= 4 * IG_CELL else 1
    return torch.nn.functional.avg_pool2d(attribution, cell)[:, 0] * cell * cell


#: Every method the engine knows, by name.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("layercam", Needs.GRADIENT, _layercam, "LayerCAM (Jiang et al., 2021)"),
        Method("gradcam++", Needs.GRADIENT, _gradcam_pp, "Grad-CAM++ (Chattopadhay et al., 2018)"),
        Method("gradcam", Needs.GRADIENT, _gradcam, "Grad-CAM (Selvaraju et al., 2017)"),
        Method("xgradcam", Needs.GRADIENT, _xgradcam, "XGrad-CAM (Fu et al., 2020)"),
        Method("hirescam", Needs.GRADIENT, _hirescam, "HiResCAM (Draelos & Carin, 2020)"),
        Method("ablationcam", Needs.ABLATION, _ablationcam, "Ablation-CAM (Desai & Ramaswamy, 2020)"),
        Method(
            "integrated_gradients",
            Needs.INPUT,
            _integrated_gradients_map,
            f"Integrated Gradients (Sundararajan et al., 2017), {IG_STEPS} steps, {IG_CELL}-px cells",
        ),
    )
}
