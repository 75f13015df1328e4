"""bfloat16 autocast (the GPU path; autocast runs on the CPU too): the gate's verdict
must not change against fp32, and the maps must stay close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drift_gate.errors import ConfigError
from drift_gate.evidence.cam import CamEngine
from drift_gate.evidence.metrics import drift_metrics
from drift_gate.models.checkpoint import load_checkpoint
from gatekit import gate, result


def test_bf16_gate_gives_the_fp32_verdict(env: dict[str, Path]) -> None:
    runs = {}
    for precision in ("fp32", "bf16"):
        assert gate(env, env["ft"], "--precision", precision) == 0
        runs[precision] = result(env)["candidates"][0]
    a, b = runs["fp32"], runs["bf16"]
    assert (a["precision"], b["precision"]) == ("fp32", "bf16")
    assert a["verdict"] == b["verdict"] and [r["status"] for r in a["rules"]] == [
        r["status"] for r in b["rules"]
    ]
    for method in ("layercam", "gradcam++"):
        for metric in ("iou", "correlation", "displacement"):
            x = a["summaries"][method][metric]["overall"]["mean"]
            y = b["summaries"][method][metric]["overall"]["mean"]
            assert abs(x - y) < 0.05, (method, metric, x, y)


def test_bf16_maps_stay_close_to_fp32(env: dict[str, Path]) -> None:
    model, _ = load_checkpoint(env["ft"])
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 5
    full = CamEngine(model, ("layercam",))(x, y).maps["layercam"]
    half = CamEngine(model, ("layercam",), precision="bf16")(x, y).maps["layercam"]
    assert full.dtype == half.dtype == torch.float32
    m = drift_metrics(full.numpy(), half.numpy())
    ok = ~m["degenerate"]
    assert ok.any() and np.nanmin(m["correlation"][ok]) > 0.95


def test_autocast_switches_the_forward_to_bfloat16() -> None:
    from drift_gate.evidence.cam import autocast

    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with autocast(torch.device("cpu"), "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert conv(x).dtype == torch.float32


def test_unknown_precision() -> None:
    from drift_gate.models.backbones import build_classifier

    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        CamEngine(build_classifier("tiny", 5), precision="fp8")
