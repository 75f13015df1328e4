"""NIH ChestX-ray14 as it ships: ``Data_Entry_2017*.csv`` beside the image folders.

Layout (the NIH Box download, or Kaggle's ``data/nih-chest-xrays``)::

    ROOT/Data_Entry_2017_v2020.csv      (or Data_Entry_2017.csv)
    ROOT/train_val_list.txt             (optional: the official split)
    ROOT/test_list.txt                  (optional)
    ROOT/BBox_List_2017.csv             (optional: finding boxes)
    ROOT/images/*.png                   (or ROOT/images_001/images/*.png, ...)

Read as a multi-label data set: ``Finding Labels`` lists every finding joined by ``|``;
``No Finding`` (and any finding the model has no class for) is negative for every
class. Splits follow the data set's patients, so no patient is in two splits: with the
official lists, ``test_list.txt`` is the test split and ``train_val_list.txt`` is split
into train and validation by a hash of the patient id (80/20); without them every
patient is assigned by that hash (60/20/20). Rows whose image is not on disk are left
out (a partial download works); a data set with none of them is an error.

``BBox_List_2017.csv`` gives boxes for about a thousand images; an image's mask is the
union of its boxes for findings the model has a class for (the file says
``Infiltrate`` where the entry file says ``Infiltration``), drawn on the image's grid
(:mod:`drift_gate.data.masks`). Other images have no mask.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from drift_gate.data.formats import Reader, Row, first_file, none_on_disk, patient_bucket, read_table
from drift_gate.data.masks import Boxes, box
from drift_gate.errors import DataError

__all__ = ["FINDINGS", "READER", "nih_rows"]

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
_BOX_FILE = "BBox_List_2017.csv"
_BOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]")
#: BBox_List_2017.csv's names where the entry file's differ.
_BOX_NAMES = {"Infiltrate": "Infiltration"}


def _entry_file(root: Path) -> Path | None:
    return first_file(root, _ENTRY_NAMES)


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


def _boxes(root: Path, known: set[str]) -> dict[str, str]:
    """Image name -> its boxes' mask text, for findings in ``known``."""
    path = first_file(root, [_BOX_FILE])
    if path is None:
        return {}
    boxes: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for row in read_table(path, _BOX_COLUMNS):
        finding = _BOX_NAMES.get(row["Finding Label"], row["Finding Label"])
        if finding not in known:
            continue
        try:
            boxes[row["Image Index"]].append(box(row[c] for c in _BOX_COLUMNS[2:]))
        except ValueError:
            raise DataError(f"{path}: {row['Image Index']!r} has a box that is not four numbers") from None
    try:
        return {name: Boxes(tuple(b)).text for name, b in boxes.items()}
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None


def nih_rows(root: Path, classes: Sequence[str], uncertain: str = "zeros") -> tuple[list[Row], str]:
    """``(path, labels, split, sha256, mask)`` rows (as a manifest gives them) for the
    images on disk, with ``labels`` joined by ``|`` and restricted to ``classes``; and a
    line that says how they were read. (ChestX-ray14 has no uncertain labels.)

    Raises:
        DataError: no entry file, a missing column, an official list without its pair,
            or no listed image on disk.
    """
    root = Path(root)
    entry = _entry_file(root)
    if entry is None:
        raise DataError(f"{root}: no {' or '.join(_ENTRY_NAMES)} (not the ChestX-ray14 layout)")
    entries = read_table(entry, _COLUMNS)
    official = _official(root)
    on_disk = _images(root)
    known = set(classes)
    masks = _boxes(root, known)
    rows: list[Row] = []
    for e in entries:
        path = on_disk.get(e["Image Index"])
        if path is None:
            continue
        bucket = patient_bucket("nih", e["Patient ID"])
        if official is not None:
            train_val, test = official
            if e["Image Index"] in test:
                split = "test"
            elif e["Image Index"] in train_val:
                split = "val" if bucket < 0.2 else "train"
            else:
                continue
        else:
            split = "train" if bucket < 0.6 else ("val" if bucket < 0.8 else "test")
        labels = "|".join(f for f in e["Finding Labels"].split("|") if f in known)
        rows.append((path.relative_to(root).as_posix(), labels, split, None, masks.get(e["Image Index"])))
    if not rows:
        raise none_on_disk(root, len(entries), entry.name)
    how = "official test list, train/val 80/20 by patient" if official else "60/20/20 by patient"
    boxed = sum(r[4] is not None for r in rows)
    return rows, f"NIH ChestX-ray14 ({entry.name}): {len(rows)} images; splits: {how}; {boxed} with boxes"


READER = Reader("nih", "NIH ChestX-ray14", True, lambda root: _entry_file(root) is not None, nih_rows)
