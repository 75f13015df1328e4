"""What a public data set's reader is made of (:mod:`drift_gate.data.public` lists the
readers and finds the one a folder needs): the :class:`Reader` record, the
:data:`Row` a manifest would give (image path relative to the root, labels joined by
``|``, split, file hash, mask), and the helpers readers share: finding a file among
the names a data set ships under, reading its label table with a size limit, and
splitting by patient.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from drift_gate.errors import DataError

__all__ = [
    "UNCERTAIN_POLICIES",
    "Reader",
    "Row",
    "first_file",
    "none_on_disk",
    "patient_bucket",
    "read_table",
    "split_by_patient",
]

#: How an uncertain label (CheXpert's and MIMIC-CXR's ``-1``) is read.
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
#: (path, label, split, sha256, mask) as a manifest gives them.
Row = tuple[str, str, str | None, str | None, str | None]
_MAX_TABLE = 512 * 1024 * 1024


@dataclass(frozen=True)
class Reader:
    """One public data set's layout."""

    name: str
    title: str
    multilabel: bool
    detect: Callable[[Path], bool]
    read: Callable[[Path, Sequence[str], str], tuple[list[Row], str]]


def first_file(root: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` (each also tried with ``.gz``) that is a file under ``root``."""
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_table(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file (plain or ``.gz``) as dicts of stripped strings.

    Raises:
        DataError: unreadable, too large, or a required column missing.
    """
    try:
        if path.stat().st_size > _MAX_TABLE:
            raise DataError(f"{path}: larger than {_MAX_TABLE >> 20} MiB; not read")
        raw = path.read_bytes()
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                raw = gz.read(_MAX_TABLE + 1)
            if len(raw) > _MAX_TABLE:
                raise DataError(f"{path}: decompresses to more than {_MAX_TABLE >> 20} MiB; not read")
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline=""))
        header = [f.strip() for f in reader.fieldnames or ()]
        missing = [c for c in columns if c not in header]
        if missing:
            shown = ", ".join(map(repr, header[:6])) + (", ..." if len(header) > 6 else "")
            raise DataError(f"{path}: no column {missing[0]!r} (found {shown or 'no header'})")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def patient_bucket(data_set: str, patient: str) -> float:
    """A patient's place in ``[0, 1)``, from a hash of its id: splits made from it never
    put one patient in two splits and do not depend on row order."""
    digest = hashlib.sha256(f"{data_set}-patient:{patient}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32


def split_by_patient(data_set: str, patient: str, shares: tuple[float, float] = (0.6, 0.8)) -> str:
    """``train`` / ``val`` / ``test`` for a patient (60/20/20 by default)."""
    b = patient_bucket(data_set, patient)
    return "train" if b < shares[0] else ("val" if b < shares[1] else "test")


def none_on_disk(root: Path, listed: int, source: str) -> DataError:
    """The error for a data set none of whose listed images is on disk."""
    return DataError(f"{root}: none of the {listed} images listed in {source} is on disk")
