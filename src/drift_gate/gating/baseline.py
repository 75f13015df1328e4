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
  the reference's AUC on the audit set, methods, library versions, the machine
  that made the maps (:mod:`drift_gate._machine`; shown, never compared) and the
  approved candidate's results (if any) for relative rules;
* ``audit.json``: the audit set;
* ``maps.npz`` (compressed): each method's reference maps at the target layer's
  native resolution (float32: at 4x4 to 10x10 cells per map, float16 would save
  little and could flip near-tied pixels), the reference logits and the labels; with
  ``[counterfactual] paired = true``, the reference's swap drops per map row
  (:mod:`drift_gate.gating.paired`), their settings in ``baseline.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from drift_gate._io import (
    atomic_write_bytes,
    file_sha256,
    recover_folder,
    swap_in_folder,
    uninterrupted,
)
from drift_gate._machine import machine
from drift_gate._memory import AUDIT, allocator_policy
from drift_gate.data.datasets import DataSet, ImageDataset, Sample
from drift_gate.data.preprocess import DEFAULT
from drift_gate.errors import DataError, StaleBaselineError
from drift_gate.evidence.cam import compute_cams, grid_warning
from drift_gate.evidence.classification import (
    classification_metrics,
    multilabel_metrics,
    predicted_class,
)
from drift_gate.gating.audit import (
    AuditSet,
    audit_summary,
    build_audit_set,
    build_multilabel_audit_set,
    check_reachable,
    expand_pairs,
    test_images_per_class,
)
from drift_gate.gating.multilabel import (
    is_multilabel,
    multilabel_reference,
    multilabel_summary,
    operating_points,
)
from drift_gate.gating.signing import SIGNATURE_FILE, sign_files
from drift_gate.gating.stored import BASELINE_SCHEMA, DROPS, Baseline, baseline_command, baseline_lock
from drift_gate.models.checkpoint import CheckpointMeta, library_versions

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from drift_gate.models.spec import ModelSpec

if TYPE_CHECKING:
    from drift_gate.gating.thresholds import Thresholds

__all__ = ["APPROVED_STATISTIC", "baseline_command", "check_compatible", "create_baseline", "write_set"]


#: Which per-candidate statistic ``approve`` records for each ``[gate] statistic``
#: (relative bounds compare like with like; ``ci`` compares against the mean).
APPROVED_STATISTIC = {"mean": "mean", "median": "median", "ci": "mean"}


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
    if meta.output_stride is not None:  # stored only when set, as in the checkpoint
        view["output_stride"] = meta.output_stride
    if meta.model is not None:  # a model drift-gate did not train: its spec
        view["model"] = meta.model
    return view


def create_baseline(
    reference: Path,
    data: DataSet,
    out: Path,
    methods: tuple[str, ...],
    *,
    per_class: int = 10,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    progress: bool = False,
    rules: Thresholds | None = None,
    paired: Thresholds | None = None,
    log: Callable[[str], None] | None = None,
    spec: ModelSpec | None = None,
    signer: Ed25519PrivateKey | None = None,
    loaded: tuple[torch.nn.Module, CheckpointMeta] | None = None,
) -> Path:
    """Computes and writes a baseline for ``reference`` (atomically, file by file,
    ``baseline.json`` last, so a partial baseline is never mistaken for a whole one).

    Args:
        rules: when given, a baseline on which these rules could never reach
            ``min_samples`` is refused before anything is written.
        paired: the rules whose ``[counterfactual] paired = true`` needs the reference's
            swap drops stored (:mod:`drift_gate.gating.paired`); by default ``rules``.
        log: receives lines that say what the audit set holds and why.
        spec: the model spec of a reference drift-gate did not train (a state dict).
        signer: signs the baseline (``signature.json``, :mod:`drift_gate.gating.signing`).
        loaded: ``reference`` already loaded (model and metadata), so it is not read twice.

    Returns:
        The ``baseline.json`` path.

    Raises:
        DataError: the data does not fit the reference, or (with ``rules``) the
            audit set is too small for ``min_samples``.
    """
    from drift_gate.models.adapters import load_model

    allocator_policy(AUDIT)
    say = log or (lambda m: None)
    model, meta = loaded or load_model(reference, spec, device)
    model = model.to(device)
    target = getattr(model, "target", None)
    if target is not None:
        say(f"CAM target layer: {target.describe()}")
    if tuple(data.classes) != tuple(meta.classes):
        raise DataError(
            f"data classes {list(data.classes)} differ from the checkpoint's {list(meta.classes)}"
        )
    run = _reference_pass(
        model,
        meta,
        data,
        methods=methods,
        per_class=per_class,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )
    coarse = grid_warning(next(iter(run.maps.values())).shape[1:], meta.input_size)
    for line in run.lines + ([f"warning: {coarse}"] if coarse else []):
        say(line)
    if rules is not None:
        check_reachable(
            rules,
            len(run.correct),
            int(run.correct.sum()),
            len(meta.classes),
            per_class if is_multilabel(meta) else min(test_images_per_class(data).values()),
        )
    arrays = {f"map_{m}": v.astype(np.float32) for m, v in run.maps.items()}
    arrays.update(logits=run.logits.astype(np.float32), labels=run.labels, **run.extra)
    pair_with, settings = paired or rules, None
    if pair_with is not None and pair_with.counterfactual_paired:
        from drift_gate.gating.paired import reference_drops

        say("paired counterfactual: measuring the reference's swap drops on the audit set")
        drops = reference_drops(
            model,
            meta,
            run.rows,
            pair_with,
            multilabel=is_multilabel(meta),
            device=device,
            batch_size=batch_size,
        )
        arrays.update({DROPS[k]: v for k, v in drops.items()})
        settings = pair_with.counterfactual_settings()
    npz = _npz_bytes(arrays)
    doc = _baseline_doc(reference, meta, data, run, hashlib.sha256(npz).hexdigest(), target)
    if settings is not None:  # what the stored drops were measured under
        doc["counterfactual"] = settings
    doc["machine"] = machine(device)
    _store(out, npz, run.audit.to_json(), json.dumps(doc, indent=2, sort_keys=True) + "\n", signer)
    return out / "baseline.json"


@dataclass(frozen=True)
class _ReferencePass:
    """The reference on its audit set: maps, logits, labels, which it gets right, and what
    the audit set holds (``sizing`` for baseline.json, ``lines`` to say so)."""

    audit: AuditSet
    n_samples: int
    per_class: int
    maps: dict[str, np.ndarray]
    logits: np.ndarray
    labels: np.ndarray
    correct: np.ndarray
    extra: dict[str, np.ndarray]
    sizing: dict[str, Any]
    lines: list[str]
    metrics: dict[str, Any]
    #: the samples of the map rows: the audit images, or a multi-label set's (image, class) pairs
    rows: list[Sample]


def _reference_pass(
    model: torch.nn.Module,
    meta: CheckpointMeta,
    data: DataSet,
    *,
    methods: tuple[str, ...],
    per_class: int,
    device: str | torch.device,
    batch_size: int,
    progress: bool,
) -> _ReferencePass:
    """The audit set drawn from ``data`` and the reference's one pass over it: per image
    (multi-class) or per (image, positive finding) pair (multi-label)."""
    if is_multilabel(meta):
        audit = build_multilabel_audit_set(data, per_class)
        samples = audit.resolve(data.root, data.classes, multilabel=True)
        cams, logits, labels, correct, extra = multilabel_reference(
            model, meta, samples, methods, device, batch_size, progress
        )
        sizing, lines = multilabel_summary(meta, samples, extra["pairs"], correct, per_class)
        n, maps, rows = per_class, dict(cams.maps), expand_pairs(samples)[0]
        metrics = multilabel_metrics(logits, labels, meta.classes, operating_points(meta))
    else:
        audit = build_audit_set(data, per_class)
        samples = audit.resolve(data.root, data.classes)
        ds = ImageDataset(
            samples, meta.input_size, meta.mean, meta.std, cache=False, preprocess=meta.preprocess
        )
        result = compute_cams(model, ds, methods, device=device, batch_size=batch_size, progress=progress)
        logits, labels, extra = result.logits, np.array([s.label for s in samples]), {}
        maps = dict(result.maps)
        correct = predicted_class(logits) == labels
        n = len(samples) // len(meta.classes)
        sizing, lines = audit_summary(data, per_class, n, labels, correct)
        metrics = classification_metrics(logits, labels, meta.classes)
        rows = samples
    return _ReferencePass(
        audit, len(samples), n, maps, logits, labels, correct, extra, sizing, lines, metrics, rows
    )


def _baseline_doc(
    reference: Path, meta: CheckpointMeta, data: DataSet, run: _ReferencePass, npz_sha256: str, target: Any
) -> dict[str, Any]:
    """baseline.json's content (without the history an approval adds later)."""
    shapes = {m: list(v.shape[1:]) for m, v in run.maps.items()}
    return {
        "schema_version": BASELINE_SCHEMA,
        **_meta_view(meta),
        "reference": {"path": str(reference), "sha256": file_sha256(reference), "phase": meta.phase},
        "audit": {
            "sha256": run.audit.sha256,
            "n": run.n_samples,
            "per_class": run.per_class,
            **run.sizing,
            **({"pairs": len(run.extra["pairs"])} if "pairs" in run.extra else {}),
        },
        "maps": {
            "sha256": npz_sha256,
            "methods": list(run.maps),
            "shape": list(next(iter(run.maps.values())).shape[1:]),
            # methods at another resolution than the first (Integrated Gradients' fine grid)
            **({"shapes": shapes} if len({tuple(v) for v in shapes.values()}) > 1 else {}),
            **({"layer": target.path} if target is not None else {}),
        },
        "data": {
            "manifest_sha256": data.manifest_sha256,
            "images": len(data.samples),
            **({"read_as": data.description} if data.description else {}),
        },
        "auc": run.metrics["auc_macro"],
        "accuracy": run.metrics["accuracy"],
        "versions": library_versions(),
        "approved": {},
        "history": [],
    }


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


def check_compatible(baseline: Baseline, meta: CheckpointMeta, candidate: Path, remake: str = "") -> None:
    """Raises :class:`StaleBaselineError` when the candidate's architecture, classes or
    preprocessing differ from the baseline's; ``remake`` says how to make a fitting one
    (:func:`baseline_command`)."""
    want = {k: baseline.meta[k] for k in ("arch", "classes", "input_size", "mean", "std")}
    # baselines from before preprocessing was configurable used the default
    want["preprocess"] = baseline.meta.get("preprocess", DEFAULT.as_dict())
    want["output_stride"] = baseline.meta.get("output_stride")
    got = _meta_view(meta)
    got.setdefault("output_stride", None)
    mine, theirs = got.pop("model", None), baseline.meta.get("model")
    diff = [f"{k} {got[k]!r} (baseline {want[k]!r})" for k in want if got[k] != want[k]]
    if mine != theirs:
        if mine is None or not isinstance(theirs, dict):
            diff.append("the baseline was made " + ("with" if mine is None else "without") + " a model spec")
        else:
            diff += [
                f"model.{k} {mine.get(k)!r} (baseline {theirs.get(k)!r})"
                for k in sorted(set(mine) | set(theirs))
                if mine.get(k) != theirs.get(k) and not (k in want and got.get(k) != want[k])
            ]  # a setting already named above is not named again as the spec's
    if (
        diff
        and isinstance(mine, dict)
        and isinstance(theirs, dict)
        and mine.get("arch") != theirs.get("arch")
    ):
        # another architecture under the same name (default names are the factory's or the
        # folder's last part): re-making this baseline would overwrite the other model's
        raise StaleBaselineError(
            f"{candidate}: {baseline.path} is the baseline of another model "
            f"({theirs.get('arch')!r}, this one is {mine.get('arch')!r}); give this model a baseline "
            f'name of its own (name = "..." in its model spec) and make its baseline under it'
        )
    if diff:
        raise StaleBaselineError(
            f"{candidate}: does not match the baseline in {baseline.path}: {'; '.join(diff)}; "
            f"make a baseline for this model: {remake or baseline_command(baseline.path)}"
        )
