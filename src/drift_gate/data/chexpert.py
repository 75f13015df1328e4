"""CheXpert and MIMIC-CXR-JPG as they ship: both labelled by the CheXpert labeler.

**CheXpert** (``CheXpert-v1.0`` or ``CheXpert-v1.0-small``)::

    ROOT/train.csv, ROOT/valid.csv     Path, Sex, Age, Frontal/Lateral, AP/PA, 14 findings
    ROOT/train/patient00001/study1/view1_frontal.jpg, ...
    ROOT/valid/...

``Path`` starts with the download's folder name (``CheXpert-v1.0-small/train/…``); it
is read relative to ROOT. ``valid.csv`` (labelled by radiologists) is the test split;
``train.csv`` is split 80/20 into train and validation by a hash of the patient id
(``patient00001``), so no patient is in two splits.

**MIMIC-CXR-JPG** (2.0.0)::

    ROOT/mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, 14 findings
    ROOT/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, ...
    ROOT/mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split
    ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg

Labels are per study, joined to its images; the split is the official one
(``train`` / ``validate`` / ``test``, by patient).

Both: **frontal views only** (CheXpert ``Frontal/Lateral = Frontal``; MIMIC
``ViewPosition`` PA or AP); a finding is positive at ``1``, negative at ``0`` or blank
(not mentioned), and **uncertain at ``-1``**, read by the policy ``uncertain``:
``zeros`` (negative; the default), ``ones`` (positive) or ``ignore`` (the image is left
out when any of the model's findings is uncertain). A model class named ``Effusion``
reads the data sets' ``Pleural Effusion``. Rows whose image is not on disk are left
out; neither data set has finding masks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from drift_gate.data.formats import (
    UNCERTAIN_POLICIES,
    Reader,
    Row,
    first_file,
    none_on_disk,
    patient_bucket,
    read_table,
)
from drift_gate.errors import DataError

__all__ = ["CHEXPERT", "FINDINGS", "MIMIC", "chexpert_rows", "mimic_rows"]

#: The 14 observations of the CheXpert labeler, as both data sets name their columns.
FINDINGS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: Model class names that read another column (torchxrayvision's names).
_ALIASES = {"Effusion": "Pleural Effusion"}
_CHEXPERT_COLUMNS = ("Path", "Frontal/Lateral")
_PATIENT = re.compile(r"^patient\d+$")
_MIMIC_PREFIX = "mimic-cxr-2.0.0-"
_MIMIC_LABEL_COLUMNS = ("subject_id", "study_id")
_MIMIC_META_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
_MIMIC_SPLIT_COLUMNS = ("dicom_id", "split")
_MIMIC_SPLITS = {"train": "train", "validate": "val", "test": "test"}


def _policy(uncertain: str) -> str:
    if uncertain not in UNCERTAIN_POLICIES:
        raise DataError(
            f"uncertain-label policy {uncertain!r}: expected one of {', '.join(UNCERTAIN_POLICIES)}"
        )
    return uncertain


def _columns(classes: Sequence[str], header: Sequence[str], source: Path) -> dict[str, str]:
    """Model class -> the data set's column, for the classes the data set has."""
    cols = {c: _ALIASES.get(c, c) for c in classes}
    cols = {c: col for c, col in cols.items() if col in header}
    if not cols:
        raise DataError(
            f"{source}: none of the model's classes ({', '.join(classes)}) is a finding of this data "
            f"set ({', '.join(f for f in FINDINGS if f in header)})"
        )
    return cols


def _labels(row: Mapping[str, str], cols: Mapping[str, str], policy: str, where: str) -> str | None:
    """``A|B`` for a row, by the uncertain-label policy; None when the row is left out."""
    positives = []
    for cls, col in cols.items():
        value = row.get(col, "")
        try:
            number = float(value) if value else 0.0
        except ValueError:
            raise DataError(f"{where}: {col} is {value[:20]!r}, not 1, 0, -1 or blank") from None
        if number == -1.0:
            if policy == "ignore":
                return None
            if policy == "ones":
                positives.append(cls)
        elif number == 1.0:
            positives.append(cls)
        elif number != 0.0:
            raise DataError(f"{where}: {col} is {value[:20]!r}, not 1, 0, -1 or blank")
    return "|".join(positives)


def _chexpert_path(text: str) -> Path:
    """``Path`` relative to the data set's root (its first part is the download's name)."""
    parts = Path(text).parts
    if len(parts) > 1 and parts[0].lower().startswith("chexpert"):
        parts = parts[1:]
    return Path(*parts) if parts else Path()


def _is_chexpert(root: Path) -> bool:
    if not ((root / "train.csv").is_file() and (root / "valid.csv").is_file()):
        return False
    try:
        with (root / "train.csv").open(encoding="utf-8-sig") as fh:
            return "Frontal/Lateral" in fh.readline(4096)
    except (OSError, UnicodeDecodeError):
        return False


def chexpert_rows(root: Path, classes: Sequence[str], uncertain: str = "zeros") -> tuple[list[Row], str]:
    """CheXpert's rows (see the module docstring) and a line that says how they were read.

    Raises:
        DataError: a missing file or column, a label that is not 1/0/-1/blank, no image
            on disk, or an unknown policy.
    """
    policy = _policy(uncertain)
    rows: list[Row] = []
    left_out = listed = 0
    for name, phase in (("train.csv", "train"), ("valid.csv", "test")):
        table = Path(root) / name
        entries = read_table(table, _CHEXPERT_COLUMNS)
        cols = _columns(classes, list(entries[0]) if entries else [], table) if entries else {}
        for n, e in enumerate(entries, 2):
            listed += 1
            if e["Frontal/Lateral"] != "Frontal":
                continue
            rel = _chexpert_path(e["Path"])
            if not (Path(root) / rel).is_file():
                continue
            labels = _labels(e, cols, policy, f"{table}, line {n}")
            if labels is None:
                left_out += 1
                continue
            patient = next((p for p in rel.parts if _PATIENT.match(p)), rel.as_posix())
            split = phase
            if phase == "train":
                split = "val" if patient_bucket("chexpert", patient) < 0.2 else "train"
            rows.append((rel.as_posix(), labels, split, None, None))
    if not rows:
        raise none_on_disk(Path(root), listed, "train.csv and valid.csv (frontal views)")
    return rows, _said("CheXpert", rows, policy, left_out, "valid.csv as test, train/val 80/20 by patient")


def _said(title: str, rows: list[Row], policy: str, left_out: int, splits: str) -> str:
    ignored = f", {left_out} images with an uncertain finding left out" if policy == "ignore" else ""
    read = f"uncertain labels (-1) read as {policy}{ignored}"
    return f"{title}: {len(rows)} frontal images; {read}; splits: {splits}"


def _mimic_table(root: Path, kind: str) -> Path:
    path = first_file(root, [f"{_MIMIC_PREFIX}{kind}.csv"])
    if path is None:
        raise DataError(f"{root}: no {_MIMIC_PREFIX}{kind}.csv(.gz) (MIMIC-CXR-JPG ships it beside files/)")
    return path


def mimic_rows(root: Path, classes: Sequence[str], uncertain: str = "zeros") -> tuple[list[Row], str]:
    """MIMIC-CXR-JPG's rows (see the module docstring) and a line that says how they were read.

    Raises:
        DataError: a missing file or column, a bad label, an unknown split, no image on disk.
    """
    policy = _policy(uncertain)
    root = Path(root)
    label_file = _mimic_table(root, "chexpert")
    studies = read_table(label_file, _MIMIC_LABEL_COLUMNS)
    cols = _columns(classes, list(studies[0]) if studies else [], label_file) if studies else {}
    by_study = {(s["subject_id"], s["study_id"]): (n, s) for n, s in enumerate(studies, 2)}
    meta_file, split_file = _mimic_table(root, "metadata"), _mimic_table(root, "split")
    splits = {r["dicom_id"]: r["split"] for r in read_table(split_file, _MIMIC_SPLIT_COLUMNS)}
    images = read_table(meta_file, _MIMIC_META_COLUMNS)
    rows: list[Row] = []
    left_out = 0
    for m in images:
        if m["ViewPosition"] not in ("PA", "AP"):
            continue
        subject, study = m["subject_id"], m["study_id"]
        rel = Path("files", f"p{subject[:2]}", f"p{subject}", f"s{study}", f"{m['dicom_id']}.jpg")
        found = by_study.get((subject, study))
        if found is None or not (root / rel).is_file():
            continue
        split = _MIMIC_SPLITS.get(splits.get(m["dicom_id"], ""))
        if split is None:
            raise DataError(
                f"{split_file}: image {m['dicom_id']!r} has split {splits.get(m['dicom_id'])!r}; "
                "expected train, validate or test"
            )
        labels = _labels(found[1], cols, policy, f"{label_file}, line {found[0]}")
        if labels is None:
            left_out += 1
            continue
        rows.append((rel.as_posix(), labels, split, None, None))
    if not rows:
        raise none_on_disk(root, len(images), f"{meta_file.name} (frontal views with labels)")
    return rows, _said("MIMIC-CXR-JPG", rows, policy, left_out, "official (by patient)")


CHEXPERT = Reader("chexpert", "CheXpert", True, _is_chexpert, chexpert_rows)
MIMIC = Reader(
    "mimic",
    "MIMIC-CXR-JPG",
    True,
    lambda root: first_file(root, [f"{_MIMIC_PREFIX}chexpert.csv"]) is not None,
    mimic_rows,
)
