"""The method registry: Integrated Gradients equals Captum's, gates like any CAM, and a new
method is one registry entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from drift_gate.cli import main
from drift_gate.evidence.cam import CamEngine
from drift_gate.evidence.methods import IG_CELL, IG_STEPS, METHODS, Method, Needs, integrated_gradients
from drift_gate.models.adapters import ForeignModel
from drift_gate.models.backbones import build_classifier
from drift_gate.models.layers import find_layer
from drift_gate.models.spec import ModelSpec
from gatekit import RULES, baseline_args, gate, result


def _captum(net: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(net)
    return ig.attribute(
        x,
        baselines=torch.zeros_like(x),
        target=targets.tolist(),
        n_steps=IG_STEPS,
        method="riemann_trapezoid",
    )


@pytest.mark.parametrize("family", ["drift-gate tiny (its own fast path)", "torchvision resnet18 (a hook)"])
def test_integrated_gradients_equal_captum(family: str) -> None:
    """Float64 both sides; the engine's map is the channel sum pooled to 4-px cells."""
    torch.manual_seed(0)
    size = 64
    if family.startswith("drift-gate"):
        model = build_classifier("tiny", 5).eval().double()
        net: torch.nn.Module = model
    else:
        net = torchvision.models.resnet18(num_classes=5).eval().double()
        spec = ModelSpec(
            arch="python:m:f", classes=tuple("abcde"), input_size=size, mean=(0.5,) * 3, std=(0.5,) * 3
        )
        model = ForeignModel(net, spec, find_layer(net, "layer4", size, 3))
    n = 3 if family.startswith("drift-gate") else 2  # each side runs the ResNet IG_STEPS times per image
    x = torch.randn(n, 3, size, size, dtype=torch.float64)
    targets = torch.tensor([0, 3, 4])[:n]
    reference = _captum(net, x, targets)

    from types import SimpleNamespace

    evidence = SimpleNamespace(inputs=x, targets=targets, logits=net)
    ours = integrated_gradients(evidence)  # type: ignore[arg-type]
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-7, atol=1e-12)
    # the engine's map (float32, as the gate runs): Captum's, summed over channels and pooled
    model.float()
    x32 = x.float()
    maps = CamEngine(model, ["integrated_gradients"])(x32, targets).maps["integrated_gradients"]
    reference = _captum(net, x32, targets).double()
    pooled = torch.nn.functional.avg_pool2d(reference.sum(1, keepdim=True), IG_CELL)[:, 0] * IG_CELL**2
    assert maps.shape == (n, size // IG_CELL, size // IG_CELL)
    scale = float(pooled.abs().max())
    np.testing.assert_allclose(maps.numpy(), pooled.clamp(min=0).numpy(), rtol=0, atol=1e-5 * scale)


def test_integrated_gradients_gate_with_the_same_metrics_and_rules(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A baseline of LayerCAM (8x8 at 32 px) and Integrated Gradients (8x8 of 4-px cells here;
    32x32 at 128 px) together; the gate applies the same rules to both."""
    rules = env["tmp"] / "ig.toml"
    rules.write_text(
        RULES.format(drift="iou.min = 0.0\ncorrelation.min = -1.0").replace(
            'methods = ["layercam", "gradcam++"]', 'methods = ["layercam", "integrated_gradients"]'
        )
    )
    local = {**env, "thresholds": rules, "baselines": env["tmp"] / "b-ig"}
    assert main(baseline_args(local, env["tl"])) == 0
    meta = json.loads((local["baselines"] / "tiny" / "baseline.json").read_text())
    assert meta["maps"]["methods"] == ["layercam", "integrated_gradients"]
    assert gate(local, env["tl"]) == 0  # the reference against itself: ideal values
    c = result(local)["candidates"][0]
    assert c["summaries"]["integrated_gradients"]["iou"]["overall"]["mean"] == pytest.approx(1.0)
    assert gate(local, env["ft"]) in (0, 1)
    c = result(local)["candidates"][0]
    rules_ig = [r for r in c["rules"] if r["method"] == "integrated_gradients"]
    assert {r["metric"] for r in rules_ig} == {"iou", "correlation"}


def test_a_new_method_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registering a method is all it takes for the engine and the thresholds to know it."""
    from drift_gate.gating.thresholds import parse_thresholds

    def negative_gradient(e):  # type: ignore[no-untyped-def]
        return (-e.gradient).clamp(min=0).mul(e.activation).sum(1)

    monkeypatch.setitem(METHODS, "neg", Method("neg", Needs.GRADIENT, negative_gradient, "a throw-away"))
    model = build_classifier("tiny", 5).eval()
    maps = CamEngine(model, ["layercam", "neg"])(torch.randn(2, 3, 32, 32)).maps
    assert set(maps) == {"layercam", "neg"} and maps["neg"].shape == maps["layercam"].shape
    parsed = parse_thresholds('[gate]\nmethods = ["neg"]\n[drift.tiny.neg]\niou.min = 0.1\n')
    assert parsed.methods == ("neg",)
