"""Sanity checks for the maps (model randomisation): the randomised copy, the rank
correlation, and the [sanity] rule in the gate (pass, and inconclusive, never a pass)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drift_gate.evidence.metrics import spearman
from drift_gate.evidence.sanity import randomised_copy
from drift_gate.models.backbones import build_classifier
from gatekit import RULES, gate, result


def test_randomised_copy_resets_the_head_and_block_only_and_keeps_the_rng() -> None:
    torch.manual_seed(0)
    model = build_classifier("tiny", 5)
    with torch.no_grad():  # as if trained: no parameter at its initial value
        for p in model.parameters():
            p.add_(0.1)
    state = torch.get_rng_state()
    head = randomised_copy(model, "head")
    assert torch.equal(torch.get_rng_state(), state), "the global random state is untouched"
    assert not torch.equal(head.head.weight, model.head.weight)
    assert all(
        torch.equal(a, b) for a, b in zip(head.body.parameters(), model.body.parameters(), strict=True)
    )
    both = randomised_copy(model, "head+block")
    pairs = zip(both.body.parameters(), model.body.parameters(), strict=True)
    changed = [not torch.equal(a, b) for a, b in pairs]
    assert any(changed) and not all(changed), "the last block with weights, not the whole body"
    assert torch.equal(randomised_copy(model, "head").head.weight, head.head.weight), "seeded: reproducible"
    with pytest.raises(ValueError, match="randomise 'all'"):
        randomised_copy(model, "all")


@pytest.mark.parametrize(
    ("arch", "randomised", "kept"),
    [
        # a pre-activation net's final norm holds no convolution: its last bottleneck goes with it
        ("resnet50v2", ("2.", "1.3.blocks.2."), ("1.3.blocks.1.", "1.2.", "0.")),
        ("inception_v3", ("17.",), ("16.", "0.")),
        ("densenet201", ("0.",), ()),
    ],
)
def test_head_and_block_reinitialise_convolutions_on_every_backbone(
    arch: str, randomised: tuple[str, ...], kept: tuple[str, ...]
) -> None:
    torch.manual_seed(0)
    model = build_classifier(arch, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    twin = randomised_copy(model, "head+block")
    before, after = model.body.state_dict(), twin.body.state_dict()
    changed = {k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])}
    for prefix in randomised:
        assert any(k.startswith(prefix) for k in changed), (arch, prefix)
    for prefix in kept:
        assert not any(k.startswith(prefix) for k in changed), (arch, prefix)
    assert any(before[k].dim() == 4 for k in changed), "a convolution is re-initialised"


def test_the_sanity_check_compares_maps_by_their_ranks() -> None:
    """It uses the drift metric's Spearman correlation (one formula for both)."""
    rng = np.random.default_rng(0)
    a = rng.random((4, 3, 3))
    out = spearman(a, np.stack([a[0], -a[1], a[2] ** 3, np.zeros((3, 3))]))
    assert out[0] == pytest.approx(1) and out[1] == pytest.approx(-1) and out[2] == pytest.approx(1)
    assert np.isnan(out[3]), "a constant map has no rank correlation"


@pytest.mark.parametrize(("bound", "status"), [(1.0, "pass"), (-1.0, "inconclusive")])
def test_the_sanity_rule_in_the_gate(env: dict[str, Path], bound: float, status: str) -> None:
    env["thresholds"].write_text(
        RULES.format(drift="iou.min = 0.0")
        + f'[sanity]\nrandomise = "head+block"\nmax_randomised_correlation = {bound}\n'
        + f"max_class_correlation = {bound}\n"
    )
    code = gate(env, env["ft"])
    c = result(env)["candidates"][0]
    rules = [r for r in c["rules"] if "/sanity." in r["rule"]]
    assert {r["rule"].split("/", 1)[1] for r in rules} == {
        f"{m}/sanity.{k}_correlation.max" for m in ("layercam", "gradcam++") for k in ("randomised", "class")
    }
    assert all(r["status"] == status for r in rules)
    assert all(-1 <= r["observed"] <= 1 for r in rules)
    if status == "inconclusive":
        assert code == 1 and c["verdict"] == "inconclusive"
        assert c["label"] == "maps insensitive to the model or class (sanity check)"
        assert "maps insensitive to the model" in rules[0]["message"]
    else:
        assert code == 0
