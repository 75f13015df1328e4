"""The counterfactual check: a map pointing into the border band gets that region replaced,
and the score drop says whether the model relies on it; the gate rules on the mean drop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from drift_gate.errors import ConfigError
from drift_gate.evidence.counterfactual import (
    BASELINES,
    CONTROLS,
    CORNERS,
    REGIONS,
    border_band,
    corner_masks,
    counterfactual_drop,
    donor_indices,
)
from drift_gate.gating.rules import counterfactual_rule
from drift_gate.gating.thresholds import parse_thresholds
from gatekit import RULES, gate, result


class _Corner(nn.Module):
    """Class 1's logit follows the brightness of the bottom-right 3x3 corner (a marker)."""

    def __init__(self, uses_corner: bool = True) -> None:
        super().__init__()
        self.uses_corner = uses_corner
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        part = x[:, :, -3:, -3:] if self.uses_corner else x[:, :, 6:10, 6:10]
        score = (part.mean((1, 2, 3)) - 0.5) * 12 * self.w
        return torch.stack([torch.zeros_like(score), score], dim=1)


def _inputs() -> tuple[torch.Tensor, np.ndarray]:
    """Four 16 px images; the class-1 ones carry a bright corner marker, class 0 a dark one."""
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16) * 0.2 + 0.4
    targets = np.array([1, 0, 1, 0])
    for i, t in enumerate(targets):
        x[i, :, -3:, -3:] = 1.0 if t else 0.0
    return x, targets


def _maps(peak: tuple[int, int]) -> np.ndarray:
    m = np.zeros((4, 4, 4), np.float32)
    m[:, peak[0], peak[1]] = 1.0
    return m


def test_border_band() -> None:
    band = border_band((20, 20), 0.1)
    assert band.sum() == 20 * 20 - 16 * 16 and band[0].all() and not band[2:18, 2:18].any()


@pytest.mark.parametrize("baseline", ["swap", "mean", "edge"])
def test_replacing_a_marker_the_model_uses_drops_its_score(baseline: str) -> None:
    x, targets = _inputs()
    outside, drop = counterfactual_drop(_Corner(), x, _maps((3, 3)), targets, border=0.2, baseline=baseline)
    assert outside.tolist() == [1, 1, 1, 1]
    # Class 1 loses its bright marker: a large drop of its score.
    assert (drop[targets == 1] > 0.3).all(), drop
    # A model that ignores the corner loses nothing when it is replaced.
    _, drop = counterfactual_drop(
        _Corner(uses_corner=False), x, _maps((3, 3)), targets, border=0.2, baseline=baseline
    )
    assert np.abs(drop).max() < 1e-6


def test_maps_inside_are_not_perturbed() -> None:
    x, targets = _inputs()
    maps = _maps((1, 2))
    maps[3] = 0.5  # a constant map points nowhere
    outside, drop = counterfactual_drop(_Corner(), x, maps, targets, border=0.2)
    assert outside[:3].tolist() == [0, 0, 0] and np.isnan(outside[3]) and np.isnan(drop).all()
    with pytest.raises(ValueError, match="border must lie in"):
        counterfactual_drop(_Corner(), x, maps, targets, border=0.5)
    with pytest.raises(ValueError, match="baseline 'noise'"):
        counterfactual_drop(_Corner(), x, maps, targets, border=0.2, baseline="noise")


def test_the_rule_fails_a_large_mean_drop_and_skips_too_few() -> None:
    rules = parse_thresholds(
        RULES.format(drift="iou.min = 0.0") + "[counterfactual]\nmax_score_drop = 0.2\nmin_samples = 2\n"
    )
    assert rules.counterfactual_border == 0.1 and rules.counterfactual_baseline == "swap"
    fail = counterfactual_rule("tiny", "layercam", np.array([0.5, 0.3, np.nan]), rules)
    assert fail.status == "fail" and fail.observed == pytest.approx(0.4) and "2 of 3" in fail.message
    ok = counterfactual_rule("tiny", "layercam", np.array([0.1, 0.0, np.nan]), rules)
    assert ok.status == "pass"
    few = counterfactual_rule("tiny", "layercam", np.array([0.9, np.nan, np.nan]), rules)
    assert few.status == "skipped" and "min_samples 2" in few.message


def test_the_gate_reports_the_counterfactual_check(env: dict[str, Path]) -> None:
    env["thresholds"].write_text(
        RULES.format(drift="iou.min = 0.0")
        + "[counterfactual]\nborder = 0.3\nmax_score_drop = 1.0\nmin_samples = 1\n"
    )
    assert gate(env, env["ft"]) == 0
    c = result(env)["candidates"][0]
    for method in ("layercam", "gradcam++"):
        outside = c["per_sample"][method]["outside_anatomy"]
        drops = c["per_sample"][method]["counterfactual_drop"]
        assert len(outside) == len(drops) == c["n_audit"]
        assert all((d is None) == (o != 1) for o, d in zip(outside, drops, strict=True))
        assert "counterfactual_drop" in c["summaries"][method]
    rules = [r for r in c["rules"] if r["rule"].endswith("counterfactual_drop.max")]
    assert len(rules) == 2 and all(r["status"] in ("pass", "skipped") for r in rules)


def test_the_whole_band_is_replaced_whatever_the_maps_show() -> None:
    x, targets = _inputs()
    maps = _maps((1, 2))  # every map points inside
    outside, drop = counterfactual_drop(_Corner(), x, maps, targets, border=0.2, region="band")
    assert outside.tolist() == [0, 0, 0, 0] and np.isfinite(drop).all()
    assert (drop[targets == 1] > 0.3).all(), drop
    _, blind = counterfactual_drop(_Corner(uses_corner=False), x, maps, targets, border=0.2, region="band")
    assert np.abs(blind).max() < 1e-6
    # Another method's maps reuse the drops: no forward pass, the same values.
    _, again = counterfactual_drop(
        _Corner(uses_corner=False), x, _maps((3, 3)), targets, border=0.2, region="band", band_drop=drop
    )
    assert np.array_equal(again, drop)
    with pytest.raises(ValueError, match="region 'cells'"):
        counterfactual_drop(_Corner(), x, maps, targets, border=0.2, region="cells")


def test_the_band_drop_equals_captum_feature_ablation() -> None:
    """Captum's FeatureAblation with the band as one feature and each image's donor as its
    baseline gives, on every band pixel, the score before minus the score after."""
    from captum.attr import FeatureAblation

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 2))
    x, targets = _inputs()
    x = x + 0.1 * torch.randn_like(x)
    _, drop = counterfactual_drop(net, x, _maps((1, 2)), targets, border=0.2, region="band")
    band = border_band((16, 16), 0.2)
    donors = x[donor_indices(targets)]  # as the check draws them

    def probs(inp: torch.Tensor) -> torch.Tensor:
        return torch.softmax(net(inp), dim=1)

    attr = FeatureAblation(probs).attribute(
        x, baselines=donors, target=torch.as_tensor(targets), feature_mask=band.long()[None, None]
    )
    assert torch.allclose(attr[:, 0][:, band], torch.as_tensor(drop, dtype=attr.dtype)[:, None], atol=1e-6)


def test_each_corner_is_replaced_on_its_own_and_equals_captum() -> None:
    """``region = "corners"``: one drop per corner, each Captum's FeatureAblation with that
    corner as a feature and the donors as baselines; only the marker's corner costs score."""
    from captum.attr import FeatureAblation

    x, targets = _inputs()
    x = x + 0.05 * torch.rand_like(x)
    masks = corner_masks((16, 16), 0.2)
    assert masks.sum((1, 2)).tolist() == [9] * 4 and masks[3, -3:, -3:].all()
    assert not (masks.sum(0) > 1).any() and (masks.any(0) <= border_band((16, 16), 0.2)).all()
    net = _Corner()
    outside, drop = counterfactual_drop(net, x, _maps((1, 2)), targets, border=0.2, region="corners")
    assert drop.shape == (4, 4) and outside.tolist() == [0, 0, 0, 0]
    assert (drop[targets == 1, CORNERS.index("bottom-right")] > 0.3).all()
    assert np.abs(drop[:, :3]).max() < 1e-6, "the other corners carry nothing"
    feature = torch.full((16, 16), 4, dtype=torch.long)
    for k, m in enumerate(masks):
        feature[m] = k
    donors, target = x[donor_indices(targets)], torch.as_tensor(targets)
    attr = FeatureAblation(lambda inp: torch.softmax(net(inp), dim=1)).attribute(
        x, baselines=donors, target=target, feature_mask=feature[None, None]
    )
    for k, m in enumerate(masks):
        want = torch.as_tensor(drop[:, k], dtype=attr.dtype)[:, None]
        assert torch.allclose(attr[:, 0][:, m], want, atol=1e-6)


def test_the_corner_rule_names_the_costliest_corner(env: dict[str, Path]) -> None:
    section = "[counterfactual]\nmax_score_drop = 0.2\nregion = 'corners'\n"
    text = RULES.format(drift="iou.min = 0.0") + section
    rules = parse_thresholds(text)
    fail = counterfactual_rule("tiny", "layercam", np.array([0.5, 0.3, 0.1]), rules, corner="bottom-right")
    assert fail.rule == "tiny/counterfactual_drop.max" and fail.method is None
    assert fail.status == "fail" and "bottom-right corner" in fail.message
    env["thresholds"].write_text(text.replace("0.2", "1.0") + "border = 0.3\n")
    assert gate(env, env["ft"]) == 0
    c = result(env)["candidates"][0]
    drops = [c["per_sample"][m]["counterfactual_drop"] for m in ("layercam", "gradcam++")]
    assert drops[0] == drops[1] and None not in drops[0] and len(drops[0]) == c["n_audit"]
    (rule,) = [r for r in c["rules"] if "counterfactual" in r["rule"]]
    assert any(f"{k} corner" in rule["message"] for k in CORNERS) and rule["status"] == "pass"


def test_the_band_rule_is_the_backbones_and_counts_every_sample(env: dict[str, Path]) -> None:
    text = RULES.format(drift="iou.min = 0.0") + "[counterfactual]\nmax_score_drop = 0.2\nregion = 'band'\n"
    rules = parse_thresholds(text)
    assert rules.counterfactual_region == "band"
    fail = counterfactual_rule("tiny", "layercam", np.array([0.5, 0.3, 0.1]), rules)
    assert fail.rule == "tiny/counterfactual_drop.max" and fail.method is None
    assert fail.status == "fail" and fail.observed == pytest.approx(0.3) and "margin" in fail.message
    with pytest.raises(ConfigError, match=r"region: expected .map."):
        parse_thresholds(text.replace("'band'", "'cells'"))
    env["thresholds"].write_text(text.replace("0.2", "1.0") + "border = 0.3\n")
    assert gate(env, env["ft"]) == 0
    c = result(env)["candidates"][0]
    drops = [c["per_sample"][m]["counterfactual_drop"] for m in ("layercam", "gradcam++")]
    assert drops[0] == drops[1] and None not in drops[0] and len(drops[0]) == c["n_audit"]
    named = [r["rule"] for r in c["rules"] if "counterfactual" in r["rule"]]
    assert named == [f"{c['arch']}/counterfactual_drop.max"]


def test_the_corner_rule_stands_beside_the_band_rule(env: dict[str, Path]) -> None:
    """``max_corner_drop``: a second map-free rule, the costliest corner's, beside the
    band's; its per-sample drops are those ``region = "corners"`` judges."""
    band = "[counterfactual]\nmax_score_drop = 1.0\nregion = 'band'\nborder = 0.3\n"
    text = RULES.format(drift="iou.min = 0.0") + band + "max_corner_drop = 0.1\n"
    rules = parse_thresholds(text)
    assert rules.counterfactual_max_corner_drop == 0.1
    fail = counterfactual_rule(
        "tiny", "layercam", np.array([0.5, 0.3, 0.4]), rules, corner="top-left", corners=True
    )
    assert (fail.rule, fail.metric, fail.bound, fail.status) == (
        "tiny/corner_drop.max",
        "corner_drop",
        0.1,
        "fail",
    )
    assert "top-left corner" in fail.message and fail.observed == pytest.approx(0.4)
    with pytest.raises(ConfigError, match=r"max_corner_drop: region = 'corners' judges"):
        parse_thresholds(text.replace("'band'", "'corners'"))
    with pytest.raises(ConfigError, match=r"max_corner_drop: a score drop lies in \[0, 1\]"):
        parse_thresholds(text.replace("0.1", "1.5"))
    env["thresholds"].write_text(text.replace("0.1", "1.0"))
    assert gate(env, env["ft"]) == 0
    c = result(env)["candidates"][0]
    named = {r["rule"]: r for r in c["rules"] if "drop.max" in r["rule"]}
    arch = c["arch"]
    assert sorted(named) == [f"{arch}/corner_drop.max", f"{arch}/counterfactual_drop.max"]
    corner_rule = named[f"{arch}/corner_drop.max"]
    assert corner_rule["status"] == "pass" and any(f"{k} corner" in corner_rule["message"] for k in CORNERS)
    drops = c["per_sample"]["layercam"]["corner_drop"]
    assert None not in drops and len(drops) == c["n_audit"]
    # The same column that region = "corners" judges under max_score_drop.
    env["thresholds"].write_text(RULES.format(drift="iou.min = 0.0") + band.replace("band", "corners"))
    assert gate(env, env["ft"]) == 0
    alone = result(env)["candidates"][0]
    assert alone["per_sample"]["layercam"]["counterfactual_drop"] == pytest.approx(drops, abs=1e-12)
    (rule,) = [r for r in alone["rules"] if "drop.max" in r["rule"]]
    assert rule["observed"] == pytest.approx(corner_rule["observed"])


def test_donors_come_from_every_other_class_and_another_image() -> None:
    # A set stored class by class: every donor is of another class, and a class's images
    # get donors of each other class (not all the same neighbour).
    targets = np.repeat([0, 1, 2], 40)
    donors = donor_indices(targets)
    assert (targets[donors] != targets).all()
    assert set(targets[donors[:40]]) == {1, 2} and len(set(donors[:40])) > 20
    assert np.array_equal(donors, donor_indices(targets)), "the same on every run and rank"
    # Multi-label pairs of one image never donate to each other.
    pairs = donor_indices([0, 1, 0, 1], ["a", "a", "b", "b"])
    assert pairs.tolist() == [3, 2, 1, 0]
    assert donor_indices([2, 2]).tolist() == [0, 1]  # one class: no donor, itself


def test_control_donors_share_the_class_and_never_the_image() -> None:
    targets = np.repeat([0, 1, 2], 40)
    same = donor_indices(targets, same_class=True)
    assert (targets[same] == targets).all() and (same != np.arange(len(targets))).all()
    assert len(set(same[:40])) > 20
    assert donor_indices([0, 0, 1, 1], ["a", "a", "b", "c"], same_class=True).tolist() == [0, 1, 3, 2]
    assert donor_indices([0, 1], same_class=True).tolist() == [0, 1]  # alone in its class: itself


class _Seam(nn.Module):
    """Class 1's score falls as the top-left corner's brightness departs from the rest of
    the image's: any other image's corner costs score, whatever its class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner, rest = x[:, :, :3, :3].mean((1, 2, 3)), x[:, :, 6:10, 6:10].mean((1, 2, 3))
        score = 2 - 40 * (corner - rest).abs()
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_the_same_class_control_keeps_a_class_code_and_cancels_a_seam() -> None:
    """``control = "same-class"``: a class-coded marker keeps its whole drop (another image
    of its class carries the same marker), a seam any donor opens costs about nothing,
    and passing the donors themselves as the controls cancels every drop."""
    x, targets = _inputs()
    plain = counterfactual_drop(_Corner(), x, _maps((1, 2)), targets, border=0.2, region="corners")[1]
    coded = counterfactual_drop(
        _Corner(), x, _maps((1, 2)), targets, border=0.2, region="corners", control="same-class"
    )[1]
    assert (coded[targets == 1, 3] > 0.3).all() and np.array_equal(coded, plain)
    rng = np.random.default_rng(0)
    exposure = torch.as_tensor(rng.uniform(0.2, 0.8, 60), dtype=torch.float32)
    x = exposure.view(-1, 1, 1, 1) + 0.01 * torch.randn(60, 1, 16, 16)
    targets = np.tile([0, 1], 30)
    maps = np.zeros((60, 4, 4), np.float32)
    _, seam = counterfactual_drop(_Seam(), x, maps, targets, border=0.2, region="band")
    _, ctrl = counterfactual_drop(_Seam(), x, maps, targets, border=0.2, region="band", control="same-class")
    assert seam[targets == 1].mean() > 0.3 and abs(ctrl[targets == 1].mean()) < 0.1, (seam, ctrl)
    donors = x[donor_indices(targets)]
    _, zero = counterfactual_drop(
        _Seam(),
        x,
        maps,
        targets,
        border=0.2,
        region="band",
        donors=donors,
        control="same-class",
        controls=donors,
    )
    assert np.abs(zero).max() == 0
    with pytest.raises(ValueError, match="baseline 'mean' swaps nothing"):
        counterfactual_drop(_Seam(), x, maps, targets, region="band", baseline="mean", control="same-class")


def test_the_gate_measures_each_drop_against_its_same_class_control(env: dict[str, Path]) -> None:
    band = "[counterfactual]\nmax_score_drop = 1.0\nregion = 'band'\nborder = 0.3\nmax_corner_drop = 1.0\n"
    text = RULES.format(drift="iou.min = 0.0") + band + "control = 'same-class'\n"
    rules = parse_thresholds(text)
    assert rules.counterfactual_control == "same-class" and rules.as_dict()["counterfactual"]["control"]
    with pytest.raises(ConfigError, match=r"control: expected 'none' or 'same-class'"):
        parse_thresholds(text.replace("'same-class'", "'class'"))
    with pytest.raises(ConfigError, match=r"control: 'same-class' compares two swaps"):
        parse_thresholds(text + "baseline = 'blur'\n")
    env["thresholds"].write_text(text)
    assert gate(env, env["ft"]) == 0
    c = result(env)["candidates"][0]
    named = {r["rule"]: r for r in c["rules"] if "drop.max" in r["rule"]}
    assert len(named) == 2 and all("same-class control" in r["message"] for r in named.values())
    controlled = c["per_sample"]["layercam"]["corner_drop"]
    env["thresholds"].write_text(RULES.format(drift="iou.min = 0.0") + band)
    assert gate(env, env["ft"]) == 0
    plain = result(env)["candidates"][0]["per_sample"]["layercam"]["corner_drop"]
    assert None not in controlled and len(controlled) == len(plain) and controlled != pytest.approx(plain)


def test_several_draws_average_their_donors_drops() -> None:
    """``draws``: each image's drop is the mean of its donors' (and controls') drops, the
    same as averaging the one-donor drops by hand."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 2))
    x = torch.rand(12, 1, 16, 16)
    targets = np.tile([0, 1, 1], 4)
    maps = np.zeros((12, 4, 4), np.float32)
    kw: dict[str, Any] = {"border": 0.2, "region": "corners", "control": "same-class"}
    _, mean3 = counterfactual_drop(net, x, maps, targets, draws=3, batch_size=5, **kw)
    singles = []
    for d in range(3):
        donors = x[donor_indices(targets, seed=d)]
        controls = x[donor_indices(targets, seed=d, same_class=True)]
        singles.append(counterfactual_drop(net, x, maps, targets, donors=donors, controls=controls, **kw)[1])
    assert mean3.shape == (12, 4) and np.allclose(mean3, np.mean(singles, axis=0), atol=1e-7)
    assert not np.allclose(singles[0], singles[1])
    section = "[counterfactual]\nmax_score_drop = 0.5\nregion = 'band'\ndraws = {}\n"
    assert parse_thresholds(RULES.format(drift="iou.min = 0.0") + section.format(4)).counterfactual_draws == 4
    for bad, why in (("0", r"draws: expected a whole number"), ("4\nbaseline = 'mean'", "draws none")):
        with pytest.raises(ConfigError, match=why):
            parse_thresholds(RULES.format(drift="iou.min = 0.0") + section.format(bad))


def test_the_parser_accepts_every_choice_the_check_runs_and_no_other() -> None:
    rules = RULES.format(drift="iou.min = 0.0") + "[counterfactual]\nmax_score_drop = 0.5\n"
    for key, choices in (("baseline", BASELINES), ("region", REGIONS)):
        for choice in choices:
            assert parse_thresholds(rules + f"{key} = '{choice}'\n").as_dict()["counterfactual"]
    for choice in CONTROLS:
        assert parse_thresholds(rules + f"control = '{choice}'\n").counterfactual_control == choice
    with pytest.raises(ConfigError, match="expected 'swap', 'edge', 'mean' or 'blur', got 'noise'"):
        parse_thresholds(rules + "baseline = 'noise'\n")
