"""drift-gate as a library: every command as a function with keyword-only arguments
that returns a typed result. The CLI, the nox sessions and the Docker entry point
are thin adapters over these; a user's own pytest or training script calls them
directly::

    import drift_gate

    result = drift_gate.gate(candidates=["checkpoints/densenet201/ft.pt"], data="data/phantoms")
    assert result.verdict is drift_gate.Status.PASS, result.candidates[0].label

Errors are :class:`drift_gate.errors.DriftGateError` subclasses whose ``str`` is
the one-line message; nothing here prints, except through the optional ``log``.

Size: one function per command with its whole argument documentation (the Python API
reference is generated from it); what they are given is resolved in :mod:`drift_gate.inputs`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drift_gate._io import default_cache_dir
from drift_gate.errors import ConfigError, DataError
from drift_gate.inputs import (
    Log,
    PathLike,
    missing_checkpoint,
    profile_data,
    profile_from,
    profile_gate,
    quiet,
    rules_from,
    spec_from,
)

if TYPE_CHECKING:
    from drift_gate.distributed import Dist
    from drift_gate.gating.gate import GateResult
    from drift_gate.gating.stored import Baseline
    from drift_gate.gating.thresholds import Thresholds
    from drift_gate.integrations.bundle import BundleCheck
    from drift_gate.models.export import Parity
    from drift_gate.models.spec import ModelSpec
    from drift_gate.training.pipeline import TrainResult
    from drift_gate.training.profiles import Profile

__all__ = [
    "Approval",
    "Export",
    "PathLike",
    "approve",
    "baseline",
    "bundle",
    "export",
    "gate",
    "keygen",
    "phantoms",
    "profile_data",
    "train",
    "verify_bundle",
]


def _local(dist: Dist | None, device: str) -> Dist:
    from drift_gate.distributed import Dist
    from drift_gate.models.inference import resolve_device

    return dist or Dist(0, 1, resolve_device(device))


def gate(
    *,
    candidates: Sequence[PathLike] = (),
    data: PathLike | None = None,
    model: PathLike | ModelSpec | None = None,
    baselines: PathLike | None = None,
    thresholds: PathLike | Thresholds = "thresholds.toml",
    profile: str | Profile | None = None,
    profiles: PathLike = "profiles.toml",
    backbones: Sequence[str] | None = None,
    create_missing_baselines: bool = False,
    reference: PathLike | None = None,
    reports: PathLike | None = None,
    device: str = "auto",
    batch_size: int = 16,
    onnx: bool = True,
    precision: str = "fp32",
    public_key: PathLike | None = None,
    signing_key: PathLike | None = None,
    mlflow: str | None = None,
    mlflow_experiment: str = "drift-gate",
    progress: bool = False,
    log: Log = quiet,
    dist: Dist | None = None,
) -> GateResult:
    """Gates candidate checkpoints against their stored baselines (``baselines/<arch>``).

    Args:
        candidates: candidate checkpoints (several backbones allowed), or state dicts
            (``.pt``, ``.pth``, ``.safetensors``) of the model that ``model`` describes.
        data: the data source that holds the audit images (a folder or its manifest).
        model: the model spec (``model.toml`` or a :class:`~drift_gate.models.spec.ModelSpec`)
            of candidates drift-gate did not train.
        baselines: the baselines root (default: the profile's, else ``baselines``).
        profile: also gate every FT checkpoint that ``train(profile=...)`` wrote, on
            its data unless ``data`` is given; each must be gated against a baseline made
            from the TL checkpoint beside it (else a clear error: the training did not
            make the model the baseline was made from). A profile with ``baselines =
            "own-tl"`` (the demo) has them made here from those TL checkpoints, and
            re-made whenever one changed.
        backbones: with ``profile``: only these of its backbones (as ``train(backbones=...)``).
        create_missing_baselines: with ``profile``: make a missing baseline from the
            backbone's TL checkpoint (never the default for stored baselines: a CI run
            must not re-create what it is gated against).
        reference: check that each baseline was made from this checkpoint.
        reports: write ``gate.json``, ``gate.md``, ``gate.junit.xml`` and ``gate.html``
            here (as a set); their paths are in ``result.report_paths``.
        onnx: predict with ``<candidate stem>.onnx`` when it is beside a candidate.
        public_key: verify every baseline's signature with this key, or a ring of several
            (a PEM file or its text; default ``DRIFT_GATE_PUBLIC_KEY``); unsigned baselines
            are then refused.
        signing_key: sign ``gate.json`` (default ``DRIFT_GATE_SIGNING_KEY``), so that
            ``approve`` can tell it from an edited one.
        mlflow: log every candidate as a run to this MLflow tracking URI, in the
            experiment ``mlflow_experiment`` (:mod:`drift_gate.integrations.tracking`;
            needs ``drift-gate[mlflow]``); checked before anything is computed.
        dist: the torchrun process group (see :mod:`drift_gate.distributed`).

    Returns:
        The verdict of every candidate, its rules and summaries.

    Raises:
        ConfigError, DataError, CheckpointError, StaleBaselineError: bad input.

    Stages: the inputs resolved (rules, spec, keys, tracking), a profile's FT checkpoints
    and their baselines (made on rank 0 first), each candidate
    gated (:func:`~drift_gate.gating.gate.run_gate`), the result recorded (reports, MLflow).
    """
    from drift_gate.gating import signing
    from drift_gate.gating.gate import GateResult, run_gate
    from drift_gate.models.checkpoint import library_versions

    dist = _local(dist, device)
    rules = rules_from(thresholds)
    spec = spec_from(model)
    verify_with, signer = signing.public_key(public_key), signing.signing_key(signing_key)
    tracking = _open_tracking(mlflow, mlflow_experiment) if dist.main else None
    given = [Path(c) for c in candidates]
    chosen, references = list(given), {}
    source = None if data is None else Path(data)
    root = Path("baselines") if baselines is None else Path(baselines)
    if profile is not None:
        plan = profile_gate(profile, profiles, backbones, baselines)
        root = plan.root
        source = plan.prepare(
            source,
            rules,
            create_missing=create_missing_baselines,
            dist=dist,
            progress=progress,
            log=log,
            signer=signer,
        )
        chosen += plan.candidates
        references = plan.references
    if not chosen:
        raise ConfigError("nothing to gate: give --candidate CKPT or --profile NAME")
    if source is None:
        raise ConfigError("--data is required (the data root that holds the audit images)")
    spec_file = Path(model) if isinstance(model, str | os.PathLike) else None
    results, artifacts = [], {}
    for ckpt in chosen:
        res, art = run_gate(
            ckpt,
            baselines=root,
            thresholds=rules,
            data_root=source,
            device=dist.device,
            batch_size=batch_size,
            reference=Path(reference) if reference is not None else references.get(ckpt),
            progress=progress,
            use_onnx=onnx,
            dist=dist,
            precision=precision,
            spec=spec if ckpt in given else None,
            public_key=verify_with,
            spec_file=spec_file if ckpt in given else None,
        )
        results.append(res)
        artifacts[res.candidate] = art
    result = GateResult(results, rules.as_dict(), rules.path, library_versions())
    _record_gate(result, artifacts, reports=reports, tracking=tracking, signer=signer, dist=dist, log=log)
    return result


def _open_tracking(uri: str | None, experiment: str) -> Any:
    """The MLflow tracking of ``gate(mlflow=...)``, opened (and so checked) before anything
    is computed; ``None`` without a URI."""
    if uri is None:
        return None
    from drift_gate.integrations.tracking import open_tracking

    return open_tracking(uri, experiment)


def _record_gate(
    result: GateResult,
    artifacts: dict[str, Any],
    *,
    reports: PathLike | None,
    tracking: Any,
    signer: Any,
    dist: Dist,
    log: Log,
) -> None:
    """The gate's record: reports written by rank 0 (every rank holds the same result),
    a run per candidate in MLflow; then every rank waits for the others."""
    from drift_gate.distributed import barrier
    from drift_gate.gating.report import write_reports

    if reports is not None and dist.main:
        result.report_paths = write_reports(result, Path(reports), artifacts, signer=signer)
    if tracking is not None:
        from drift_gate.integrations.tracking import log_gate

        runs = log_gate(tracking, result, artifacts, result.report_paths)
        log(f"mlflow: {len(runs)} run(s) in experiment {tracking.experiment!r} at {tracking.uri}")
    barrier(dist)


def baseline(
    *,
    reference: PathLike,
    data: PathLike,
    model: PathLike | ModelSpec | None = None,
    out: PathLike | None = None,
    thresholds: PathLike | Thresholds = "thresholds.toml",
    per_class: int = 10,
    uncertain: str = "zeros",
    device: str = "auto",
    batch_size: int = 16,
    signing_key: PathLike | None = None,
    progress: bool = False,
    log: Log = quiet,
) -> Baseline:
    """Stores a reference checkpoint's CAMs on a fixed audit set (default
    ``baselines/<arch>``, or ``baselines/<model name>`` for a state dict described by the
    spec ``model``), for the methods of ``thresholds``; refuses an audit set on which
    those rules could never reach ``min_samples``. Returns the baseline as loaded back
    and verified. With a signing key (``signing_key`` or ``DRIFT_GATE_SIGNING_KEY``) the
    baseline is signed. ``data`` may be a public data set's folder as it ships
    (:mod:`drift_gate.data.formats`); ``uncertain`` says how CheXpert's and MIMIC-CXR's
    uncertain labels are read (``zeros``, ``ones`` or ``ignore``)."""
    from drift_gate.data.datasets import load_dataset
    from drift_gate.gating import signing
    from drift_gate.gating.baseline import create_baseline
    from drift_gate.gating.multilabel import is_multilabel
    from drift_gate.gating.stored import load_baseline
    from drift_gate.models.adapters import load_model
    from drift_gate.models.inference import resolve_device

    rules = rules_from(thresholds)
    spec = spec_from(model)
    signer = signing.signing_key(signing_key)
    torch_device = resolve_device(device)
    net, meta = load_model(Path(reference), spec, torch_device)
    folder = Path("baselines") / meta.arch if out is None else Path(out)
    dataset = load_dataset(Path(data), meta.classes, multilabel=is_multilabel(meta), uncertain=uncertain)
    if dataset.description:
        log(f"data: {dataset.description}")
    create_baseline(
        Path(reference),
        dataset,
        folder,
        rules.methods,
        per_class=per_class,
        device=torch_device,
        batch_size=batch_size,
        progress=progress,
        rules=rules,
        log=log,
        spec=spec,
        signer=signer,
        loaded=(net, meta),
    )
    if signer is None:
        log("the baseline is not signed (no signing key: DRIFT_GATE_SIGNING_KEY or --signing-key)")
    return load_baseline(folder, None if signer is None else signing.Keyring.of(signer))


@dataclass(frozen=True)
class Approval:
    """One approved candidate: its baseline, what changed, and whether it was forced."""

    candidate: str
    baseline: Path
    changes: list[str]
    forced: bool


def approve(
    *,
    result: PathLike | GateResult | Mapping[str, Any] = "reports/gate.json",
    candidate: str | None = None,
    force: bool = False,
    by: str | None = None,
    public_key: PathLike | None = None,
    signing_key: PathLike | None = None,
) -> list[Approval]:
    """Records a reviewed gate result (``gate.json``, or a :class:`GateResult`) as the
    approved one in each candidate's baseline; a candidate that did not pass needs
    ``force`` (recorded in the baseline's history). Only a result the gate made against
    the baseline as it is now is accepted; with a public key (``public_key`` or
    ``DRIFT_GATE_PUBLIC_KEY``) a ``gate.json`` must carry the gate's signature, and the
    approved baseline is signed with the signing key (``signing_key`` or
    ``DRIFT_GATE_SIGNING_KEY``), which is then required. ``by`` names who approves in the
    history (default: ``$GITHUB_ACTOR``, else the user running it)."""
    from drift_gate.gating import signing
    from drift_gate.gating.approval import approve as record
    from drift_gate.gating.gate import GateResult

    verify_with, signer = signing.public_key(public_key), signing.signing_key(signing_key)

    if isinstance(result, GateResult):
        doc: Mapping[str, Any] = json.loads(json.dumps(result.to_dict()))
    elif isinstance(result, Mapping):
        doc = result
    else:
        try:
            doc = json.loads(Path(result).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise DataError(f"{result}: cannot read gate result ({exc})") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("candidates", []), list):
        raise DataError(
            f"{result if isinstance(result, str | os.PathLike) else 'gate result'}: not a gate result"
        )
    if verify_with is not None and not isinstance(result, GateResult):
        where = str(result) if isinstance(result, str | os.PathLike) else "gate result"
        signing.verify_document(doc, verify_with, where)
    chosen = [
        c
        for c in doc.get("candidates", [])
        if isinstance(c, dict) and (candidate is None or c.get("candidate") == candidate)
    ]
    if not chosen:
        raise DataError(
            f"{result if not isinstance(result, Mapping | GateResult) else 'gate result'}: "
            "no candidate to approve"
        )
    out = []
    for c in chosen:
        changes = record(dict(doc), c, force=force, public_key=verify_with, signer=signer, by=by)
        out.append(
            Approval(str(c["candidate"]), Path(str(c["baseline"])), changes, c.get("verdict") != "pass")
        )
    return out


def train(
    *,
    profile: str | Profile = "demo",
    profiles: PathLike = "profiles.toml",
    backbones: Sequence[str] | None = None,
    device: str = "auto",
    cache_dir: PathLike | None = None,
    force: bool = False,
    keep_epochs: bool = False,
    precision: str = "fp32",
    progress: bool = False,
    log: Log = quiet,
    dist: Dist | None = None,
) -> dict[str, TrainResult]:
    """Trains TL then FT checkpoints for a profile's backbones (``<out>/<arch>/{tl,ft}.pt``);
    up-to-date phases are kept. Returns each backbone's result, with its wall time."""
    from drift_gate.data.datasets import load_dataset
    from drift_gate.distributed import main_first
    from drift_gate.models.backbones import get_backbone
    from drift_gate.training.pipeline import train_backbone

    dist = _local(dist, device)
    prof = profile_from(profile, profiles)
    chosen = tuple(backbones or prof.backbones)
    for arch in chosen:
        get_backbone(arch)
    quiet = progress and dist.main
    dataset = load_dataset(main_first(dist, lambda: profile_data(prof, progress=quiet, log=log)))
    where = f"device {dist.device}" + (f", {dist.world} processes" if dist.enabled else "")
    log(f"profile {prof.name}: {len(dataset.samples)} images, {len(dataset.classes)} classes, {where}")
    out = {}
    for arch in chosen:
        start = time.perf_counter()
        res = train_backbone(
            prof,
            arch,
            dataset,
            dist.device,
            cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
            progress=quiet,
            force=force,
            log=log,
            dist=dist,
            precision=precision,
            keep_epochs=keep_epochs,
        )
        out[arch] = res.timed(time.perf_counter() - start)
    return out


@dataclass(frozen=True)
class Export:
    """One exported model: its path and the parity check on the audit images."""

    path: Path
    parity: Parity


def export(
    *,
    checkpoints: Sequence[PathLike] = (),
    profile: str | Profile | None = None,
    profiles: PathLike = "profiles.toml",
    backbones: Sequence[str] | None = None,
    data: PathLike | None = None,
    model: PathLike | ModelSpec | None = None,
    baselines: PathLike | None = None,
    per_class: int = 10,
    tolerance: float = 1e-4,
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = False,
    log: Log = quiet,
) -> list[Export]:
    """Exports checkpoints to ONNX (``<stem>.onnx`` beside each), checked for parity with
    torch on the baseline's audit images (or ``per_class`` test images without one)."""
    from drift_gate.data.datasets import ImageDataset, load_dataset
    from drift_gate.gating.audit import AuditSet, build_audit_set, build_multilabel_audit_set
    from drift_gate.gating.multilabel import is_multilabel
    from drift_gate.models.adapters import load_model
    from drift_gate.models.export import export_onnx
    from drift_gate.models.inference import resolve_device

    spec = spec_from(model)
    chosen = [Path(c) for c in checkpoints]
    given = set(chosen)
    source = None if data is None else Path(data)
    root = Path("baselines") if baselines is None else Path(baselines)
    if profile is not None:
        prof = profile_from(profile, profiles)
        root = prof.baselines_folder() if baselines is None else root
        source = source or profile_data(prof, progress=progress, log=log)
        for arch in backbones or prof.backbones:
            for phase in ("tl", "ft"):
                ckpt = Path(prof.out) / arch / f"{phase}.pt"
                if not ckpt.is_file():
                    raise missing_checkpoint(ckpt, prof)
                chosen.append(ckpt)
    if not chosen:
        raise ConfigError("nothing to export: give --checkpoint CKPT or --profile NAME")
    if source is None:
        raise ConfigError("--data is required (the audit images the parity is checked on)")
    if not tolerance >= 0:
        raise ConfigError(f"--tolerance must be >= 0, got {tolerance}")
    torch_device = resolve_device(device)
    out = []
    for ckpt in chosen:
        ckpt_spec = spec if ckpt in given else None
        _, meta = load_model(ckpt, ckpt_spec)
        audit_file = root / meta.arch / "audit.json"
        multilabel = is_multilabel(meta)
        if audit_file.is_file():
            audit = AuditSet.from_json(audit_file.read_text(encoding="utf-8"))
        elif multilabel:
            data_set = load_dataset(source, meta.classes, multilabel=True)
            audit = build_multilabel_audit_set(data_set, per_class)
        else:
            audit = build_audit_set(load_dataset(source, meta.classes), per_class)
        samples = audit.resolve(source, meta.classes, multilabel=multilabel)
        ds = ImageDataset(
            samples, meta.input_size, meta.mean, meta.std, cache=False, preprocess=meta.preprocess
        )
        path, par = export_onnx(
            ckpt,
            ds,
            tolerance=tolerance,
            device=torch_device,
            batch_size=batch_size,
            audit_sha256=audit.sha256,
            spec=ckpt_spec,
        )
        out.append(Export(path, par))
    return out


def keygen(*, out: PathLike) -> tuple[Path, Path]:
    """Makes an Ed25519 key pair for signed baselines: ``<out>.key`` (private, mode 0600;
    keep it secret, e.g. as a CI secret) and ``<out>.pub`` (commit it, or configure it).
    Returns both paths."""
    from drift_gate.gating.signing import generate_keys

    return generate_keys(Path(out))


def bundle(
    *,
    result: PathLike = "reports/gate.json",
    out: PathLike | None = None,
    candidate: str | None = None,
    signing_key: PathLike | None = None,
) -> list[Path]:
    """Writes a change-control evidence bundle per candidate of a gate result
    (:mod:`drift_gate.integrations.bundle`): into the folder ``out`` (default: the
    result's), or to the file ``out`` (``.tar``) for one candidate. With a signing key
    (``signing_key`` or ``DRIFT_GATE_SIGNING_KEY``) its manifest is signed. Returns the
    bundles' paths."""
    from drift_gate.gating import signing
    from drift_gate.integrations.bundle import make_bundles

    signer = signing.signing_key(signing_key)
    return make_bundles(Path(result), None if out is None else Path(out), candidate, signer)


def verify_bundle(*, path: PathLike, public_key: PathLike | None = None) -> BundleCheck:
    """Checks a bundle written by :func:`bundle`: every file against its manifest and, with
    a public key (``public_key`` or ``DRIFT_GATE_PUBLIC_KEY``), the manifest's signature.

    Raises:
        BundleMismatchError: a file was changed, added or removed, or the signature fails.
    """
    from drift_gate.gating import signing
    from drift_gate.integrations.bundle import verify_bundle as check

    return check(Path(path), signing.public_key(public_key))


def phantoms(
    *,
    out: PathLike = "data/phantoms",
    n_per_class: int = 100,
    size: int = 256,
    seed: int = 0,
    shortcut: float | None = None,
    occult: float = 0.0,
    progress: bool = False,
) -> Path:
    """Writes the embedded phantom data set (images, masks, ``manifest.csv``); returns the manifest."""
    from drift_gate.data.phantom_set import generate_dataset

    return generate_dataset(
        Path(out), n_per_class, seed=seed, size=size, progress=progress, shortcut=shortcut, occult=occult
    )
