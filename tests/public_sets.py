"""Miniature copies of public chest X-ray data sets in their real layouts (file names,
folder structure, header lines, label encodings), with synthetic pixels.

Where torchxrayvision ships a data set's real metadata (CheXpert's ``train.csv``, RSNA's
``stage_2_train_labels.csv``, NIH's ``BBox_List_2017.csv``), real rows are used; box
coordinates, given in the pixels of 1024-pixel images, are scaled to the miniature's
image size. MIMIC-CXR-JPG's tables are credentialed, so its three files are written
with the header lines of the MIMIC-CXR-JPG 2.0.0 release and made-up ids.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from gatekit import write_dicom

XRV_DATA = Path(__file__).parent  # replaced below when torchxrayvision is installed
try:
    import torchxrayvision as _xrv

    XRV_DATA = Path(_xrv.__file__).parent / "data"
except ImportError:  # pragma: no cover - the test extra installs it
    pass

SIDE = 64
SCALE = SIDE / 1024


def _png(path: Path, seed: int, box: tuple[float, float, float, float] | None = None) -> None:
    """Noise, brighter inside ``box`` (x, y, w, h in this image's pixels)."""
    rng = np.random.default_rng(seed)
    pixels = rng.random((SIDE, SIDE)) * 120
    if box is not None:
        x, y, w, h = (round(v) for v in box)
        pixels[y : y + h, x : x + w] += 120
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def _gz_lines(name: str, n: int) -> list[str]:
    with gzip.open(XRV_DATA / name, "rt", encoding="utf-8") as fh:
        return [fh.readline() for _ in range(n + 1)]


CHEXPERT_FINDINGS = ["Cardiomegaly", "Edema", "Pleural Effusion"]


def make_chexpert(root: Path, n_train: int = 60, n_valid: int = 16) -> Path:
    """``CheXpert-v1.0-small``: ``train.csv`` is the real header and the first
    ``n_train`` real rows (frontal and lateral views, -1/0/1/blank labels); ``valid.csv``
    has the same header, with made-up rows for patients 64541 on (as the real one)."""
    lines = _gz_lines("chexpert_train.csv.gz", n_train)
    header, rows = lines[0], list(csv.DictReader(io.StringIO("".join(lines))))
    root.mkdir(parents=True)
    (root / "train.csv").write_text("".join(lines))
    cols = list(rows[0])
    valid = []
    for i in range(n_valid):
        r = dict.fromkeys(cols, "")
        r.update({"Sex": "Female", "Age": "70", "Frontal/Lateral": "Frontal", "AP/PA": "AP"})
        r["Path"] = f"CheXpert-v1.0-small/valid/patient{64541 + i}/study1/view1_frontal.jpg"
        for j, f in enumerate(CHEXPERT_FINDINGS):
            r[f] = "1.0" if (i + j) % 3 == 0 else "0.0"
        valid.append(r)
    with (root / "valid.csv").open("w", newline="") as fh:
        fh.write(header)
        csv.DictWriter(fh, fieldnames=cols).writerows(valid)
    for i, r in enumerate(rows + valid):
        _png(root / Path(*Path(r["Path"]).parts[1:]), i)
    return root


MIMIC_FINDINGS = ["Atelectasis", "Edema", "Pleural Effusion"]
MIMIC_LABEL_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
    "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
    "Pneumothorax,Support Devices"
)
MIMIC_META_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
    "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
MIMIC_SPLIT_HEADER = "dicom_id,study_id,subject_id,split"


def make_mimic(root: Path, n_subjects: int = 24) -> Path:
    """``mimic-cxr-jpg/2.0.0``: the three gzipped tables and ``files/pXX/pSUBJECT/sSTUDY/``;
    each study has a PA image and a lateral one; labels cycle through 1, 0, -1 and blank;
    the official split puts every subject in one split."""
    root.mkdir(parents=True)
    labels, meta, split = [MIMIC_LABEL_HEADER], [MIMIC_META_HEADER], [MIMIC_SPLIT_HEADER]
    names = MIMIC_LABEL_HEADER.split(",")
    values = ["1.0", "0.0", "-1.0", ""]
    for i in range(n_subjects):
        subject, study = f"{10000032 + i * 7919}", f"{50414267 + i * 104729}"
        row = dict.fromkeys(names, "")
        row.update(subject_id=subject, study_id=study)
        for j, f in enumerate(MIMIC_FINDINGS):
            row[f] = values[(i + j) % 4]
        labels.append(",".join(row[n] for n in names))
        which = ("train", "validate", "test")[i % 3]
        for view, dicom in (
            ("PA", f"{i:08x}-aaaa0000-bbbb1111-cccc2222-dddd3333"),
            ("LATERAL", f"{i:08x}-lat"),
        ):
            meta.append(
                f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},{SIDE},{SIDE},21800506,213014.531,"
                f"CHEST (PA AND LAT),postero-anterior,Erect"
            )
            split.append(f"{dicom},{study},{subject},{which}")
            _png(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg", i)
    for name, lines in (("chexpert", labels), ("metadata", meta), ("split", split)):
        with gzip.open(root / f"mimic-cxr-2.0.0-{name}.csv.gz", "wt", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    return root


def make_rsna(root: Path, n_images: int = 80) -> Path:
    """``rsna-pneumonia-detection-challenge``: ``stage_2_train_labels.csv`` with the real
    header and the rows of the first ``n_images`` real patientIds (boxes scaled), and a
    16-bit DICOM per image in ``stage_2_train_images/``."""
    with zipfile.ZipFile(XRV_DATA / "kaggle_stage_2_train_labels.csv.zip") as z:
        text = z.read("stage_2_train_labels.csv").decode()
    reader = csv.DictReader(io.StringIO(text))
    rows, ids = [], []
    for r in reader:
        if r["patientId"] not in ids:
            if len(ids) == n_images:
                break
            ids.append(r["patientId"])
        if r["Target"] == "1":
            r.update({k: f"{float(r[k]) * SCALE:.1f}" for k in ("x", "y", "width", "height")})
        rows.append(r)
    root.mkdir(parents=True)
    with (root / "stage_2_train_labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(reader.fieldnames or ()))
        w.writeheader()
        w.writerows(rows)
    folder = root / "stage_2_train_images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for pid in ids:
        pixels = (rng.random((SIDE, SIDE)) * 3000).astype(np.uint16)
        write_dicom(folder / f"{pid}.dcm", pixels, PatientID=pid, ViewPosition="PA", BodyPartExamined="CHEST")
    return root


def make_covidqu(root: Path, per_class: int = 4) -> Path:
    """``COVID-QU-Ex``'s infection subset, its folder name doubled as downloaded: images,
    infection masks (a square for COVID-19, empty otherwise) and lung masks."""
    base = root / "Infection Segmentation Data" / "Infection Segmentation Data"
    n = 0
    for split in ("Train", "Val", "Test"):
        for cls in ("COVID-19", "Non-COVID", "Normal"):
            for i in range(per_class):
                name = f"{'covid' if cls == 'COVID-19' else cls.lower()}_{split}_{i}.png"
                box = (8.0 + i, 20.0, 16.0, 20.0) if cls == "COVID-19" else None
                _png(base / split / cls / "images" / name, n, box)
                mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
                if box is not None:
                    x, y, w, h = (round(v) for v in box)
                    mask[y : y + h, x : x + w] = 255
                for kind, m in (("infection masks", mask), ("lung masks", np.full_like(mask, 255))):
                    (base / split / cls / kind).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(m).save(base / split / cls / kind / name)
                n += 1
    return root


def add_nih_boxes(root: Path, findings: list[str]) -> dict[str, str]:
    """``BBox_List_2017.csv`` (its real header, and real boxes scaled, given to images of
    the miniature copy that have the box's finding); returns image -> finding."""
    with gzip.open(XRV_DATA / "BBox_List_2017.csv.gz", "rt", encoding="utf-8") as fh:
        header = fh.readline()
        real = [ln.rstrip("\n").split(",") for ln in fh]
    with (root / "Data_Entry_2017_v2020.csv").open() as fh:
        entries = list(csv.DictReader(fh))
    given: dict[str, str] = {}
    lines = [header.rstrip("\n")]
    for e in entries:
        names = set(e["Finding Labels"].split("|")) & set(findings)
        if not names or len(given) == 6:
            continue
        finding = sorted(names)[0]
        box_name = "Infiltrate" if finding == "Infiltration" else finding
        source = next(r for r in real if r[1] == box_name)
        coords = [f"{float(v) * 48 / 1024:.3f}" for v in source[2:6]]
        lines.append(",".join([e["Image Index"], box_name, *coords]))
        given[e["Image Index"]] = finding
    (root / "BBox_List_2017.csv").write_text("\n".join(lines) + "\n")
    return given
