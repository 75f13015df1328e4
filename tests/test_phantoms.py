"""The embedded phantom generator: determinism, anatomy, masks, a task that is real."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata

from drift_gate.data.phantom_set import generate_dataset
from drift_gate.data.phantoms import CLASSES, SOURCE_LABELS, render_phantom, render_source_sample


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", n_per_class=5, seed=11, size=48, progress=False)
    generate_dataset(tmp_path / "b", n_per_class=5, seed=11, size=48, progress=False)
    generate_dataset(tmp_path / "c", n_per_class=5, seed=12, size=48, progress=False)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_manifest_lists_every_file_with_its_hash(phantom_root: Path) -> None:
    lines = (phantom_root / "manifest.csv").read_text().splitlines()
    assert lines[0] == "path,label,split,sha256,mask"
    assert len(lines) == 1 + 10 * len(CLASSES)
    for line in lines[1:]:
        path, label, split, digest, mask = line.split(",")
        assert label in CLASSES and split in {"train", "val", "test"}
        assert hashlib.sha256((phantom_root / path).read_bytes()).hexdigest() == digest
        assert (phantom_root / mask).is_file()


def test_splits_are_stratified(phantom_root: Path) -> None:
    rows = [r.split(",") for r in (phantom_root / "manifest.csv").read_text().splitlines()[1:]]
    for label in CLASSES:
        splits = [r[2] for r in rows if r[1] == label]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (6, 2, 2)


@pytest.mark.parametrize("label", CLASSES)
def test_masks_are_inside_the_lungs(label: str) -> None:
    for index in range(4):
        ph = render_phantom(label, seed=5, index=index, size=96)
        assert ph.image.dtype == np.uint8 and ph.image.shape == (96, 96)
        assert not (ph.mask & ~ph.lungs).any()
        if label == "normal":
            assert not ph.mask.any()
        else:
            assert ph.mask.sum() > 20, "a disease phantom must have a visible finding"


def test_findings_sit_where_the_class_says() -> None:
    """Tuberculosis in the upper zones; the pneumonias and COVID-19 in the lower zones."""

    def centroid_row(label: str) -> float:
        rows = []
        for index in range(6):
            ph = render_phantom(label, seed=1, index=index, size=96)
            lung_rows = np.nonzero(ph.lungs.any(axis=1))[0]
            top, bottom = lung_rows.min(), lung_rows.max()
            rows.append((np.nonzero(ph.mask)[0].mean() - top) / (bottom - top))
        return float(np.mean(rows))

    assert centroid_row("tuberculosis") < 0.4
    for label in ("bacterial_pneumonia", "covid19", "viral_pneumonia"):
        assert centroid_row(label) > 0.5


def test_covid_is_bilateral_and_bacterial_unilateral() -> None:
    for index in range(5):
        covid = render_phantom("covid19", seed=2, index=index, size=96).mask
        bact = render_phantom("bacterial_pneumonia", seed=2, index=index, size=96).mask
        assert covid[:, :48].any() and covid[:, 48:].any()
        assert bact[:, :48].any() != bact[:, 48:].any()


def _best_auc(features: np.ndarray, labels: np.ndarray) -> float:
    """Best macro one-vs-rest AUC of any single feature column (either sign)."""
    ranks = rankdata(features, axis=0)
    aucs = []
    for c in range(len(CLASSES)):
        pos = labels == c
        n1, n0 = pos.sum(), (~pos).sum()
        auc = (ranks[pos].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)
        aucs.append(np.maximum(auc, 1 - auc))
    return float(np.mean(aucs, axis=0).max())


def test_task_is_not_solvable_from_global_intensity_or_one_pixel() -> None:
    images, labels = [], []
    for c, label in enumerate(CLASSES):
        for index in range(24):
            images.append(render_phantom(label, seed=4, index=index, size=48).image.astype(float))
            labels.append(c)
    x, y = np.stack(images), np.array(labels)
    global_stats = np.stack([x.mean((1, 2)), x.std((1, 2))], axis=1)
    assert _best_auc(global_stats, y) < 0.75
    assert _best_auc(x.reshape(len(x), -1), y) < 0.8


def test_source_task_targets_match_findings() -> None:
    counts = np.zeros(len(SOURCE_LABELS))
    for index in range(40):
        image, target = render_source_sample(seed=0, index=index, size=48)
        assert image.shape == (48, 48) and target.shape == (len(SOURCE_LABELS),)
        counts += target
        if target[:4].any():
            assert target[4:6].any() and target[6:].any()
    assert (counts > 0).all(), "every source label must occur"


def test_unknown_class_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown phantom class 'flu'"):
        render_phantom("flu", seed=0, index=0)


def test_too_few_phantoms_per_class_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from drift_gate.cli import main
    from gatekit import assert_error

    code = main(["data", "--out", str(tmp_path / "p"), "--n-per-class", "3", "--size", "32", "--no-progress"])
    assert_error(code, capsys, r"--n-per-class must be at least 5 .*, got 3")
    assert not (tmp_path / "p" / "manifest.csv").exists()
