"""Data sets on disk: a CSV manifest or a folder of class subfolders; PNG, JPEG, DICOM.

A manifest has the columns ``path,label`` and optionally ``split``
(``train``/``val``/``test``), ``sha256`` (of the file's bytes, verified) and
``mask`` (a ground-truth finding mask); paths are relative to the manifest's
folder. A folder is read as ``ROOT/<class>/*`` (splits assigned from each file's
hash, so they do not depend on listing order) or ``ROOT/<split>/<class>/*``.
Every image becomes a 3-channel float tensor of the configured size.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from ._io import file_sha256
from .errors import DataError

__all__ = ["SPLITS", "DataSet", "ImageDataset", "Sample", "decode_image", "load_dataset", "read_image"]

SPLITS = ("train", "val", "test")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}
#: (path, label, split, sha256, mask) as read from a manifest or a folder.
_Row = tuple[str, str, str | None, str | None, str | None]


@dataclass(frozen=True)
class Sample:
    """One image of a data set.

    Attributes:
        id: stable identifier (the path relative to the data root, POSIX form).
        path: absolute path of the image.
        label: class index.
        split: ``train``, ``val`` or ``test``.
        sha256: hash of the file's bytes.
        mask: path of a ground-truth finding mask, if any.
    """

    id: str
    path: Path
    label: int
    split: str
    sha256: str
    mask: Path | None = None


@dataclass(frozen=True)
class DataSet:
    """A validated data set: classes, samples and a hash that identifies it."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]

    def split(self, name: str) -> list[Sample]:
        """The samples of one split, in a stable order."""
        return [s for s in self.samples if s.split == name]

    @property
    def manifest_sha256(self) -> str:
        """Hash of the canonical manifest (ids, labels, splits, file hashes)."""
        h = hashlib.sha256("\x1f".join(self.classes).encode())
        for s in self.samples:
            h.update(f"\n{s.id}\x1f{self.classes[s.label]}\x1f{s.split}\x1f{s.sha256}".encode())
        return h.hexdigest()


def _sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from exc


def _split_from_hash(digest: str) -> str:
    bucket = int(digest[:8], 16) % 10
    return "train" if bucket < 6 else ("val" if bucket < 8 else "test")


def _from_manifest(manifest: Path) -> tuple[list[_Row], Path]:
    root = manifest.parent
    try:
        with manifest.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "label"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}")
            rows: list[_Row] = []
            for line, row in enumerate(reader, start=2):
                if not row.get("path") or not row.get("label"):
                    raise DataError(f"{manifest}:{line}: empty path or label")
                rows.append(
                    (
                        row["path"],
                        row["label"].strip(),
                        row.get("split") or None,
                        row.get("sha256") or None,
                        row.get("mask") or None,
                    )
                )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{manifest}: cannot read manifest ({exc})") from exc
    return rows, root


def _from_folder(root: Path) -> list[_Row]:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_layout = bool(subdirs) and {p.name for p in subdirs} <= set(SPLITS)
    rows: list[_Row] = []
    for top in subdirs:
        class_dirs = sorted(p for p in top.iterdir() if p.is_dir()) if split_layout else [top]
        for cdir in class_dirs:
            for f in sorted(cdir.iterdir()):
                if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES:
                    rows.append(
                        (
                            f.relative_to(root).as_posix(),
                            cdir.name,
                            top.name if split_layout else None,
                            None,
                            None,
                        )
                    )
    return rows


def load_dataset(source: Path, classes: Sequence[str] | None = None) -> DataSet:
    """Reads and validates a data set.

    Args:
        source: a ``.csv`` manifest, a folder with ``manifest.csv``, or a folder of
            class subfolders (optionally under ``train``/``val``/``test``).
        classes: the expected class names in order; by default the sorted labels
            found (the phantoms' manifest lists them in their canonical order).

    Raises:
        DataError: missing source, unknown labels, empty classes or splits,
            missing files, hash mismatches, or one image in two splits.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: data source not found")
    if source.is_file():
        rows, root = _from_manifest(source)
    elif (source / "manifest.csv").is_file():
        rows, root = _from_manifest(source / "manifest.csv")
    else:
        rows, root = _from_folder(source), source
    if not rows:
        raise DataError(f"{source}: no images found (PNG, JPEG or DICOM)")

    found = list(dict.fromkeys(r[1] for r in rows))
    if classes is None:
        from .phantoms import CLASSES

        classes = CLASSES if set(found) == set(CLASSES) else sorted(found)
    classes = tuple(classes)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{source}: unknown label(s) {', '.join(unknown)}; expected one of {', '.join(classes)}"
        )

    samples = []
    for rel, label, split, digest, mask in rows:
        path = (root / rel).resolve()
        if not path.is_file():
            raise DataError(f"{path}: image listed in the data set does not exist")
        actual = _sha256(path)
        if digest is not None and digest.lower() != actual:
            raise DataError(
                f"{path}: sha256 {actual[:12]}… does not match the manifest's "
                f"{digest[:12]}…; the file changed since the manifest was written"
            )
        split = split or _split_from_hash(actual)
        if split not in SPLITS:
            raise DataError(f"{path}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        samples.append(
            Sample(rel, path, classes.index(label), split, actual, (root / mask).resolve() if mask else None)
        )

    by_hash: dict[str, set[str]] = defaultdict(set)
    first: dict[str, Sample] = {}
    for s in samples:
        by_hash[s.sha256].add(s.split)
        first.setdefault(s.sha256, s)
    for digest, splits in by_hash.items():
        if len(splits) > 1:
            raise DataError(
                f"{first[digest].path}: the same image appears in splits "
                f"{', '.join(sorted(splits))}; remove the duplicate"
            )
    counts = Counter((s.split, s.label) for s in samples)
    for split in SPLITS:
        empty = [c for i, c in enumerate(classes) if counts[(split, i)] == 0]
        if empty:
            raise DataError(f"{source}: class(es) {', '.join(empty)} have no images in the {split} split")
    return DataSet(root, classes, tuple(samples))


def _read_dicom(path: Path) -> NDArray[np.float64]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data")
    try:
        arr = ds.pixel_array.astype(np.float64)
    except Exception as exc:  # pydicom raises many types for bad pixel data
        raise DataError(f"{path}: cannot decode DICOM pixel data ({exc})") from exc
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a single-frame grayscale DICOM, got shape {arr.shape}")
    arr = arr * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = 1.0 - arr
    return arr


def _read_raster(path: Path) -> NDArray[np.float64]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                raise DataError(
                    f"{path}: image has an alpha channel (mode {mode}); save it as grayscale or RGB"
                )
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                return arr / (65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0))
            if mode not in ("L", "RGB", "P", "1"):
                raise DataError(f"{path}: unsupported image mode {mode}")
            return np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from exc


def decode_image(path: Path) -> NDArray[np.float64]:
    """Decodes a radiograph to a 2-D float array in ``[0, 1]`` at its own size.

    Raises:
        DataError: unreadable, truncated or unsupported files.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            is_dicom = path.suffix.lower() in (".dcm", ".dicom") or (
                fh.seek(128) == 128 and fh.read(4) == b"DICM"
            )
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from exc
    arr = _read_dicom(path) if is_dicom else _read_raster(path)
    if arr.size == 0:
        raise DataError(f"{path}: empty image")
    return arr


def read_image(path: Path, size: int) -> torch.Tensor:
    """Reads a radiograph as a ``(1, size, size)`` float tensor in ``[0, 1]``.

    Raises:
        DataError: unreadable, truncated or unsupported files.
    """
    arr = decode_image(path)
    t = torch.from_numpy(arr.astype(np.float32))[None, None]
    if t.shape[-2:] != (size, size):
        t = torch.nn.functional.interpolate(
            t, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return t[0].clamp_(0, 1)


class ImageDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Normalised 3-channel tensors and labels for a list of samples.

    With ``cache=True`` (for training) images are decoded once and kept in memory as
    float16 single-channel tensors (3 MB per hundred images at 128 px), so epochs
    after the first decode nothing. A single pass (the gate, baselines) uses
    ``cache=False`` and holds only the current batch.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        cache: bool = True,
    ) -> None:
        self.samples = list(samples)
        self.cache = cache
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raw = self._cache.get(i)
        if raw is None:
            raw = read_image(self.samples[i].path, self.size).half()
            if self.cache:
                self._cache[i] = raw
        x = raw.float().expand(3, -1, -1)
        return (x - self.mean) / self.std, self.samples[i].label

    @property
    def labels(self) -> torch.Tensor:
        """Class indices of all samples."""
        return torch.tensor([s.label for s in self.samples], dtype=torch.long)
