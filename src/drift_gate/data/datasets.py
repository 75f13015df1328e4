"""Data sets on disk: a CSV manifest or a folder of class subfolders; PNG, JPEG, TIFF, DICOM.

A manifest has the columns ``path,label`` and optionally ``split``
(``train``/``val``/``test``), ``sha256`` (of the file's bytes, verified) and
``mask`` (a ground-truth finding mask); paths are relative to the manifest's
folder. Its delimiter (comma, semicolon or tab) is found from the header, and a
UTF-8 byte-order mark (as Excel writes) is skipped. A folder is read as
``ROOT/<class>/*`` (splits assigned from each file's hash, so they do not depend
on listing order) or ``ROOT/<split>/<class>/*``. How an image becomes the model's
input is :mod:`drift_gate.preprocess`.

Size: every local layout (manifest, class folders, split folders) and the checks that apply
to all of them (hashes, one image in two splits or under two labels, empty classes) in one
place, beside the torch data sets that read the images; public data sets' own layouts are
in :mod:`drift_gate.data.public` and :mod:`drift_gate.data.formats`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from drift_gate._io import file_sha256
from drift_gate.data.formats import Row
from drift_gate.data.masks import Mask, parse_mask
from drift_gate.data.paths import confined, data_root
from drift_gate.data.preprocess import (
    DEFAULT,
    Preprocess,
    apply_transform,
    load_transform,
    read_image,
)
from drift_gate.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLITS",
    "DataSet",
    "ImageDataset",
    "Images",
    "Rows",
    "Sample",
    "data_root",
    "load_dataset",
]


SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
_DELIMITERS = (",", ";", "\t")


@dataclass(frozen=True)
class Sample:
    """One image of a data set.

    Attributes:
        id: stable identifier (the path relative to the data root, POSIX form).
        path: absolute path of the image.
        label: class index.
        split: ``train``, ``val`` or ``test``.
        sha256: hash of the file's bytes.
        mask: the ground-truth finding mask, if any: a mask image's path or boxes
            (:mod:`drift_gate.data.masks`).
        labels: multi-label data: the indices of every positive class (``label`` is
            then the first, or -1 for an image with none); ``None`` for single-label data.
    """

    id: str
    path: Path
    label: int
    split: str
    sha256: str
    mask: Mask | None = None
    labels: tuple[int, ...] | None = None

    def label_text(self, classes: Sequence[str]) -> str:
        """The label as a manifest writes it (``A|B`` for several, empty for none)."""
        if self.labels is None:
            return classes[self.label]
        return "|".join(classes[i] for i in self.labels)


@dataclass(frozen=True)
class DataSet:
    """A validated data set: classes, samples and a hash that identifies it."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]
    #: How a public data set's files were read (views, label policy, splits); else empty.
    description: str = ""

    def split(self, name: str) -> list[Sample]:
        """The samples of one split, in a stable order."""
        return [s for s in self.samples if s.split == name]

    @property
    def manifest_sha256(self) -> str:
        """Hash of the canonical manifest (ids, labels, splits, file hashes)."""
        h = hashlib.sha256("\x1f".join(self.classes).encode())
        for s in self.samples:
            h.update(f"\n{s.id}\x1f{s.label_text(self.classes)}\x1f{s.split}\x1f{s.sha256}".encode())
        return h.hexdigest()


def _sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from exc


def _split_from_hash(digest: str) -> str:
    bucket = int(digest[:8], 16) % 10
    return "train" if bucket < 6 else ("val" if bucket < 8 else "test")


def _header_delimiter(manifest: Path, header: str) -> str:
    """The delimiter that splits the header into fields including ``path`` and ``label``."""
    for d in _DELIMITERS:
        names = {f.strip() for f in next(csv.reader([header], delimiter=d))}
        if {"path", "label"} <= names:
            return d
    found = ", ".join(repr(f.strip()) for f in next(csv.reader([header])))
    raise DataError(
        f"{manifest}: the header needs the columns path and label (found {found}; "
        "delimiter comma, semicolon or tab)"
    )


def _from_manifest(manifest: Path) -> tuple[list[Row], Path]:
    root = manifest.parent
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first name
        text = manifest.read_text(encoding="utf-8-sig")
        delimiter = _header_delimiter(manifest, text.splitlines()[0] if text else "")
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        reader.fieldnames = [f.strip() for f in reader.fieldnames or ()]
        rows: list[Row] = []
        for line, row in enumerate(reader, start=2):
            path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not path or not label:
                raise DataError(f"{manifest}:{line}: empty path or label")
            rows.append(
                (
                    path,
                    label,
                    (row.get("split") or "").strip() or None,
                    (row.get("sha256") or "").strip() or None,
                    (row.get("mask") or "").strip() or None,
                )
            )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{manifest}: cannot read manifest ({exc})") from exc
    return rows, root


def _from_folder(root: Path) -> list[Row]:
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_layout = bool(subdirs) and {p.name for p in subdirs} <= set(SPLITS)
    rows: list[Row] = []
    for top in subdirs:
        class_dirs = sorted(p for p in top.iterdir() if p.is_dir()) if split_layout else [top]
        for cdir in class_dirs:
            for f in sorted(cdir.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
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


def load_dataset(
    source: Path,
    classes: Sequence[str] | None = None,
    multilabel: bool = False,
    uncertain: str = "zeros",
) -> DataSet:
    """Reads and validates a data set.

    Args:
        source: a ``.csv`` manifest, a folder with ``manifest.csv``, a public data set's
            folder as it ships (:mod:`drift_gate.data.formats`: NIH ChestX-ray14,
            CheXpert, MIMIC-CXR-JPG, RSNA Pneumonia, COVID-QU-Ex), or a folder of class
            subfolders (optionally under ``train``/``val``/``test``).
        classes: the expected class names in order; by default the sorted labels
            found (the phantoms' manifest lists them in their canonical order).
        multilabel: the ``label`` column lists every finding of an image separated
            by ``|`` (as NIH ChestX-ray14's ``Finding Labels``); names that are not
            among ``classes`` (``No Finding``) count as negatives for every class.
        uncertain: CheXpert's and MIMIC-CXR's uncertain labels (``-1``) read as
            ``zeros``, ``ones``, or ``ignore`` (images with one are left out).

    Raises:
        DataError: missing source, unknown labels, empty classes or splits,
            missing files, hash mismatches, or one image in two splits.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: data source not found")
    rows, root, described = _rows(source, classes, multilabel, uncertain)
    if not rows:
        raise DataError(f"{source}: no images found (PNG, JPEG, TIFF or DICOM)")
    if multilabel:
        return dataclasses.replace(_multilabel(source, root, rows, classes), description=described)
    classes = _single_label_classes(source, rows, classes)
    samples = []
    for rel, label, split, digest, mask in rows:
        path, actual, split = _verified(root, rel, digest, split)
        mask_of = parse_mask(mask, root) if mask else None
        samples.append(Sample(rel, path, classes.index(label), split, actual, mask_of))
    _check_duplicates(samples, classes)
    counts = Counter((s.split, s.label) for s in samples)
    for split in SPLITS:
        empty = [c for i, c in enumerate(classes) if counts[(split, i)] == 0]
        if empty:
            raise DataError(f"{source}: class(es) {', '.join(empty)} have no images in the {split} split")
    return DataSet(root, classes, tuple(samples), described)


def _rows(
    source: Path, classes: Sequence[str] | None, multilabel: bool, uncertain: str
) -> tuple[list[Row], Path, str]:
    """The rows of ``source`` (a manifest, a public data set's folder or a folder of class
    subfolders), the root their paths are relative to, and how a public set was read."""
    from drift_gate.data.public import detect

    if source.is_file():
        return (*_from_manifest(source), "")
    if (source / "manifest.csv").is_file():
        return (*_from_manifest(source / "manifest.csv"), "")
    if (reader := detect(source)) is not None:
        if reader.multilabel and (not multilabel or not classes):
            raise DataError(
                f"{source}: {reader.title} is multi-label: gate it with a model spec whose "
                "task is multilabel (docs/how-to/own-model.md)"
            )
        if multilabel and not reader.multilabel:
            raise DataError(f"{source}: {reader.title} has one class per image; it is not multi-label")
        rows, described = reader.read(source, classes or (), uncertain)
        return rows, source, described
    if multilabel:
        raise DataError(f"{source}: multi-label data needs a manifest (path,label with labels A|B)")
    return _from_folder(source), source, ""


def _single_label_classes(source: Path, rows: list[Row], classes: Sequence[str] | None) -> tuple[str, ...]:
    """The classes of a single-label data set: ``classes``, else the phantoms' in their
    canonical order, else the labels found, sorted; a label outside them is refused."""
    found = list(dict.fromkeys(r[1] for r in rows))
    if classes is None:
        from drift_gate.data.phantoms import CLASSES

        classes = CLASSES if set(found) == set(CLASSES) else sorted(found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        hint = (
            '; "|" separates the findings of a multi-label image: gate it with a model spec whose '
            'task = "multilabel" (docs/how-to/own-model.md)'
            if any("|" in u for u in unknown)
            else ""
        )
        raise DataError(
            f"{source}: unknown label(s) {', '.join(unknown)}; expected one of {', '.join(classes)}{hint}"
        )
    return tuple(classes)


def _check_duplicates(samples: list[Sample], classes: tuple[str, ...]) -> None:
    """Refuses one image (by its decoded pixels' hash) under two labels or in two splits."""
    by_hash: dict[str, set[str]] = defaultdict(set)
    first: dict[str, Sample] = {}
    for s in samples:
        by_hash[s.sha256].add(s.split)
        seen = first.setdefault(s.sha256, s)
        if seen.label != s.label:
            raise DataError(
                f"{s.path}: the same file as {seen.path} but labelled {classes[s.label]!r}, not "
                f"{classes[seen.label]!r}; fix the label of one, or remove one"
            )
    for digest, splits in by_hash.items():
        if len(splits) > 1:
            raise DataError(
                f"{first[digest].path}: the same image appears in splits "
                f"{', '.join(sorted(splits))}; remove the duplicate"
            )


def _verified(root: Path, rel: str, digest: str | None, split: str | None) -> tuple[Path, str, str]:
    """An image of a data set: its path (inside the root), its file hash (checked against
    the manifest's) and its split (from the manifest, else from the hash)."""
    path = confined(root / rel, root)
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
    return path, actual, split


def _multilabel(source: Path, root: Path, rows: list[Row], classes: Sequence[str] | None) -> DataSet:
    if not classes:
        raise DataError(f"{source}: multi-label data needs the model's class names")
    classes = tuple(classes)
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for rel, label, split, digest, mask in rows:
        path, actual, split = _verified(root, rel, digest, split)
        positives = tuple(sorted({index[t.strip()] for t in label.split("|") if t.strip() in index}))
        samples.append(
            Sample(
                rel,
                path,
                positives[0] if positives else -1,
                split,
                actual,
                parse_mask(mask, root) if mask else None,
                positives,
            )
        )
    if not any(s.labels for s in samples):
        raise DataError(f"{source}: no image is positive for any of the classes {', '.join(classes)}")
    return DataSet(root, classes, tuple(samples))


class Images(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """A map-style data set of ``(input, label)`` pairs that knows its length: what
    every pass over images (predictions, features, maps) reads."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


class Rows(Images):
    """The rows ``indices`` of ``images``, in that order (a shard of a pass)."""

    def __init__(self, images: Images, indices: Sequence[int]) -> None:
        self.images, self.indices = images, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[self.indices[i]]


class ImageDataset(Images):
    """Normalised model inputs and labels for a list of samples, preprocessed by
    ``preprocess`` (:mod:`drift_gate.preprocess`).

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
        preprocess: Preprocess = DEFAULT,
    ) -> None:
        self.samples = list(samples)
        self.cache = cache
        self.size = size
        self.preprocess = preprocess
        channels = preprocess.channels
        self.mean = torch.tensor(mean, dtype=torch.float32)[:channels].view(channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32)[:channels].view(channels, 1, 1)
        self._transform = load_transform(preprocess.transform) if preprocess.transform else None
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        raw = self._cache.get(i)
        if raw is None:
            path = self.samples[i].path
            if self._transform is not None:  # the user's own: already the model input
                raw = apply_transform(self._transform, path, self.preprocess.channels, self.size)
            else:
                raw = read_image(path, self.size, self.preprocess).half()
            if self.cache:
                self._cache[i] = raw
        if self._transform is not None:
            return raw, self.samples[i].label
        x = raw.float().expand(self.preprocess.channels, -1, -1)
        return (x - self.mean) / self.std, self.samples[i].label

    @property
    def labels(self) -> torch.Tensor:
        """Class indices of all samples."""
        return torch.tensor([s.label for s in self.samples], dtype=torch.long)
