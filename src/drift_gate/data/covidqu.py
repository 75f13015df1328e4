"""COVID-QU-Ex (Qatar University, Kaggle) as it ships: class folders with masks.

Layout (either subset, as downloaded, each folder name doubled)::

    ROOT/Infection Segmentation Data/Infection Segmentation Data/
        Train/COVID-19/images/*.png
        Train/COVID-19/infection masks/*.png      (same file names)
        Train/COVID-19/lung masks/*.png
        Train/Non-COVID/..., Train/Normal/..., Val/..., Test/...
    ROOT/Lung Segmentation Data/Lung Segmentation Data/Train/...   (lung masks only)

ROOT may also be one of those folders, or any folder holding ``Train``/``Val``/``Test``
in this layout. Read as single-label data with the classes of its folders
(``COVID-19``, ``Non-COVID``, ``Normal``) and its official splits (the data set defines
no patients). The *infection* mask of an image is its finding mask; lung masks mark
anatomy, not findings, and are not used. When both subsets are present, the infection
subset is read (it is the one with finding masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from drift_gate.data.formats import Reader, Row
from drift_gate.errors import DataError

__all__ = ["CLASSES", "READER", "covidqu_rows"]

#: The data set's classes, as its folders name them.
CLASSES = ("COVID-19", "Non-COVID", "Normal")
_SPLITS = {"Train": "train", "Val": "val", "Test": "test"}
_SUBSETS = ("Infection Segmentation Data", "Lung Segmentation Data")
_SUFFIXES = (".png", ".jpg", ".jpeg")


def _is_base(folder: Path) -> bool:
    return any((folder / s / c / "images").is_dir() for s in _SPLITS for c in CLASSES)


def _base(root: Path) -> Path | None:
    """The folder holding Train/Val/Test: the infection subset first."""
    for subset in _SUBSETS:
        for candidate in (root / subset / subset, root / subset):
            if _is_base(candidate):
                return candidate
    return root if _is_base(root) else None


def covidqu_rows(root: Path, classes: Sequence[str], uncertain: str = "zeros") -> tuple[list[Row], str]:
    """The rows (see the module docstring) and a line that says how they were read.

    Raises:
        DataError: not the layout, or no image in it.
    """
    root = Path(root)
    base = _base(root)
    if base is None:
        raise DataError(f"{root}: no Train/Val/Test/<class>/images/ folders (not the COVID-QU-Ex layout)")
    rows: list[Row] = []
    for split_dir, split in _SPLITS.items():
        for cls in CLASSES:
            images = base / split_dir / cls / "images"
            if not images.is_dir():
                continue
            masks = base / split_dir / cls / "infection masks"
            for f in sorted(images.iterdir()):
                if not (f.is_file() and f.suffix.lower() in _SUFFIXES):
                    continue
                mask = masks / f.name
                rel_mask = mask.relative_to(root).as_posix() if mask.is_file() else None
                rows.append((f.relative_to(root).as_posix(), cls, split, None, rel_mask))
    if not rows:
        raise DataError(f"{base}: no PNG or JPEG images in the COVID-QU-Ex folders")
    subset = base.name if base != root else "folders"
    with_masks = sum(r[4] is not None for r in rows)
    return rows, (
        f"COVID-QU-Ex ({subset}): {len(rows)} images, {with_masks} with infection masks; "
        "splits: official Train/Val/Test"
    )


READER = Reader("covidqu", "COVID-QU-Ex", False, lambda root: _base(root) is not None, covidqu_rows)
