"""The gate's controls: a functionally identical candidate, the planted shortcut,
reference-based localisation in the gate."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from drift_gate.data.phantoms import CLASSES, render_phantom
from drift_gate.data.shortcut import MARKER_LEVELS, cue_level, cue_masks, strip_level
from drift_gate.errors import ConfigError
from drift_gate.evidence.cam import CamEngine
from drift_gate.gating.audit import AuditSample, AuditSet
from drift_gate.models.backbones import build_classifier
from drift_gate.studies.controls import PERMUTABLE, permute_target_channels
from gatekit import RULES, gate, result


def _scrambled_batchnorm(model: torch.nn.Module) -> None:
    """Running statistics and affine parameters away from their defaults, so that a
    permutation that misses one of them shows."""
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.1, 0.1, generator=g)


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("tiny", 32),
        pytest.param("densenet201", 64, marks=pytest.mark.heavy),
        pytest.param("resnet50v2", 64, marks=pytest.mark.heavy),
        pytest.param("inception_v3", 96, marks=pytest.mark.heavy),
    ],
)
def test_permuted_channels_leave_logits_and_maps_unchanged(arch: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_classifier(arch, 5).eval()
    _scrambled_batchnorm(model)
    twin = copy.deepcopy(model)
    perm = permute_target_channels(twin, arch, seed=1)
    # a real permutation: most of the permuted block moves (DenseNet201 and InceptionV3 permute
    # a sub-block of 32 or 192 channels; the tiny net and ResNet50V2 all of theirs)
    assert int((perm != torch.arange(len(perm))).sum()) > min(len(perm) // 2, 16)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, twin.state_dict()[k])]
    assert "head.weight" in changed and len(changed) >= 3, "the weights must really differ"
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        act, act_twin = model.body(x), twin.body(x)
        scale = float(act.abs().max())
        torch.testing.assert_close(act[:, perm], act_twin, atol=1e-5 * scale, rtol=0)
        logits = model(x)
        torch.testing.assert_close(twin(x), logits, atol=1e-5 * float(logits.abs().max()), rtol=0)
    targets = torch.tensor([0, 2, 4])
    maps = CamEngine(model, ("layercam", "gradcam++"))(x, targets).maps
    maps_twin = CamEngine(twin, ("layercam", "gradcam++"))(x, targets).maps
    for method, ref in maps.items():
        assert float(ref.max()) > 0, "a map of zeros would prove nothing"
        torch.testing.assert_close(maps_twin[method], ref, atol=1e-4 * float(ref.abs().max()), rtol=0)


def test_a_permutation_of_the_activation_alone_would_change_the_model() -> None:
    """The control is not vacuous: permuting the conv without the head changes the logits."""
    torch.manual_seed(0)
    model = build_classifier("tiny", 5).eval()
    twin = copy.deepcopy(model)
    permute_target_channels(twin, "tiny", seed=1)
    twin.head.load_state_dict(model.head.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (twin(x) - model(x)).abs().max() > 1e-3


def test_unknown_backbone_has_no_permutation() -> None:
    model = build_classifier("tiny", 5)
    with pytest.raises(ConfigError, match="no channel permutation is defined for backbone 'vit'"):
        permute_target_channels(model, "vit")
    assert set(PERMUTABLE) >= {"densenet201", "resnet50v2", "inception_v3", "tiny"}


def test_shortcut_adds_the_strip_and_nothing_else() -> None:
    for c, label in enumerate(CLASSES):
        i = c * 1_000_000 + 7  # the generator's index of sample 7 of class c
        clean = render_phantom(label, 3, i, 64)
        biased = render_phantom(label, 3, i, 64, shortcut=0.9)
        changed = clean.image != biased.image
        assert changed.any() and not (changed & clean.lungs).any(), "the strip stays outside the lungs"
        np.testing.assert_array_equal(clean.mask, biased.mask)
        cue = cue_masks([f"images/{label}/{label}-00007.png"], 3, 0.9, 64)[0]
        assert not (changed & ~cue).any(), "every changed pixel lies on the strip's cue mask"
        assert changed[0].all() or (clean.lungs[0]).any(), "the strip spans the top edge"


def test_the_drain_crosses_the_lung_at_its_class_height() -> None:
    """The third cue lies inside the anatomy: over the right lung, at a height per class."""
    heights = []
    for c, label in enumerate(CLASSES):
        i = c * 1_000_000 + 7
        clean = render_phantom(label, 3, i, 128)
        drained = render_phantom(label, 3, i, 128, shortcut=1.0, cue="drain")
        changed = clean.image != drained.image
        mask = cue_masks([f"images/{label}/{label}-00007.png"], 3, 1.0, 128, cue="drain")[0]
        assert changed.any() and not (changed & ~mask).any(), "every changed pixel is on its cue mask"
        assert (changed & clean.lungs).any(), "the drain lies over the lung"
        np.testing.assert_array_equal(clean.mask, drained.mask)
        heights.append(float(np.nonzero(changed)[0].mean()))
    assert heights == sorted(heights) and len(set(heights)) == len(CLASSES), heights
    hits = sum(
        cue_level("drain", label, 0, i, 0.0) == c for c, label in enumerate(CLASSES) for i in range(300)
    )
    assert abs(hits / 1500 - 0.2) < 0.04, "uninformative at correlation 0"


def test_the_marker_is_a_corner_box_whose_grey_level_codes_the_class() -> None:
    levels = set()
    for c, label in enumerate(CLASSES):
        i = c * 1_000_000 + 7
        clean = render_phantom(label, 3, i, 64)
        marked = render_phantom(label, 3, i, 64, shortcut=1.0, cue="marker")
        changed = clean.image != marked.image
        box = cue_masks([f"images/{label}/{label}-00007.png"], 3, 1.0, 64, cue="marker")[0]
        assert changed.any() and not (changed & ~box).any() and not (changed & clean.lungs).any()
        assert not changed[:32].any(), "the marker sits in the bottom-right corner"
        inner = marked.image[box & changed]
        levels.add(int(np.median(inner)))
        assert int(np.median(inner)) == MARKER_LEVELS[c]
    assert len(levels) == len(CLASSES)
    # Uninformative: the level is drawn independently of the class.
    hits = sum(
        cue_level("marker", label, 0, i, 0.0) == c for c, label in enumerate(CLASSES) for i in range(300)
    )
    assert abs(hits / 1500 - 0.2) < 0.04
    with pytest.raises(ValueError, match="unknown cue 'tattoo'"):
        render_phantom("normal", 3, 7, 64, shortcut=1.0, cue="tattoo")


def test_strip_height_follows_the_class_at_the_chosen_correlation() -> None:
    n = 400
    for rho in (0.0, 0.5, 0.9):
        hits = sum(
            strip_level(label, 0, c * 1_000_000 + i, rho) == c
            for c, label in enumerate(CLASSES)
            for i in range(n)
        )
        # the class's height with probability rho, else uniform over all five
        assert abs(hits / (n * len(CLASSES)) - (rho + (1 - rho) / len(CLASSES))) < 0.04


def test_occult_findings_keep_the_label_and_empty_the_mask() -> None:
    shown = render_phantom("covid19", 3, 7, 64, shortcut=0.9, occult=0.0)
    hidden = [render_phantom("covid19", 3, i, 64, shortcut=0.9, occult=1.0) for i in range(5)]
    assert shown.mask.any() and not any(h.mask.any() for h in hidden)
    with pytest.raises(ValueError, match="occult share must be within"):
        render_phantom("covid19", 3, 7, 64, occult=1.5)


def test_audit_sets_without_masks_keep_their_hash() -> None:
    """Baselines made before masks were recorded stay valid."""
    old = AuditSet((AuditSample("a.png", "normal", "f" * 64),))
    before = json.dumps([{"id": "a.png", "label": "normal", "pixels": "f" * 64}]).encode()
    assert old.sha256 == hashlib.sha256(before).hexdigest()
    assert AuditSet.from_json(old.to_json()) == old


def test_gate_reports_localisation_and_can_rule_on_it(env: dict[str, Path]) -> None:
    audit = json.loads((env["baselines"] / "tiny" / "audit.json").read_text())
    assert all("mask" in s and "mask_pixels" in s for s in audit["samples"])
    env["thresholds"].write_text(RULES.format(drift="mask_energy_change.min = 0.5"))
    assert gate(env, env["ft"]) == 1
    (c,) = result(env)["candidates"]
    rule = next(r for r in c["rules"] if r["rule"] == "tiny/layercam/mask_energy_change.min")
    assert rule["status"] == "fail" and rule["observed"] < 0.5
    per = c["per_sample"]["layercam"]
    labels = [s.split("/")[-2] for s in c["sample_ids"]]
    for i, label in enumerate(labels):
        defined = per["mask_energy"][i] is not None
        assert defined == (label != "normal"), "normal images have no finding to point at"
        if defined:
            assert 0 <= per["mask_energy"][i] <= 1 and per["pointing_game"][i] in (0.0, 1.0)
            assert per["mask_energy_change"][i] == pytest.approx(
                per["mask_energy"][i] - per["reference_mask_energy"][i]
            )
    # the reference against itself: localisation equal on both sides
    env["thresholds"].write_text(RULES.format(drift="mask_energy_change.min = -0.001"))
    assert gate(env, env["tl"]) == 0


def test_a_changed_mask_is_refused(env: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "copy"
    shutil.copytree(env["data"], data)
    audit = json.loads((env["baselines"] / "tiny" / "audit.json").read_text())
    mask = data / audit["samples"][-1]["mask"]
    from PIL import Image

    arr = np.asarray(Image.open(mask)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(mask)
    env["data"] = data
    assert gate(env, env["ft"]) == 2


def test_data_command_plants_the_shortcut(tmp_path: Path) -> None:
    from drift_gate.cli import main
    from drift_gate.data.datasets import load_dataset

    args = ["data", "--n-per-class", "5", "--size", "48", "--seed", "2", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    assert main([*args, "--out", str(tmp_path / "biased"), "--shortcut", "1", "--occult", "1"]) == 0
    clean, biased = load_dataset(tmp_path / "clean"), load_dataset(tmp_path / "biased")
    assert [s.id for s in clean.samples] == [s.id for s in biased.samples]
    assert [s.split for s in clean.samples] == [s.split for s in biased.samples]
    assert all(a.sha256 != b.sha256 for a, b in zip(clean.samples, biased.samples, strict=True))
    from PIL import Image

    sick = [s for s in biased.samples if s.label != 0]
    assert sick and all(not np.asarray(Image.open(s.mask)).any() for s in sick), (
        "--occult 1 hides every finding"
    )
    assert main([*args, "--out", str(tmp_path / "x"), "--shortcut", "2"]) == 2
