"""Deletion / insertion faithfulness: a map on the pixels the model uses scores higher than
one on pixels it ignores; the gate computes it for both maps and rules can use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from drift_gate.evidence.faithfulness import deletion_insertion
from gatekit import RULES, gate, result


class _Brightness(nn.Module):
    """Class 1's logit follows the mean brightness of the left half; class 0's is fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = (x[:, :, :, : x.shape[-1] // 2].mean((1, 2, 3)) - 1.0) * 8 * self.w
        return torch.stack([torch.zeros_like(left), left], dim=1)


class _Texture(_Brightness):
    """Class 1's logit follows the fine texture of the left half (what a blur removes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x[:, :, :, : x.shape[-1] // 2]
        texture = (half[..., 1:] - half[..., :-1]).abs().mean((1, 2, 3))
        left = (texture - 0.2) * 20 * self.w
        return torch.stack([torch.zeros_like(left), left], dim=1)


@pytest.mark.parametrize(("baseline", "model"), [("mean", _Brightness), ("blur", _Texture)])
def test_a_map_on_what_the_model_uses_is_more_faithful(baseline: str, model: type[nn.Module]) -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 1, 16, 16) + 0.5
    right = np.zeros((3, 4, 4), np.float32)
    right[:, :, :2] = np.linspace(1.0, 0.5, 8).reshape(4, 2)  # the left half: what the model uses
    wrong = right[:, :, ::-1].copy()
    targets = np.ones(3, dtype=np.int64)
    d_good, i_good = deletion_insertion(model(), x, right, targets, steps=8, baseline=baseline)
    d_bad, i_bad = deletion_insertion(model(), x, wrong, targets, steps=8, baseline=baseline)
    assert ((i_good - d_good) > (i_bad - d_bad) + 0.05).all(), (i_good - d_good, i_bad - d_bad)
    assert ((d_good >= 0) & (d_good <= 1) & (i_good >= 0) & (i_good <= 1)).all()
    with pytest.raises(ValueError, match="baseline 'noise'"):
        deletion_insertion(model(), x, right, targets, baseline="noise")


def test_the_gate_computes_faithfulness_of_both_maps(env: dict[str, Path]) -> None:
    env["thresholds"].write_text(
        RULES.format(drift="iou.min = 0.0\nfaithfulness_change.min = -2.0") + "[faithfulness]\nsteps = 4\n"
    )
    assert gate(env, env["ft"]) == 0
    c = result(env)["candidates"][0]
    for method in ("layercam", "gradcam++"):
        s = c["summaries"][method]
        assert {"faithfulness", "reference_faithfulness", "faithfulness_change"} <= set(s)
        change = s["faithfulness_change"]["overall"]["mean"]
        diff = s["faithfulness"]["overall"]["mean"] - s["reference_faithfulness"]["overall"]["mean"]
        assert change == pytest.approx(diff, abs=1e-9)
    assert any(r["rule"].endswith("faithfulness_change.min") and r["status"] == "pass" for r in c["rules"])
    assert "faithfulness on the candidate" in (env["reports"] / "gate.md").read_text()
