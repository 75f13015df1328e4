"""Public data sets in their own layouts (tests/public_sets.py builds the miniatures):
labels, label policies, splits, masks from boxes and mask files, the errors for a
missing file or column, and baseline -> gate on each."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from drift_gate.cli import main
from drift_gate.data.datasets import load_dataset
from drift_gate.data.masks import Boxes, read_mask
from drift_gate.data.preprocess import Preprocess
from drift_gate.errors import DataError
from gatekit import assert_error
from public_sets import (
    CHEXPERT_FINDINGS,
    MIMIC_FINDINGS,
    SIDE,
    add_nih_boxes,
    make_chexpert,
    make_covidqu,
    make_mimic,
    make_rsna,
)
from test_nih import FINDINGS as NIH_FINDINGS
from test_nih import make_nih

pytest.importorskip("torchxrayvision")  # its wheel ships the real metadata used here


def _table(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        return list(csv.DictReader(fh))


# --- CheXpert ------------------------------------------------------------------------


def _chexpert_truth(root: Path) -> dict[str, dict[str, str]]:
    rows = _table(root / "train.csv") + _table(root / "valid.csv")
    return {str(Path(*Path(r["Path"]).parts[1:]).as_posix()): r for r in rows}


@pytest.mark.parametrize("policy", ["zeros", "ones", "ignore"])
def test_chexpert_labels_views_and_uncertain_policy(tmp_path: Path, policy: str) -> None:
    root = make_chexpert(tmp_path / "CheXpert-v1.0-small")
    truth = _chexpert_truth(root)
    data = load_dataset(root, CHEXPERT_FINDINGS, multilabel=True, uncertain=policy)
    assert f"read as {policy}" in data.description
    frontal = {k for k, r in truth.items() if r["Frontal/Lateral"] == "Frontal"}
    ids = {s.id for s in data.samples}
    assert ids <= frontal and not any("lateral" in i for i in ids)
    uncertain = {k for k in frontal if any(truth[k][f] == "-1.0" for f in CHEXPERT_FINDINGS)}
    assert uncertain, "the real rows hold uncertain labels"
    assert ids == (frontal - uncertain if policy == "ignore" else frontal)
    for s in data.samples:
        row = truth[s.id]
        want = {f for f in CHEXPERT_FINDINGS if row[f] == "1.0" or (policy == "ones" and row[f] == "-1.0")}
        assert {data.classes[i] for i in s.labels or ()} == want, s.id


def test_chexpert_splits_follow_patients_and_valid_is_test(tmp_path: Path) -> None:
    data = load_dataset(make_chexpert(tmp_path / "cx"), CHEXPERT_FINDINGS, multilabel=True)
    assert {s.id.split("/")[0] for s in data.split("test")} == {"valid"}
    by_patient: dict[str, set[str]] = {}
    for s in data.samples:
        by_patient.setdefault(s.id.split("/")[1], set()).add(s.split)
    assert all(len(v) == 1 for v in by_patient.values())
    assert {s.split for s in data.samples} == {"train", "val", "test"}


def test_effusion_reads_pleural_effusion(tmp_path: Path) -> None:
    root = make_chexpert(tmp_path / "cx")
    a = load_dataset(root, ["Pleural Effusion"], multilabel=True)
    b = load_dataset(root, ["Effusion"], multilabel=True)
    assert [s.labels for s in a.samples] == [s.labels for s in b.samples]


# --- MIMIC-CXR-JPG -------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["zeros", "ones", "ignore"])
def test_mimic_frontal_official_split_and_policy(tmp_path: Path, policy: str) -> None:
    root = make_mimic(tmp_path / "mimic")
    data = load_dataset(root, MIMIC_FINDINGS, multilabel=True, uncertain=policy)
    labels = {r["study_id"]: r for r in _table(root / "mimic-cxr-2.0.0-chexpert.csv.gz")}
    splits = {r["dicom_id"]: r["split"] for r in _table(root / "mimic-cxr-2.0.0-split.csv.gz")}
    assert data.samples and not any("-lat" in s.id for s in data.samples)
    for s in data.samples:
        study, dicom = s.id.split("/")[3][1:], Path(s.id).stem
        assert s.split == {"train": "train", "validate": "val", "test": "test"}[splits[dicom]]
        row = labels[study]
        assert policy != "ignore" or all(row[f] != "-1.0" for f in MIMIC_FINDINGS)
        want = {f for f in MIMIC_FINDINGS if row[f] == "1.0" or (policy == "ones" and row[f] == "-1.0")}
        assert {data.classes[i] for i in s.labels or ()} == want
    # labels cycle 1, 0, -1, blank over subjects and findings: only every fourth subject
    # has no uncertain finding
    assert len(data.samples) == (6 if policy == "ignore" else 24)


# --- RSNA Pneumonia ------------------------------------------------------------------


def test_rsna_targets_boxes_and_masks(tmp_path: Path) -> None:
    root = make_rsna(tmp_path / "rsna")
    rows = _table(root / "stage_2_train_labels.csv")
    data = load_dataset(root, ["Lung Opacity"], multilabel=True)
    positive = {r["patientId"] for r in rows if r["Target"] == "1"}
    assert positive and len(positive) < len(data.samples)
    for s in data.samples:
        pid = Path(s.id).stem
        assert bool(s.labels) == (pid in positive)
        assert (s.mask is not None) == (pid in positive)
        if s.mask is not None:
            assert isinstance(s.mask, Boxes)
            boxes = [r for r in rows if r["patientId"] == pid]
            assert len(s.mask.boxes) == len(boxes)
            m = read_mask(s.mask, s.path, SIDE)
            x, y, w, h = (float(boxes[0][k]) for k in ("x", "y", "width", "height"))
            assert m[int(y + h / 2), int(x + w / 2)], "the box's centre is inside the mask"
    assert "Pneumonia" in load_dataset(root, ["Pneumonia"], multilabel=True).classes


# --- COVID-QU-Ex ---------------------------------------------------------------------


def test_covidqu_classes_splits_and_infection_masks(tmp_path: Path) -> None:
    root = make_covidqu(tmp_path / "COVID-QU-Ex")
    data = load_dataset(root)
    assert data.classes == ("COVID-19", "Non-COVID", "Normal")
    assert {s.split for s in data.samples} == {"train", "val", "test"}
    for s in data.samples:
        assert s.id.split("/")[2] == {"train": "Train", "val": "Val", "test": "Test"}[s.split]
        assert isinstance(s.mask, Path) and s.mask.parent.name == "infection masks"
        m = read_mask(s.mask, s.path, 32)
        assert m.any() == (data.classes[s.label] == "COVID-19")
    with pytest.raises(DataError, match="one class per image; it is not multi-label"):
        load_dataset(root, list(data.classes), multilabel=True)


# --- NIH boxes -----------------------------------------------------------------------


def test_nih_boxes_become_masks(tmp_path: Path) -> None:
    root = make_nih(tmp_path / "nih")
    given = add_nih_boxes(root, NIH_FINDINGS)
    data = load_dataset(root, NIH_FINDINGS, multilabel=True)
    boxed = {Path(s.id).name: s.mask for s in data.samples if s.mask is not None}
    assert set(boxed) == set(given) and any(f == "Infiltration" for f in given.values())
    assert all(isinstance(m, Boxes) for m in boxed.values())
    lines = (root / "BBox_List_2017.csv").read_text().splitlines()[1:]
    for line in lines:
        name, _, *coords = line.split(",")
        box = boxed[name]
        assert isinstance(box, Boxes)
        assert box.boxes[0] == pytest.approx([float(v) for v in coords], abs=0.01)
    # boxes of findings the model has no class for are not its masks
    fewer = [f for f in NIH_FINDINGS if f != "Infiltration"]
    masked = {Path(s.id).name for s in load_dataset(root, fewer, multilabel=True).samples if s.mask}
    assert masked == {n for n, f in given.items() if f != "Infiltration"}


def test_box_masks_are_resized_like_the_image() -> None:
    """A box on a 200 x 100 (h x w) image, squashed and letterboxed to 20 px."""
    import tempfile

    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "wide.png"
        Image.new("L", (100, 200)).save(image)
        box = Boxes(((50.0, 100.0, 50.0, 100.0),))  # the bottom-right quarter
        squash = read_mask(box, image, 20)
        assert squash[10:, 10:].all() and not squash[:10].any() and not squash[:, :10].any()
        letter = read_mask(box, image, 20, Preprocess(resize="letterbox"))
        assert letter[10:, 10:15].all() and not letter[:, 15:].any() and not letter[:10].any()


@pytest.mark.parametrize(
    "text",
    ["boxes:1,2,3", "boxes:1,2,3,nan", "boxes:1,2,3,-4", "boxes:", "boxes:" + ";".join(["1,1,1,1"] * 65)],
)
def test_malformed_boxes_are_refused(tmp_path: Path, text: str) -> None:
    from drift_gate.data.masks import parse_mask

    with pytest.raises(DataError, match="not boxes"):
        parse_mask(text, tmp_path)


# --- errors --------------------------------------------------------------------------


def _drop_column(path: Path, column: str) -> None:
    rows = _table(path)
    cols = [c for c in rows[0] if c != column]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as fh:  # type: ignore[operator]
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


BROKEN: dict[str, tuple[Callable[[Path], Path], list[str], Callable[[Path], object], str]] = {
    "chexpert: no Frontal/Lateral": (
        make_chexpert,
        CHEXPERT_FINDINGS,
        lambda r: _drop_column(r / "valid.csv", "Frontal/Lateral"),
        r"valid.csv: no column 'Frontal/Lateral'",
    ),
    "chexpert: a label that is not 1/0/-1": (
        make_chexpert,
        CHEXPERT_FINDINGS,
        lambda r: (r / "valid.csv").write_text((r / "valid.csv").read_text().replace(",1.0,", ",yes,", 1)),
        r"valid.csv, line \d+: \w[\w ]* is 'yes', not 1, 0, -1 or blank",
    ),
    "chexpert: no image on disk": (
        make_chexpert,
        CHEXPERT_FINDINGS,
        lambda r: [p.unlink() for p in r.rglob("*.jpg")],
        r"none of the 76 images listed in train.csv and valid.csv",
    ),
    "mimic: no split file": (
        make_mimic,
        MIMIC_FINDINGS,
        lambda r: (r / "mimic-cxr-2.0.0-split.csv.gz").unlink(),
        r"no mimic-cxr-2.0.0-split.csv\(.gz\)",
    ),
    "mimic: no ViewPosition": (
        make_mimic,
        MIMIC_FINDINGS,
        lambda r: _drop_column(r / "mimic-cxr-2.0.0-metadata.csv.gz", "ViewPosition"),
        r"metadata.csv.gz: no column 'ViewPosition'",
    ),
    "mimic: a model with none of its findings": (
        make_mimic,
        ["Hernia", "Mass"],
        lambda r: None,
        r"none of the model's classes \(Hernia, Mass\) is a finding of this data set",
    ),
    "rsna: no Target": (
        make_rsna,
        ["Lung Opacity"],
        lambda r: _drop_column(r / "stage_2_train_labels.csv", "Target"),
        r"stage_2_train_labels.csv: no column 'Target'",
    ),
    "rsna: a box without coordinates": (
        make_rsna,
        ["Lung Opacity"],
        lambda r: (r / "stage_2_train_labels.csv").write_text(
            (r / "stage_2_train_labels.csv").read_text() + "abc,,,,,1\n"
        ),
        r"line \d+: a Target 1 row needs x, y, width and height",
    ),
    "rsna: no images folder": (
        make_rsna,
        ["Lung Opacity"],
        lambda r: [p.unlink() for p in (r / "stage_2_train_images").iterdir()],
        r"none of the 80 images listed in stage_2_train_labels.csv \(in stage_2_train_images/\)",
    ),
    "nih: a box that is not numbers": (
        lambda r: (make_nih(r), add_nih_boxes(r, NIH_FINDINGS))[0],
        NIH_FINDINGS,
        lambda r: (r / "BBox_List_2017.csv").write_text(
            (r / "BBox_List_2017.csv").read_text().rstrip("\n") + "\n00000001_000.png,Effusion,a,b,c,d\n"
        ),
        r"BBox_List_2017.csv: '00000001_000.png' has a box that is not four numbers",
    ),
    "two data sets in one folder": (
        make_rsna,
        ["Lung Opacity"],
        lambda r: (r / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\n"),
        r"holds the files of several data sets \(NIH ChestX-ray14, RSNA Pneumonia Detection\)",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_copies_are_refused_by_name(tmp_path: Path, case: str) -> None:
    make, classes, damage, pattern = BROKEN[case]
    root = make(tmp_path / "data")
    damage(root)
    with pytest.raises(DataError, match=pattern):
        load_dataset(root, classes, multilabel=True)


# --- baseline -> gate on each layout ---------------------------------------------------


E2E: dict[str, tuple[Callable[[Path], Path], list[str], str, bool]] = {
    "chexpert": (make_chexpert, CHEXPERT_FINDINGS, "multilabel", False),
    "mimic": (make_mimic, MIMIC_FINDINGS, "multilabel", False),
    "rsna": (make_rsna, ["Lung Opacity"], "multilabel", True),
    "covidqu": (make_covidqu, ["COVID-19", "Non-COVID", "Normal"], "multiclass", True),
    "nih-boxes": (
        lambda r: (make_nih(r), add_nih_boxes(r, NIH_FINDINGS))[0],
        NIH_FINDINGS,
        "multilabel",
        True,
    ),
}


@pytest.mark.parametrize("fmt", E2E)
def test_baseline_and_gate_on_each_layout(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, classes, task, masks = E2E[fmt]
    root = make(tmp_path / "data")
    torch.manual_seed(0)
    from user_model import small_net

    net = small_net(len(classes), 1)
    torch.save(net.state_dict(), tmp_path / "v1.pt")
    with torch.no_grad():
        net.head.weight.add_(1e-3 * torch.randn_like(net.head.weight))
    torch.save(net.state_dict(), tmp_path / "v2.pt")
    spec = tmp_path / "model.toml"
    spec.write_text(
        f'[model]\narch = "python:user_model:small_net"\nname = "m"\ntask = "{task}"\n'
        f"classes = {json.dumps(classes)}\ninput_size = 32\nchannels = 1\nmean = [0.5]\nstd = [0.25]\n"
        f"[model.kwargs]\noutputs = {len(classes)}\nchannels = 1\n"
    )
    rules = tmp_path / "thresholds.toml"
    rules.write_text(
        '[gate]\nsamples = "all"\nmin_samples = 2\n[auc]\nmin_support = 1\nmax_drop = 0.5\n'
        "[drift]\niou.min = 0.1\n"
    )
    common = ["--model", str(spec), "--data", str(root), "--thresholds", str(rules), "--device", "cpu"]
    common.append("--no-progress")
    out = tmp_path / "baselines" / "m"
    assert (
        main(
            [
                "baseline",
                "--reference",
                str(tmp_path / "v1.pt"),
                "--per-class",
                "3",
                "--out",
                str(out),
                *common,
            ]
        )
        == 0
    )
    assert "data: " in capsys.readouterr().err
    audit = json.loads((out / "audit.json").read_text())["samples"]
    assert any("mask" in a for a in audit) == masks
    gate = ["gate", "--candidate", str(tmp_path / "v2.pt"), "--baselines", str(tmp_path / "baselines")]
    code = main([*gate, "--reports", str(tmp_path / "reports"), *common])
    doc = json.loads((tmp_path / "reports" / "gate.json").read_text())["candidates"][0]
    assert code == 0, [(r["rule"], r["status"], r["message"]) for r in doc["rules"]]
    assert {a["id"] for a in audit} >= {i.split(" [")[0] for i in doc["sample_ids"]}
    localised = doc["summaries"]["layercam"].get("mask_energy", {}).get("overall", {}).get("n", 0)
    assert (localised > 0) == masks, "box and mask-file masks reach the localisation metrics"


def test_a_bad_public_data_set_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_rsna(tmp_path / "rsna")
    _drop_column(root / "stage_2_train_labels.csv", "Target")
    spec = tmp_path / "model.toml"
    spec.write_text(
        '[model]\narch = "python:user_model:small_net"\ntask = "multilabel"\nclasses = ["Lung Opacity"]\n'
        "input_size = 32\nchannels = 1\nmean = [0.5]\nstd = [0.25]\n"
        "[model.kwargs]\noutputs = 1\nchannels = 1\n"
    )
    from user_model import small_net

    torch.save(small_net(1, 1).state_dict(), tmp_path / "v1.pt")
    args = ["baseline", "--reference", str(tmp_path / "v1.pt"), "--model", str(spec), "--data", str(root)]
    assert_error(main([*args, "--out", str(tmp_path / "b")]), capsys, r"no column 'Target'")
    assert not (tmp_path / "b").exists()
