"""NIH ChestX-ray14 as it ships: ``Data_Entry_2017*.csv`` beside the image folders.

Layout (the NIH Box download, or Kaggle's ``data/nih-chest-xrays``)::

    ROOT/Data_Entry_2017_v2020.csv      (or Data_Entry_2017.csv)
    ROOT/train_val_list.txt             (optional: the official split)
    ROOT/test_list.txt                  (optional)
    ROOT/images/*.png                   (or ROOT/images_001/images/*.png, ...)

Read as a multi-label data set: ``Finding Labels`` lists every finding joined by ``|``;
``No Finding`` (and any finding the model has no class for) is negative for every
class. Splits follow the data set's patients, so no patient is in two splits: with the
official lists, ``test_list.txt`` is the test split and ``train_val_list.txt`` is split
into train and validation by a hash of the patient id (80/20); without them every
patient is assigned by that hash (60/20/20). Rows whose image is not on disk are left
out (a partial download works); a data set with none of them is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

from drift_gate.errors import DataError

__all__ = ["FINDINGS", "is_nih", "nih_rows"]

#: The 14 findings of ChestX-ray14, in the order of the data set's paper.
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


def _entry_file(root: Path) -> Path | None:
    return next((root / n for n in _ENTRY_NAMES if (root / n).is_file()), None)


def is_nih(root: Path) -> bool:
    """Whether ``root`` is a folder in the ChestX-ray14 layout."""
    return Path(root).is_dir() and _entry_file(Path(root)) is not None


def _bucket(patient: str) -> float:
    return int(hashlib.sha256(f"nih-patient:{patient}".encode()).hexdigest()[:8], 16) / 2**32


def _official(root: Path) -> tuple[set[str], set[str]] | None:
    lists = [root / "train_val_list.txt", root / "test_list.txt"]
    present = [p.is_file() for p in lists]
    if not any(present):
        return None
    if not all(present):
        missing = next(p for p, ok in zip(lists, present, strict=True) if not ok)
        raise DataError(
            f"{missing}: missing (the official split needs both train_val_list.txt and test_list.txt)"
        )
    train_val, test = ({ln.strip() for ln in p.read_text().splitlines() if ln.strip()} for p in lists)
    return train_val, test


def _images(root: Path) -> dict[str, Path]:
    """Image file name -> path, from ``images/`` and Kaggle's ``images_*/images/``."""
    folders = [root / "images", *sorted(root.glob("images_*/images"))]
    return {
        p.name: p for folder in folders if folder.is_dir() for p in folder.iterdir() if p.suffix == ".png"
    }


_Row = tuple[str, str, str | None, str | None, str | None]


def nih_rows(root: Path, classes: Sequence[str]) -> list[_Row]:
    """``(path, labels, split, sha256, mask)`` rows (as a manifest gives them) for the
    images on disk; ``labels`` joined by ``|``, restricted to ``classes``.

    Raises:
        DataError: no entry file, a missing column, an official list without its pair,
            or no listed image on disk.
    """
    root = Path(root)
    entry = _entry_file(root)
    if entry is None:
        raise DataError(f"{root}: no {' or '.join(_ENTRY_NAMES)} (not the ChestX-ray14 layout)")
    try:
        reader = csv.DictReader(io.StringIO(entry.read_text(encoding="utf-8-sig"), newline=""))
        header = [f.strip() for f in reader.fieldnames or ()]
        missing = [c for c in _COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{entry}: no column {missing[0]!r} (found {', '.join(map(repr, header[:6]))}, ...)"
            )
        entries = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{entry}: cannot read ({exc})") from None
    official = _official(root)
    on_disk = _images(root)
    known = set(classes)
    rows: list[_Row] = []
    for e in entries:
        path = on_disk.get(e["Image Index"])
        if path is None:
            continue
        if official is not None:
            train_val, test = official
            if e["Image Index"] in test:
                split = "test"
            elif e["Image Index"] in train_val:
                split = "val" if _bucket(e["Patient ID"]) < 0.2 else "train"
            else:
                continue
        else:
            b = _bucket(e["Patient ID"])
            split = "train" if b < 0.6 else ("val" if b < 0.8 else "test")
        labels = "|".join(f for f in e["Finding Labels"].split("|") if f in known)
        rows.append((path.relative_to(root).as_posix(), labels, split, None, None))
    if not rows:
        raise DataError(f"{root}: none of the {len(entries)} images listed in {entry.name} is on disk")
    return rows
