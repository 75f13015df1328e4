"""RSNA Pneumonia Detection (Kaggle, 2018) as it ships: DICOM images and a box table.

Layout::

    ROOT/stage_2_train_labels.csv       patientId, x, y, width, height, Target
    ROOT/stage_2_train_images/<patientId>.dcm
    (or the stage 1 names: stage_1_train_labels.csv, stage_1_train_images/)

One row per box (``Target = 1``: a lung opacity suggesting pneumonia) or one row with
empty coordinates (``Target = 0``). Read as multi-label data with one finding: a
positive image is positive for the model's class ``Lung Opacity`` and, as
torchxrayvision names it, ``Pneumonia`` (whichever the model has); its mask is the
union of its boxes (:mod:`drift_gate.data.masks`). The competition's test labels were
never released, so every image of the training table is split 60/20/20 by a hash of
its ``patientId`` (the data set has one image per patientId).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from drift_gate.data.formats import Reader, Row, first_file, none_on_disk, read_table, split_by_patient
from drift_gate.data.masks import Boxes, box
from drift_gate.errors import DataError

__all__ = ["FINDINGS", "READER", "rsna_rows"]

#: The names a model may give the one finding.
FINDINGS = ("Lung Opacity", "Pneumonia")
_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
_STAGES = ("stage_2", "stage_1")


def _table(root: Path) -> tuple[Path, str] | None:
    for stage in _STAGES:
        path = first_file(root, [f"{stage}_train_labels.csv"])
        if path is not None:
            return path, stage
    return None


def rsna_rows(root: Path, classes: Sequence[str], uncertain: str = "zeros") -> tuple[list[Row], str]:
    """The rows (see the module docstring) and a line that says how they were read.

    Raises:
        DataError: no label table, a missing column, a bad Target or box, a model with
            neither finding name, or no image on disk.
    """
    root = Path(root)
    found = _table(root)
    if found is None:
        raise DataError(f"{root}: no stage_2_train_labels.csv (not the RSNA Pneumonia layout)")
    table, stage = found
    names = [c for c in classes if c in FINDINGS]
    if not names:
        raise DataError(
            f"{table}: the model has no class for this data set's finding ({' or '.join(FINDINGS)})"
        )
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    for n, e in enumerate(read_table(table, _COLUMNS), 2):
        image = boxes.setdefault(e["patientId"], [])
        if e["Target"] not in ("0", "1"):
            raise DataError(f"{table}, line {n}: Target is {e['Target'][:20]!r}, not 0 or 1")
        if e["Target"] == "1":
            try:
                image.append(box(e[c] for c in ("x", "y", "width", "height")))
            except ValueError:
                raise DataError(f"{table}, line {n}: a Target 1 row needs x, y, width and height") from None
    folder = root / f"{stage}_train_images"
    rows: list[Row] = []
    for patient, image_boxes in boxes.items():
        rel = Path(folder.name, f"{patient}.dcm")
        if not (root / rel).is_file():
            continue
        try:
            mask = Boxes(tuple(image_boxes)).text if image_boxes else None
        except ValueError as exc:
            raise DataError(f"{table}: {patient}: {exc}") from None
        label = "|".join(names) if image_boxes else ""
        rows.append((rel.as_posix(), label, split_by_patient("rsna", patient), None, mask))
    if not rows:
        raise none_on_disk(root, len(boxes), f"{table.name} (in {folder.name}/)")
    positive = sum(bool(r[1]) for r in rows)
    return rows, (
        f"RSNA Pneumonia ({table.name}): {len(rows)} images, {positive} with opacity boxes; "
        "splits: 60/20/20 by patientId"
    )


READER = Reader("rsna", "RSNA Pneumonia Detection", True, lambda root: _table(root) is not None, rsna_rows)
