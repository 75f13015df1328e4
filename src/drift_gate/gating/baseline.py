"""Audit sets and baselines: the stored reference evidence a candidate is gated against.

**Audit set.** A fixed list of test-split samples, balanced across classes. Each
sample is identified by its id (path relative to the data root), label and the
sha256 of its *decoded pixels* (not of the file's bytes), so re-encoding a PNG or
re-writing a DICOM header leaves it valid, while any change to the image itself
is caught. The gate refuses to run when an image no longer matches.

**Baseline** (``baselines/<arch>/``), written only by ``drift-gate baseline`` and
``drift-gate approve``:

* ``baseline.json``: schema version, arch, classes, input size, normalisation,
  sha256 of the reference checkpoint, of the audit set and of ``maps.npz``,
  the reference's AUC on the audit set, methods, library versions, and the
  approved candidate's results (if any) for relative rules;
* ``audit.json``: the audit set;
* ``maps.npz`` (compressed): each method's reference maps at the target layer's
  native resolution (float32: at 4x4 to 10x10 cells per map, float16 would save
  little and could flip near-tied pixels), the reference logits and the labels.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from drift_gate._io import (
    atomic_write_bytes,
    atomic_write_text,
    file_lock,
    file_sha256,
    recover_folder,
    swap_in_folder,
    uninterrupted,
)
from drift_gate.data.datasets import DataSet, ImageDataset
from drift_gate.data.preprocess import DEFAULT
from drift_gate.errors import DataError, StaleBaselineError
from drift_gate.evidence.cam import compute_cams, grid_warning
from drift_gate.evidence.classification import classification_metrics, predicted_class
from drift_gate.gating.audit import (
    AuditSet,
    audit_summary,
    build_audit_set,
    check_reachable,
    test_images_per_class,
)
from drift_gate.models.checkpoint import CheckpointMeta, library_versions, load_checkpoint

if TYPE_CHECKING:
    from drift_gate.gating.thresholds import Thresholds

__all__ = [
    "APPROVED_STATISTIC",
    "BASELINE_SCHEMA",
    "Baseline",
    "baseline_lock",
    "check_compatible",
    "create_baseline",
    "load_baseline",
]


BASELINE_SCHEMA = 1
#: Which per-candidate statistic ``approve`` records for each ``[gate] statistic``
#: (relative bounds compare like with like; ``ci`` compares against the mean).
APPROVED_STATISTIC = {"mean": "mean", "median": "median", "ci": "mean"}


@dataclass(frozen=True)
class Baseline:
    """A loaded, verified baseline."""

    path: Path
    meta: dict[str, Any]
    audit: AuditSet
    maps: dict[str, np.ndarray]
    logits: np.ndarray
    labels: np.ndarray
    approved: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _meta_view(meta: CheckpointMeta) -> dict[str, Any]:
    return {
        "arch": meta.arch,
        "classes": list(meta.classes),
        "input_size": meta.input_size,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "preprocess": meta.preprocess.as_dict(),
    }


def create_baseline(
    reference: Path,
    data: DataSet,
    out: Path,
    methods: tuple[str, ...],
    per_class: int = 10,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    progress: bool = False,
    *,
    rules: Thresholds | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Computes and writes a baseline for ``reference`` (atomically, file by file,
    ``baseline.json`` last, so a partial baseline is never mistaken for a whole one).

    Args:
        rules: when given, a baseline on which these rules could never reach
            ``min_samples`` is refused before anything is written.
        log: receives lines that say what the audit set holds and why.

    Returns:
        The ``baseline.json`` path.

    Raises:
        DataError: the data does not fit the reference, or (with ``rules``) the
            audit set is too small for ``min_samples``.
    """
    model, meta = load_checkpoint(reference, device)
    if tuple(data.classes) != tuple(meta.classes):
        raise DataError(
            f"data classes {list(data.classes)} differ from the checkpoint's {list(meta.classes)}"
        )
    audit = build_audit_set(data, per_class)
    samples = audit.resolve(data.root, data.classes)
    ds = ImageDataset(samples, meta.input_size, meta.mean, meta.std, cache=False, preprocess=meta.preprocess)
    cams = compute_cams(model, ds, methods, device, batch_size, progress=progress)
    labels = np.array([s.label for s in samples])
    metrics = classification_metrics(cams.logits, labels, meta.classes)
    correct = predicted_class(cams.logits) == labels
    n = len(samples) // len(meta.classes)
    sizing, lines = audit_summary(data, per_class, n, labels, correct)
    coarse = grid_warning(next(iter(cams.maps.values())).shape[1:], meta.input_size)
    for line in lines + ([f"warning: {coarse}"] if coarse else []):
        (log or (lambda m: None))(line)
    if rules is not None:
        check_reachable(
            rules,
            len(samples),
            int(correct.sum()),
            len(meta.classes),
            min(test_images_per_class(data).values()),
        )
    arrays = {f"map_{m}": v.astype(np.float32) for m, v in cams.maps.items()}
    arrays.update(logits=cams.logits.astype(np.float32), labels=labels)
    npz = _npz_bytes(arrays)
    doc = {
        "schema_version": BASELINE_SCHEMA,
        **_meta_view(meta),
        "reference": {"path": str(reference), "sha256": file_sha256(reference), "phase": meta.phase},
        "audit": {"sha256": audit.sha256, "n": len(samples), "per_class": n, **sizing},
        "maps": {
            "sha256": hashlib.sha256(npz).hexdigest(),
            "methods": list(cams.maps),
            "shape": list(next(iter(cams.maps.values())).shape[1:]),
        },
        "auc": metrics["auc_macro"],
        "accuracy": metrics["accuracy"],
        "versions": library_versions(),
        "approved": {},
        "history": [],
    }
    _store(out, npz, audit.to_json(), json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out / "baseline.json"


def baseline_lock(folder: Path, shared: bool = False) -> contextlib.AbstractContextManager[None]:
    """The lock of one baseline: ``baseline`` and ``approve`` hold it exclusively, the gate
    shared while it reads. Its file sits beside the folder (``.<name>.lock``), so it
    outlives the folder's replacement. On a read-only file system readers go without it
    (nobody can write there either)."""
    folder = Path(folder)
    lock = folder.parent / f".{folder.name}.lock"
    if shared and not os.access(lock.parent if not lock.exists() else lock, os.W_OK):
        return contextlib.nullcontext()
    return file_lock(lock, shared=shared)


def _store(out: Path, npz: bytes, audit_json: str, baseline_json: str) -> None:
    """Writes a baseline's three files into a new folder beside ``out`` and swaps it in
    whole, under the baseline's lock: readers see the old set or the new one, and a
    failure (disk full, a crash, Ctrl-C) leaves the old set as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with baseline_lock(out):
        recover_folder(out)
        staging = out.parent / f".{out.name}.new-{os.getpid()}"
        try:
            staging.mkdir()
            atomic_write_bytes(staging / "maps.npz", npz)
            atomic_write_text(staging / "audit.json", audit_json)
            atomic_write_text(staging / "baseline.json", baseline_json)
            with uninterrupted():
                swap_in_folder(staging, out)
        except OSError as exc:
            raise DataError(
                f"{out}: cannot write the baseline ({exc.strerror or exc}); "
                "the previous baseline is unchanged"
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def load_baseline(path: Path) -> Baseline:
    """Loads ``path`` (a folder or its ``baseline.json``) and verifies its integrity,
    holding the baseline's lock shared (so a refresh or an approval is never read half done).

    Raises:
        StaleBaselineError: missing or partial baselines, schema mismatches and
            files whose hashes differ from those recorded (tampering); the
            message names the file and says how to refresh it.
    """
    folder = Path(path).parent if Path(path).suffix == ".json" else Path(path)
    with baseline_lock(folder, shared=True):
        with contextlib.suppress(OSError):  # another reader may have restored it first
            recover_folder(folder)
        return read_baseline(folder)


def read_baseline(folder: Path) -> Baseline:
    """Reads and verifies a baseline; the caller holds its lock (:func:`load_baseline` takes it)."""
    how = f"refresh it with `drift-gate baseline --reference CKPT --out {folder}`"
    meta_path = folder / "baseline.json"
    if not meta_path.is_file():
        raise StaleBaselineError(f"{meta_path}: no baseline (missing or partially written); {how}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StaleBaselineError(f"{meta_path}: unreadable baseline ({exc}); {how}") from exc
    if meta.get("schema_version") != BASELINE_SCHEMA:
        raise StaleBaselineError(
            f"{meta_path}: baseline schema {meta.get('schema_version')} but this "
            f"drift-gate reads schema {BASELINE_SCHEMA}; {how}"
        )
    try:
        meta["maps"]["sha256"], meta["maps"]["methods"], meta["audit"]["sha256"], meta["classes"]
        meta["reference"]["sha256"], meta["auc"]
    except (KeyError, TypeError) as exc:
        raise StaleBaselineError(f"{meta_path}: baseline.json lacks the field {exc}; {how}") from None
    for name in ("maps.npz", "audit.json"):
        if not (folder / name).is_file():
            raise StaleBaselineError(f"{folder / name}: missing from the baseline; {how}")
    npz = (folder / "maps.npz").read_bytes()
    if hashlib.sha256(npz).hexdigest() != meta["maps"]["sha256"]:
        raise StaleBaselineError(
            f"{folder / 'maps.npz'}: hash differs from baseline.json (modified or corrupted); {how}"
        )
    try:
        audit = AuditSet.from_json((folder / "audit.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StaleBaselineError(f"{folder / 'audit.json'}: unreadable audit set ({exc}); {how}") from exc
    if audit.sha256 != meta["audit"]["sha256"]:
        raise StaleBaselineError(
            f"{folder / 'audit.json'}: hash differs from baseline.json (modified); {how}"
        )
    if not audit.samples:
        raise DataError("the audit set is empty: nothing could be checked")
    maps, logits, labels = _arrays(folder / "maps.npz", npz, meta, len(audit.samples), how)
    return Baseline(folder, meta, audit, maps, logits, labels, meta.get("approved") or {})


def _arrays(
    path: Path, npz: bytes, meta: dict[str, Any], n: int, how: str
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The arrays of ``maps.npz``, checked against what ``baseline.json`` records before and
    after reading: sizes from the archive's directory (a zip bomb is refused unread),
    shapes, and finite values."""
    import zipfile

    def bad(what: str) -> StaleBaselineError:
        return StaleBaselineError(f"{path}: {what}; {how}")

    methods, grid, classes = meta["maps"]["methods"], meta["maps"].get("shape"), meta["classes"]
    if not (
        isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and 0 < g <= 4096 for g in grid)
    ):
        raise bad(f"baseline.json records no valid map shape ({grid!r})")
    if not (isinstance(methods, list) and isinstance(classes, list) and 0 < len(classes) <= 10_000):
        raise bad("baseline.json records no valid methods or classes")
    auc = meta["auc"]
    if isinstance(auc, bool) or not isinstance(auc, int | float) or not 0.0 <= float(auc) <= 1.0:
        raise bad(f"baseline.json records an AUC of {auc!r}, not a number in [0, 1]")
    expected = n * (len(methods) * grid[0] * grid[1] * 4 + len(classes) * 4 + 8) + (1 << 20)
    try:
        with zipfile.ZipFile(io.BytesIO(npz)) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
    except zipfile.BadZipFile as exc:
        raise bad(f"not a readable archive ({exc})") from exc
    if unpacked > 2 * expected:
        raise bad(
            f"unpacks to {unpacked:,} bytes where {n} audit images need about {expected:,}; refused unread"
        )
    try:
        with np.load(io.BytesIO(npz), allow_pickle=False) as z:
            maps = {m: z[f"map_{m}"].astype(np.float32) for m in methods}
            logits, labels = z["logits"], z["labels"]
    except (KeyError, ValueError, OSError) as exc:
        raise bad(f"unreadable arrays ({exc})") from exc
    for m, a in maps.items():
        if a.shape != (n, *grid):
            raise bad(
                f"{m} maps have shape {a.shape}, but the baseline records {n} maps of {grid[0]}x{grid[1]}"
            )
        if not np.isfinite(a).all():
            raise bad(f"the stored {m} maps contain NaN or Inf (the baseline is damaged, not the candidate)")
    if logits.shape != (n, len(classes)) or labels.shape != (n,):
        raise bad(
            f"logits {logits.shape} and labels {labels.shape} do not fit {n} images of {len(classes)} classes"
        )
    if not np.isfinite(logits).all():
        raise bad("the stored logits contain NaN or Inf")
    return maps, logits, labels


def check_compatible(baseline: Baseline, meta: CheckpointMeta, candidate: Path) -> None:
    """Raises :class:`StaleBaselineError` when the candidate's architecture, classes or
    preprocessing differ from the baseline's."""
    want = {k: baseline.meta[k] for k in ("arch", "classes", "input_size", "mean", "std")}
    # baselines from before preprocessing was configurable used the default
    want["preprocess"] = baseline.meta.get("preprocess", DEFAULT.as_dict())
    got = _meta_view(meta)
    diff = [f"{k} {got[k]!r} (baseline {want[k]!r})" for k in want if got[k] != want[k]]
    if diff:
        raise StaleBaselineError(
            f"{candidate}: does not match the baseline in {baseline.path}: {'; '.join(diff)}; "
            f"refresh it with `drift-gate baseline --reference CKPT --out {baseline.path}`"
        )
