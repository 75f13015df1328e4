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
    file_lock,
    file_sha256,
    recover_folder,
    swap_in_folder,
    uninterrupted,
)
from drift_gate.data.datasets import DataSet, ImageDataset, Sample
from drift_gate.data.preprocess import DEFAULT
from drift_gate.errors import ConfigError, DataError, StaleBaselineError
from drift_gate.evidence.cam import CamResult, compute_cams, grid_warning
from drift_gate.evidence.classification import (
    classification_metrics,
    multilabel_metrics,
    predicted_class,
    predicted_positive,
)
from drift_gate.gating.audit import (
    AuditSet,
    audit_summary,
    build_audit_set,
    build_multilabel_audit_set,
    check_reachable,
    expand_pairs,
    multi_hot,
    test_images_per_class,
)
from drift_gate.gating.signing import BASELINE_FILES, SIGNATURE_FILE, files_digest, sign_files, verify_files
from drift_gate.models.checkpoint import CheckpointMeta, library_versions

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from drift_gate.models.spec import ModelSpec

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
    #: multi-label baselines: the (image, class) pair of each map row; labels are then
    #: ``(N, K)`` positives and logits ``(N, K)`` per image
    pairs: np.ndarray | None = None
    #: :func:`~drift_gate.gating.signing.files_digest` of the three files as read (what a
    #: gate result is bound to)
    digest: str = ""

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _meta_view(meta: CheckpointMeta) -> dict[str, Any]:
    view = {
        "arch": meta.arch,
        "classes": list(meta.classes),
        "input_size": meta.input_size,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "preprocess": meta.preprocess.as_dict(),
    }
    if meta.model is not None:  # a model drift-gate did not train: its spec
        view["model"] = meta.model
    return view


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
    spec: ModelSpec | None = None,
    signer: Ed25519PrivateKey | None = None,
) -> Path:
    """Computes and writes a baseline for ``reference`` (atomically, file by file,
    ``baseline.json`` last, so a partial baseline is never mistaken for a whole one).

    Args:
        rules: when given, a baseline on which these rules could never reach
            ``min_samples`` is refused before anything is written.
        log: receives lines that say what the audit set holds and why.
        spec: the model spec of a reference drift-gate did not train (a state dict).
        signer: signs the baseline (``signature.json``, :mod:`drift_gate.gating.signing`).

    Returns:
        The ``baseline.json`` path.

    Raises:
        DataError: the data does not fit the reference, or (with ``rules``) the
            audit set is too small for ``min_samples``.
    """
    from drift_gate.models.adapters import load_model

    model, meta = load_model(reference, spec, device)
    target = getattr(model, "target", None)
    if target is not None:
        (log or (lambda m: None))(f"CAM target layer: {target.describe()}")
    if tuple(data.classes) != tuple(meta.classes):
        raise DataError(
            f"data classes {list(data.classes)} differ from the checkpoint's {list(meta.classes)}"
        )
    if is_multilabel(meta):
        audit = build_multilabel_audit_set(data, per_class)
        samples = audit.resolve(data.root, data.classes, multilabel=True)
        run = _multilabel_reference(model, meta, samples, methods, device, batch_size, progress)
        cams, logits, labels, correct, extra = run
        sizing, lines = multilabel_summary(meta, samples, extra["pairs"], correct, per_class)
        n = per_class
    else:
        audit = build_audit_set(data, per_class)
        samples = audit.resolve(data.root, data.classes)
        ds = ImageDataset(
            samples, meta.input_size, meta.mean, meta.std, cache=False, preprocess=meta.preprocess
        )
        cams = compute_cams(model, ds, methods, device, batch_size, progress=progress)
        logits, labels, extra = cams.logits, np.array([s.label for s in samples]), {}
        correct = predicted_class(logits) == labels
        n = len(samples) // len(meta.classes)
        sizing, lines = audit_summary(data, per_class, n, labels, correct)
    metrics = (
        multilabel_metrics(logits, labels, meta.classes, operating_points(meta))
        if is_multilabel(meta)
        else classification_metrics(logits, labels, meta.classes)
    )
    coarse = grid_warning(next(iter(cams.maps.values())).shape[1:], meta.input_size)
    for line in lines + ([f"warning: {coarse}"] if coarse else []):
        (log or (lambda m: None))(line)
    if rules is not None:
        check_reachable(
            rules,
            len(correct),
            int(correct.sum()),
            len(meta.classes),
            per_class if is_multilabel(meta) else min(test_images_per_class(data).values()),
        )
    arrays = {f"map_{m}": v.astype(np.float32) for m, v in cams.maps.items()}
    arrays.update(logits=logits.astype(np.float32), labels=labels, **extra)
    npz = _npz_bytes(arrays)
    doc = {
        "schema_version": BASELINE_SCHEMA,
        **_meta_view(meta),
        "reference": {"path": str(reference), "sha256": file_sha256(reference), "phase": meta.phase},
        "audit": {
            "sha256": audit.sha256,
            "n": len(samples),
            "per_class": n,
            **sizing,
            **({"pairs": len(extra["pairs"])} if "pairs" in extra else {}),
        },
        "maps": {
            "sha256": hashlib.sha256(npz).hexdigest(),
            "methods": list(cams.maps),
            "shape": list(next(iter(cams.maps.values())).shape[1:]),
            **({"layer": target.path} if target is not None else {}),
        },
        "auc": metrics["auc_macro"],
        "accuracy": metrics["accuracy"],
        "versions": library_versions(),
        "approved": {},
        "history": [],
    }
    _store(out, npz, audit.to_json(), json.dumps(doc, indent=2, sort_keys=True) + "\n", signer)
    return out / "baseline.json"


def is_multilabel(meta: CheckpointMeta | dict[str, Any]) -> bool:
    """Whether a model (its metadata, or a ``baseline.json``) has a multi-label head."""
    model = meta.get("model") if isinstance(meta, dict) else meta.model
    return isinstance(model, dict) and model.get("task") == "multilabel"


def operating_points(meta: CheckpointMeta | dict[str, Any]) -> list[float]:
    """A multi-label model's sigmoid threshold per class."""
    model = meta.get("model") if isinstance(meta, dict) else meta.model
    classes = meta["classes"] if isinstance(meta, dict) else meta.classes
    assert isinstance(model, dict)
    op = [float(v) for v in model.get("operating_point", [0.5])]
    return op * len(classes) if len(op) == 1 else op


def _multilabel_reference(
    model: torch.nn.Module,
    meta: CheckpointMeta,
    samples: list[Sample],
    methods: tuple[str, ...],
    device: str | torch.device,
    batch_size: int,
    progress: bool,
) -> tuple[CamResult, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The reference's logits per image and its maps per (image, positive class) pair."""
    from drift_gate.models.inference import predict

    def dataset(items: list[Sample]) -> ImageDataset:
        return ImageDataset(
            items, meta.input_size, meta.mean, meta.std, cache=False, preprocess=meta.preprocess
        )

    logits, _ = predict(model, dataset(samples), torch.device(device), batch_size)  # type: ignore[arg-type]
    pair_samples, pairs = expand_pairs(samples)
    cams = compute_cams(model, dataset(pair_samples), methods, device, batch_size, progress=progress)
    positives = multi_hot(samples, len(meta.classes))
    predicted = predicted_positive(logits, operating_points(meta))
    correct = predicted[pairs[:, 0], pairs[:, 1]]
    return cams, logits, positives.astype(np.int8), correct, {"pairs": pairs}


def multilabel_summary(
    meta: CheckpointMeta, samples: list[Sample], pairs: np.ndarray, correct: np.ndarray, per_class: int
) -> tuple[dict[str, Any], list[str]]:
    """What a multi-label audit set holds (for ``baseline.json``), and lines that say so."""
    per = {c: int((pairs[:, 1] == i).sum()) for i, c in enumerate(meta.classes)}
    right = {c: int(correct[pairs[:, 1] == i].sum()) for i, c in enumerate(meta.classes)}
    none = sum(1 for s in samples if not s.labels)
    short = [c for c, k in per.items() if k < per_class]
    lines = [
        f"audit set: {len(samples)} test images, {len(pairs)} (image, positive class) pairs, "
        f"{none} images without findings (negatives for AUC); up to {per_class} positives per class"
        + (f"; fewer for {', '.join(short)}" if short else ""),
        f"reference: predicts {int(correct.sum())} of the {len(pairs)} positive pairs at its "
        "operating points (" + ", ".join(f"{c} {right[c]}/{per[c]}" for c in meta.classes) + ")",
    ]
    return {"requested_per_class": per_class, "pairs_per_class": per, "reference_correct": right}, lines


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


def _store(
    out: Path, npz: bytes, audit_json: str, baseline_json: str, signer: Ed25519PrivateKey | None = None
) -> None:
    """Writes a baseline's files under the baseline's lock (:func:`write_set`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files = {"maps.npz": npz, "audit.json": audit_json.encode(), "baseline.json": baseline_json.encode()}
    with baseline_lock(out):
        write_set(out, files, signer)


def write_set(out: Path, files: dict[str, bytes], signer: Ed25519PrivateKey | None = None) -> None:
    """Writes a baseline's files (and, with ``signer``, their ``signature.json``) into a new
    folder beside ``out`` and swaps it in whole: readers see the old set or the new one,
    and a failure (disk full, a crash, Ctrl-C) leaves the old set as it was. The caller
    holds the baseline's lock."""
    recover_folder(out)
    if signer is not None:
        files = {**files, SIGNATURE_FILE: sign_files(files, signer).encode()}
    staging = out.parent / f".{out.name}.new-{os.getpid()}"
    try:
        staging.mkdir()
        for name, data in files.items():
            atomic_write_bytes(staging / name, data)
        with uninterrupted():
            swap_in_folder(staging, out)
    except OSError as exc:
        raise DataError(
            f"{out}: cannot write the baseline ({exc.strerror or exc}); the previous baseline is unchanged"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_baseline(path: Path, public_key: Ed25519PublicKey | None = None) -> Baseline:
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
        return read_baseline(folder, public_key)


#: Largest file of a baseline read into memory (checked before reading).
MAX_FILE = {"baseline.json": 64 << 20, "audit.json": 256 << 20, "maps.npz": 4 << 30}


def _read_files(folder: Path, how: str) -> dict[str, bytes]:
    """A baseline's three files, read once (sizes checked first): what is verified and used."""
    meta_path = folder / "baseline.json"
    if not meta_path.is_file():
        raise StaleBaselineError(f"{meta_path}: no baseline (missing or partially written); {how}")
    files = {}
    for name in BASELINE_FILES:
        path = folder / name
        try:
            size = path.stat().st_size
            if size > MAX_FILE[name]:
                raise StaleBaselineError(
                    f"{path}: {size:,} bytes, more than a baseline holds; refused unread"
                )
            files[name] = path.read_bytes()
        except FileNotFoundError:
            raise StaleBaselineError(f"{path}: missing from the baseline; {how}") from None
        except OSError as exc:
            raise StaleBaselineError(f"{path}: unreadable ({exc.strerror or exc}); {how}") from None
    return files


def read_baseline(folder: Path, public_key: Ed25519PublicKey | None = None) -> Baseline:
    """Reads and verifies a baseline (and, with ``public_key``, its signature, over the very
    bytes then used); the caller holds its lock (:func:`load_baseline` takes it)."""
    how = f"refresh it with `drift-gate baseline --reference CKPT --out {folder}`"
    meta_path = folder / "baseline.json"
    files = _read_files(folder, how)
    if public_key is not None:
        verify_files(folder, files, public_key)
    try:
        meta = json.loads(files["baseline.json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise StaleBaselineError(f"{meta_path}: unreadable baseline ({exc}); {how}") from None
    if not isinstance(meta, dict):
        raise StaleBaselineError(f"{meta_path}: not a baseline (a JSON object); {how}")
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
    npz = files["maps.npz"]
    if hashlib.sha256(npz).hexdigest() != meta["maps"]["sha256"]:
        raise StaleBaselineError(
            f"{folder / 'maps.npz'}: hash differs from baseline.json (modified or corrupted); {how}"
        )
    try:
        audit = AuditSet.from_json(files["audit.json"].decode("utf-8"))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise StaleBaselineError(f"{folder / 'audit.json'}: unreadable audit set ({exc}); {how}") from exc
    if audit.sha256 != meta["audit"]["sha256"]:
        raise StaleBaselineError(
            f"{folder / 'audit.json'}: hash differs from baseline.json (modified); {how}"
        )
    if not audit.samples:
        raise DataError("the audit set is empty: nothing could be checked")
    if "model" in meta:
        from drift_gate.models.spec import ModelSpec

        try:
            ModelSpec.from_dict(meta["model"], f"{meta_path}: model")
        except ConfigError as exc:
            raise StaleBaselineError(f"{exc}; {how}") from None
    maps, logits, labels, pairs = _arrays(folder / "maps.npz", npz, meta, len(audit.samples), how)
    approved = meta.get("approved") or {}
    why = _bad_approval(approved)
    if why:
        raise StaleBaselineError(f"{meta_path}: the approved result is malformed ({why}); {how}")
    return Baseline(folder, meta, audit, maps, logits, labels, approved, pairs, files_digest(files))


def _is_unit(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= float(v) <= 1.0


def _bad_approval(approved: object) -> str | None:
    """What is wrong with a stored approval (``None`` if nothing): the gate compares its
    numbers with the candidate's, so each must be a finite number of the right kind."""
    import math

    if not isinstance(approved, dict):
        return "not a table"
    if not approved:
        return None
    if "auc" in approved and not _is_unit(approved["auc"]):
        return f"auc {approved['auc']!r} is not a number in [0, 1]"
    if not isinstance(approved.get("statistic", "mean"), str):
        return "statistic is not a name"
    stats = approved.get("statistics", {})
    if not isinstance(stats, dict) or not all(isinstance(v, dict) for v in stats.values()):
        return "statistics is not a table of tables"
    for method, per in stats.items():
        for metric, value in per.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            ):
                return f"{method}/{metric} is {value!r}, not a finite number"
    return None


def _arrays(
    path: Path, npz: bytes, meta: dict[str, Any], n: int, how: str
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray | None]:
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
    multilabel, rows = is_multilabel(meta), n
    if multilabel:
        rows = meta["audit"].get("pairs")
        if isinstance(rows, bool) or not isinstance(rows, int) or not 0 < rows <= n * len(classes):
            raise bad(f"baseline.json records no valid number of (image, class) pairs ({rows!r})")
    expected = rows * (len(methods) * grid[0] * grid[1] * 4 + 16) + n * (len(classes) * 5 + 8) + (1 << 20)
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
            pairs = z["pairs"].astype(np.int64) if multilabel else None
    except (KeyError, ValueError, OSError) as exc:
        raise bad(f"unreadable arrays ({exc})") from exc
    for m, a in maps.items():
        if a.shape != (rows, *grid):
            raise bad(
                f"{m} maps have shape {a.shape}, but the baseline records {rows} maps of {grid[0]}x{grid[1]}"
            )
        if not np.isfinite(a).all():
            raise bad(f"the stored {m} maps contain NaN or Inf (the baseline is damaged, not the candidate)")
    if pairs is not None and (
        pairs.shape != (rows, 2)
        or not (
            (pairs[:, 0] >= 0) & (pairs[:, 0] < n) & (pairs[:, 1] >= 0) & (pairs[:, 1] < len(classes))
        ).all()
    ):
        raise bad(f"the (image, class) pairs {pairs.shape} do not fit {n} images of {len(classes)} classes")
    if logits.shape != (n, len(classes)) or labels.shape != ((n, len(classes)) if multilabel else (n,)):
        raise bad(
            f"logits {logits.shape} and labels {labels.shape} do not fit {n} images of {len(classes)} classes"
        )
    if not np.isfinite(logits).all():
        raise bad("the stored logits contain NaN or Inf")
    return maps, logits, labels, pairs


def check_compatible(baseline: Baseline, meta: CheckpointMeta, candidate: Path) -> None:
    """Raises :class:`StaleBaselineError` when the candidate's architecture, classes or
    preprocessing differ from the baseline's."""
    want = {k: baseline.meta[k] for k in ("arch", "classes", "input_size", "mean", "std")}
    # baselines from before preprocessing was configurable used the default
    want["preprocess"] = baseline.meta.get("preprocess", DEFAULT.as_dict())
    got = _meta_view(meta)
    mine, theirs = got.pop("model", None), baseline.meta.get("model")
    diff = [f"{k} {got[k]!r} (baseline {want[k]!r})" for k in want if got[k] != want[k]]
    if mine != theirs:
        if mine is None or not isinstance(theirs, dict):
            diff.append("the baseline was made " + ("with" if mine is None else "without") + " a model spec")
        else:
            diff += [
                f"model.{k} {mine.get(k)!r} (baseline {theirs.get(k)!r})"
                for k in sorted(set(mine) | set(theirs))
                if mine.get(k) != theirs.get(k)
            ]
    if diff:
        raise StaleBaselineError(
            f"{candidate}: does not match the baseline in {baseline.path}: {'; '.join(diff)}; "
            f"refresh it with `drift-gate baseline --reference CKPT --out {baseline.path}`"
        )
