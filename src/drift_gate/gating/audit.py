"""Audit sets: the fixed, verified images every gate of a baseline runs on, and their sizing."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drift_gate.data.datasets import DataSet, Sample
from drift_gate.data.masks import Boxes, Mask, mask_text, parse_mask
from drift_gate.data.paths import confined, data_root
from drift_gate.data.preprocess import decode_image
from drift_gate.errors import DataError

if TYPE_CHECKING:
    from drift_gate.gating.thresholds import Thresholds

__all__ = [
    "AuditSample",
    "AuditSet",
    "audit_summary",
    "build_audit_set",
    "build_multilabel_audit_set",
    "check_reachable",
    "expand_pairs",
    "multi_hot",
    "pixel_sha256",
    "test_images_per_class",
]


def pixel_sha256(path: Path) -> str:
    """sha256 of an image's decoded pixels (float32, with its shape)."""
    arr = np.ascontiguousarray(decode_image(path), dtype=np.float32)
    h = hashlib.sha256(f"{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def mask_fields(mask: Mask | None, root: Path) -> tuple[str | None, str | None]:
    """An audit sample's ``mask`` and ``mask_pixels``: a mask file's path (relative to
    ``root``) and decoded-pixel hash, or boxes' text and the hash of that text."""
    if mask is None:
        return None, None
    text = mask_text(mask, root)
    if isinstance(mask, Boxes):
        return text, hashlib.sha256(text.encode()).hexdigest()
    return text, pixel_sha256(mask)


@dataclass(frozen=True)
class AuditSample:
    """One audit image: id (relative path), class name, decoded-pixel hash, and its
    ground-truth finding mask (relative path and pixel hash) when the data has one."""

    id: str
    label: str
    pixels: str
    mask: str | None = None
    mask_pixels: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The fields that are set (an audit set without masks reads as before masks existed)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class AuditSet:
    """The audit samples, in a fixed order."""

    samples: tuple[AuditSample, ...]

    @property
    def sha256(self) -> str:
        """Identifies the audit set (ids, labels, pixel hashes)."""
        return hashlib.sha256(json.dumps([s.as_dict() for s in self.samples]).encode()).hexdigest()

    def to_json(self) -> str:
        return (
            json.dumps({"sha256": self.sha256, "samples": [s.as_dict() for s in self.samples]}, indent=1)
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str) -> AuditSet:
        raw = json.loads(text)
        return cls(tuple(AuditSample(**s) for s in raw["samples"]))

    def resolve(self, root: Path, classes: tuple[str, ...], multilabel: bool = False) -> list[Sample]:
        """The audit images under data root ``root`` (a folder, or a manifest file:
        :func:`drift_gate.data.data_root`), verified pixel by pixel. Multi-label audit
        samples hold every positive class, ``A|B`` (empty: none).

        Raises:
            DataError: an audit image is missing, has an unknown label, or its
                pixels changed.
        """
        if not self.samples:
            raise DataError("the audit set is empty: nothing could be checked")
        root = data_root(root)
        out = []
        missing_classes = [] if multilabel else sorted(set(classes) - {a.label for a in self.samples})
        if missing_classes:
            raise DataError(f"the audit set has no image of class(es) {', '.join(missing_classes)}")
        for a in self.samples:
            path = confined(Path(root) / a.id, root, "audit image")
            if not path.is_file():
                raise DataError(f"audit image {a.id} not found under {root}")
            names = [n for n in a.label.split("|") if n] if multilabel else [a.label]
            unknown = [n for n in names if n not in classes]
            if unknown:
                raise DataError(f"audit image {a.id} has label {unknown[0]!r}, not one of the classes")
            digest = pixel_sha256(path)
            if digest != a.pixels:
                raise DataError(
                    f"{path}: pixels no longer match the audit set; the gate only "
                    "runs on the audited images (refresh the baseline to audit new ones)"
                )
            mask: Mask | None = None
            if a.mask is not None:
                mask = parse_mask(a.mask, root)
                if isinstance(mask, Boxes):
                    if hashlib.sha256(a.mask.encode()).hexdigest() != a.mask_pixels:
                        raise DataError(f"audit image {a.id}: its mask boxes do not match their hash")
                elif not mask.is_file():
                    raise DataError(f"mask {a.mask} of audit image {a.id} not found under {root}")
                elif pixel_sha256(mask) != a.mask_pixels:
                    raise DataError(
                        f"{mask}: the ground-truth mask no longer matches the audit set; "
                        "refresh the baseline to audit the new masks"
                    )
            positives = tuple(sorted(classes.index(n) for n in names))
            label = positives[0] if positives else -1
            out.append(Sample(a.id, path, label, "test", digest, mask, positives if multilabel else None))
        return out


def build_multilabel_audit_set(data: DataSet, per_class: int) -> AuditSet:
    """Multi-label data: for every class, up to ``per_class`` test images positive for it
    (an image counts for each of its classes), and ``per_class`` images with no positive
    class, so that every class has negatives for its AUC; in a stable order (pixel hash)."""
    test = sorted(data.split("test"), key=lambda s: s.sha256)
    need = {c: per_class for c in range(len(data.classes))}
    chosen: list[Sample] = []
    for s in test:
        if s.labels and any(need[c] > 0 for c in s.labels):
            chosen.append(s)
            for c in s.labels:
                need[c] -= 1
    chosen += [s for s in test if not s.labels][:per_class]
    if not any(s.labels for s in chosen):
        raise DataError("cannot build an audit set: no test image is positive for any class")
    root = Path(data.root).resolve()
    return _consistent(
        [
            AuditSample(s.id, s.label_text(data.classes), pixel_sha256(s.path), *mask_fields(s.mask, root))
            for s in chosen
        ]
    )


def _consistent(samples: list[AuditSample]) -> AuditSet:
    """The audit set, refused if two of its images have identical pixels but different
    labels (no verdict can rest on an image labelled both ways); identical images with one
    label are kept, with a warning (each copy counts in the summaries)."""
    first: dict[str, AuditSample] = {}
    copies: list[tuple[AuditSample, AuditSample]] = []
    for s in samples:
        seen = first.setdefault(s.pixels, s)
        if seen is s:
            continue
        if seen.label != s.label:
            raise DataError(
                f"audit images {seen.id!r} (label {seen.label!r}) and {s.id!r} (label {s.label!r}) "
                "have identical pixels but different labels; fix the label of one, or remove "
                "one from the test split"
            )
        copies.append((seen, s))
    if copies:
        from drift_gate._io import warn

        a, b = copies[0]
        warn(
            f"{len(copies)} audit image(s) repeat another's pixels with the same label "
            f"(e.g. {b.id!r} = {a.id!r}); each copy counts in the summaries"
        )
    return AuditSet(tuple(samples))


def test_images_per_class(data: DataSet) -> dict[str, int]:
    """How many test images each class has (what bounds an audit set)."""
    test = data.split("test")
    return {name: sum(s.label == c for s in test) for c, name in enumerate(data.classes)}


def build_audit_set(data: DataSet, per_class: int) -> AuditSet:
    """Takes ``per_class`` test images of every class (fewer if a class has fewer:
    every class then gets the same number), in a stable order (by pixel hash)."""
    test = data.split("test")
    chosen: list[AuditSample] = []
    pools = {
        c: sorted((s for s in test if s.label == c), key=lambda s: s.sha256) for c in range(len(data.classes))
    }
    n = min(per_class, *(len(p) for p in pools.values()))
    if n == 0:
        raise DataError("cannot build an audit set: a class has no test images")
    root = Path(data.root).resolve()
    for c, pool in pools.items():
        for s in pool[:n]:
            chosen.append(
                AuditSample(s.id, data.classes[c], pixel_sha256(s.path), *mask_fields(s.mask, root))
            )
    return _consistent(chosen)


def audit_summary(
    data: DataSet, per_class: int, n: int, labels: np.ndarray, correct: np.ndarray
) -> tuple[dict[str, Any], list[str]]:
    """What the audit set holds and why (for ``baseline.json``), and lines that say so."""
    available = test_images_per_class(data)
    right = {name: int(correct[labels == c].sum()) for c, name in enumerate(data.classes)}
    doc = {"requested_per_class": per_class, "reference_correct": right}
    if n < per_class:
        short = ", ".join(f"{k} has {v}" for k, v in available.items() if v == n)
        why = f"{n} per class, not the {per_class} asked for: the fewest test images ({short})"
    else:
        why = f"{n} per class, as asked"
    lines = [
        f"audit set: {n * len(data.classes)} test images, {why}",
        f"read: the audit images alone, {n * len(data.classes)} of the data set's {len(data.samples)} "
        "(its other images are neither decoded nor checked by baseline or gate)",
        f"reference: {int(correct.sum())} of {len(labels)} audit images classified correctly ("
        + ", ".join(f"{k} {v}/{n}" for k, v in right.items())
        + ")",
    ]
    return doc, lines


def check_reachable(rules: Thresholds, n_audit: int, n_correct: int, n_classes: int, most: int) -> None:
    """Refuses a baseline on which the gate could never reach ``min_samples``.

    Args:
        n_correct: audit images the reference classifies correctly (a true positive
            must be right under the reference and the candidate).
        most: test images of the smallest class (the largest ``--per-class``).
    """
    required = rules.required_samples(n_audit)
    true_positives = rules.samples == "true-positive"
    usable = n_correct if true_positives else n_audit
    if usable >= required:
        return
    if true_positives:
        why = f"the reference classifies only {n_correct} of the {n_audit} audit images correctly"
        rate = n_correct / n_audit if n_audit else 0.0
    else:
        why = f"the audit set has only {n_audit} images"
        rate = 1.0
    if rules.min_samples_share is not None or rate == 0:
        fix = "set [gate] min_samples lower"
    else:
        per_class = math.ceil(required / rate / n_classes)
        fix = f"use --per-class {per_class} or more" + (
            f" (the data set has at most {most} test images per class)" if per_class > most else ""
        )
        fix += ', or give min_samples as a share of the audit set (e.g. "40%")'
    raise DataError(
        f"the gate could never pass on this baseline: min_samples {rules.min_samples_text} needs "
        f"{required} usable samples, but {why}; {fix}"
    )


def expand_pairs(samples: list[Sample]) -> tuple[list[Sample], np.ndarray]:
    """Multi-label audit samples as (image, class) pairs, one per positive class: a copy of
    the sample whose ``label`` is that class (the class its maps explain), and the
    ``(P, 2)`` array of (image index, class index)."""
    import dataclasses

    pairs, index = [], []
    for i, s in enumerate(samples):
        for c in s.labels or ():
            pairs.append(dataclasses.replace(s, label=c))
            index.append((i, c))
    return pairs, np.array(index, dtype=np.int64).reshape(-1, 2)


def multi_hot(samples: list[Sample], n_classes: int) -> np.ndarray:
    """``(N, K)`` boolean positives of multi-label samples."""
    out = np.zeros((len(samples), n_classes), dtype=bool)
    for i, s in enumerate(samples):
        out[i, list(s.labels or ())] = True
    return out
