"""Stored baselines, read back: the lock every reader and writer of one takes, and the
verification of its files (sizes before reading, hashes, signature, shapes, types and
ranges of every field) before anything in them is used.

Size: one verification pass over a hostile folder, field by field; split up, a field
could be used by one part before another part had checked it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drift_gate._io import (
    file_lock,
    recover_folder,
)
from drift_gate._machine import is_machine
from drift_gate.errors import ConfigError, DataError, StaleBaselineError
from drift_gate.gating.audit import (
    AuditSet,
)
from drift_gate.gating.multilabel import (
    is_multilabel,
)
from drift_gate.gating.signing import BASELINE_FILES, files_digest, verify_files

if TYPE_CHECKING:
    from drift_gate.gating.signing import Keyring


if TYPE_CHECKING:
    pass

__all__ = [
    "BASELINE_SCHEMA",
    "DROPS",
    "MAX_FILE",
    "Baseline",
    "baseline_command",
    "baseline_lock",
    "load_baseline",
    "read_baseline",
]


BASELINE_SCHEMA = 1

#: ``[counterfactual] paired``'s per-sample values (:mod:`drift_gate.gating.paired`) and
#: their arrays' names in ``maps.npz``
DROPS = {"counterfactual_drop": "drop_counterfactual", "corner_drop": "drop_corner"}


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
    #: ``[counterfactual] paired``: the reference's swap drops per map row
    #: (``counterfactual_drop`` ``(N,)`` or ``(N, 4)``, ``corner_drop`` ``(N, 4)``), measured
    #: under the settings ``meta["counterfactual"]`` records (:mod:`drift_gate.gating.paired`)
    drops: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])


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


def baseline_command(
    out: Path,
    data: Path | None = None,
    reference: Path | None = None,
    thresholds: str = "thresholds.toml",
    spec_file: Path | None = None,
) -> str:
    """The ``drift-gate baseline`` command that (re-)makes the baseline ``out``, complete
    with the data, the rules and the model spec it needs. What is not known here is a
    capitalised word to replace (``REFERENCE``: the checkpoint to make it from; ``DATA``: the
    data root of its audit images), and the text says so."""
    import shlex

    args = ["drift-gate", "baseline", "--reference", str(reference) if reference else "REFERENCE"]
    args += ["--data", str(data) if data else "DATA"]
    if spec_file is not None:
        args += ["--model", str(spec_file)]
    if thresholds != "thresholds.toml":
        args += ["--thresholds", thresholds]
    args += ["--out", str(out)]
    text = " ".join(a if a in ("REFERENCE", "DATA") else shlex.quote(a) for a in args)
    unknown = [
        w
        for w, v in (
            ("REFERENCE: the checkpoint to make it from", reference),
            ("DATA: the data root of its audit images", data),
        )
        if not v
    ]
    return f"`{text}`" + (f" ({'; '.join(unknown)})" if unknown else "")


def load_baseline(path: Path, public_key: Keyring | None = None) -> Baseline:
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


def read_baseline(folder: Path, public_key: Keyring | None = None) -> Baseline:
    """Reads and verifies a baseline (and, with ``public_key``, its signature, over the very
    bytes then used); the caller holds its lock (:func:`load_baseline` takes it)."""
    how = f"re-make it: {baseline_command(folder)}"
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
    if "machine" in meta and not is_machine(meta["machine"]):
        raise StaleBaselineError(f"{meta_path}: the machine record is malformed; {how}")
    maps, logits, labels, pairs, drops = _arrays(folder / "maps.npz", npz, meta, len(audit.samples), how)
    approved = meta.get("approved") or {}
    why = _bad_approval(approved)
    if why:
        raise StaleBaselineError(f"{meta_path}: the approved result is malformed ({why}); {how}")
    return Baseline(folder, meta, audit, maps, logits, labels, approved, pairs, files_digest(files), drops)


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


def _declared_bytes(zf: Any, info: Any) -> int:
    """The bytes an ``.npy`` member of an archive declares in its header (shape x item size),
    read before any array is: a header may claim far more than the member holds."""
    from numpy.lib import format as npy

    with zf.open(info) as fh:
        version = npy.read_magic(fh)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(fh, max_header_size=10_000)
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * int(dtype.itemsize)


def _arrays(
    path: Path, npz: bytes, meta: dict[str, Any], n: int, how: str
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """The arrays of ``maps.npz``, checked against what ``baseline.json`` records before and
    after reading: sizes from the archive's directory (a zip bomb is refused unread),
    shapes, and finite values."""

    def bad(what: str) -> StaleBaselineError:
        return StaleBaselineError(f"{path}: {what}; {how}")

    rows, expected = _expected_size(meta, n, bad)
    _refuse_oversized(npz, expected, n, bad)
    multilabel, methods = is_multilabel(meta), meta["maps"]["methods"]
    try:
        with np.load(io.BytesIO(npz), allow_pickle=False) as z:
            maps = {m: z[f"map_{m}"].astype(np.float32) for m in methods}
            logits, labels = z["logits"], z["labels"]
            pairs = z["pairs"].astype(np.int64) if multilabel else None
            drops = {k: z[name].astype(np.float64) for k, name in DROPS.items() if name in z.files}
    except (KeyError, ValueError, OSError) as exc:
        raise bad(f"unreadable arrays ({exc})") from exc
    _check_maps(maps, meta, rows, bad)
    classes = meta["classes"]
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
    _check_drops(drops, meta, rows, bad)
    return maps, logits, labels, pairs, drops


def _check_drops(
    drops: dict[str, np.ndarray], meta: dict[str, Any], rows: int, bad: Callable[[str], StaleBaselineError]
) -> None:
    """The reference's stored swap drops: recorded settings beside them, one per map row
    (four columns for corners), finite, in [-2, 2] (a difference of two score drops)."""
    settings = meta.get("counterfactual")
    if bool(drops) != isinstance(settings, dict):
        raise bad("baseline.json's counterfactual settings and the stored reference drops do not go together")
    corners = isinstance(settings, dict) and settings.get("region") == "corners"
    for key, a in drops.items():
        four = key == "corner_drop" or corners
        if a.shape != ((rows, 4) if four else (rows,)):
            raise bad(f"the stored {key} has shape {a.shape}, not one per map row ({rows})")
        if not (np.isfinite(a).all() and (np.abs(a) <= 2).all()):
            raise bad(f"the stored {key} holds NaN, Inf or values outside [-2, 2]")


def _is_grid(g: object) -> bool:
    """Whether ``g`` is a map grid as baseline.json records one: ``[rows, columns]``, each
    from 1 to 4096."""
    return isinstance(g, list) and len(g) == 2 and all(isinstance(v, int) and 0 < v <= 4096 for v in g)


def _expected_size(meta: dict[str, Any], n: int, bad: Callable[[str], StaleBaselineError]) -> tuple[int, int]:
    """The number of stored maps per method (images, or (image, class) pairs) and about how
    many bytes ``maps.npz`` unpacks to, from baseline.json's grid, methods, classes and AUC,
    each checked."""
    methods, grid, classes = meta["maps"]["methods"], meta["maps"].get("shape"), meta["classes"]
    if not _is_grid(grid):
        raise bad(f"baseline.json records no valid map shape ({grid!r})")
    if not (isinstance(methods, list) and isinstance(classes, list) and 0 < len(classes) <= 10_000):
        raise bad("baseline.json records no valid methods or classes")
    auc = meta["auc"]
    if isinstance(auc, bool) or not isinstance(auc, int | float) or not 0.0 <= float(auc) <= 1.0:
        raise bad(f"baseline.json records an AUC of {auc!r}, not a number in [0, 1]")
    rows = n
    if is_multilabel(meta):
        rows = meta["audit"].get("pairs")
        if isinstance(rows, bool) or not isinstance(rows, int) or not 0 < rows <= n * len(classes):
            raise bad(f"baseline.json records no valid number of (image, class) pairs ({rows!r})")
    per_method = meta["maps"].get("shapes")
    cells = (
        sum(
            g[0] * g[1] if _is_grid(g) else 0
            for g in (per_method if isinstance(per_method, dict) else {}).values()
        )
        or len(methods) * grid[0] * grid[1]
    )
    # + the paired drops: up to 5 float64 per row
    return rows, rows * (cells * 4 + 16 + 40) + n * (len(classes) * 5 + 8) + (1 << 20)


def _refuse_oversized(npz: bytes, expected: int, n: int, bad: Callable[[str], StaleBaselineError]) -> None:
    """Refuses, unread, an archive whose directory or array headers declare more than twice
    ``expected`` bytes (a zip bomb, or an array header that asks for gigabytes)."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(npz)) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
            declared = {i.filename: _declared_bytes(zf, i) for i in zf.infolist()}
    except zipfile.BadZipFile as exc:
        raise bad(f"not a readable archive ({exc})") from exc
    except ValueError as exc:
        raise bad(f"an array header is unreadable ({exc})") from None
    for name, size in declared.items():
        if size > 2 * expected:
            raise bad(
                f"{name} declares {size:,} bytes in its header where {n} audit images need about "
                f"{expected:,}; refused unread"
            )
    if unpacked > 2 * expected:
        raise bad(
            f"unpacks to {unpacked:,} bytes where {n} audit images need about {expected:,}; refused unread"
        )


def _check_maps(
    maps: dict[str, np.ndarray], meta: dict[str, Any], rows: int, bad: Callable[[str], StaleBaselineError]
) -> None:
    """Each method's maps have the grid baseline.json records for it, and finite values."""
    grid, shapes = meta["maps"].get("shape"), meta["maps"].get("shapes", {})
    if not isinstance(shapes, dict):
        raise bad(f"baseline.json records no valid map shapes per method ({shapes!r})")
    for m, a in maps.items():
        g = shapes.get(m, grid)
        if not _is_grid(g):
            raise bad(f"baseline.json records no valid map shape for {m} ({g!r})")
        if a.shape != (rows, *g):
            raise bad(f"{m} maps have shape {a.shape}, but the baseline records {rows} maps of {g[0]}x{g[1]}")
        if not np.isfinite(a).all():
            raise bad(f"the stored {m} maps contain NaN or Inf (the baseline is damaged, not the candidate)")
