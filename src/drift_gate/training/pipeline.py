"""Two-phase training: transfer learning (frozen body, head only) then fine-tuning.

* **TL** trains the linear head on the body's pooled activations, computed once
  for every split (the body is frozen, so recomputing them each epoch would only
  repeat the same forward passes).
* **FT** starts from the TL checkpoint and trains every layer at a lower
  learning rate; its state is saved after each epoch, and an interrupted run
  resumes from the last completed epoch.

Both phases keep the epoch with the best validation macro one-vs-rest AUC and
write ``<out>/<arch>/{tl,ft}.pt`` and ``{tl,ft}.metrics.json``. Everything is
seeded: on the CPU, the same profile and data give the same weights.

Size: both phases with what decides whether a checkpoint is up to date (the per-phase
training key), resuming and the code stamp; the loops themselves are in
:mod:`drift_gate.training.loops`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from drift_gate._io import atomic_write_bytes, atomic_write_text, code_sha256, file_sha256
from drift_gate._machine import machine as machine_record
from drift_gate._memory import TRAIN, allocator_policy
from drift_gate.data.datasets import DataSet, ImageDataset
from drift_gate.distributed import Dist, barrier, main_first
from drift_gate.errors import CheckpointError, ConfigError, DataError
from drift_gate.evidence.classification import classification_metrics
from drift_gate.models.backbones import Classifier, build_classifier, get_backbone
from drift_gate.models.checkpoint import CheckpointMeta, library_versions, load_checkpoint, save_checkpoint
from drift_gate.models.inference import predict
from drift_gate.models.layers import find_layer
from drift_gate.models.weights import load_body_weights
from drift_gate.training.loops import (
    Log,
    broadcast,
    finetune,
    head_metrics,
    log_stderr,
    seed_all,
    sharded_features,
    train_head,
    training_layout,
)
from drift_gate.training.pretrain import pretrain_synthetic
from drift_gate.training.profiles import PhaseConfig, Profile

__all__ = ["TrainResult", "finetune_from", "train_backbone"]


@dataclass(frozen=True)
class TrainResult:
    """Checkpoint paths and metrics of one backbone's two phases (and the wall time, in
    seconds, when the caller measured it)."""

    arch: str
    checkpoints: dict[str, Path]
    metrics: dict[str, dict[str, Any]]
    seconds: float | None = None

    def timed(self, seconds: float) -> TrainResult:
        """The same result with its wall time."""
        return replace(self, seconds=seconds)


def _write_phase(
    out: Path, phase: str, model: Classifier, meta: CheckpointMeta, history: list[float]
) -> Path:
    path = out / f"{phase}.pt"
    save_checkpoint(path, model, meta)
    atomic_write_text(
        out / f"{phase}.metrics.json",
        json.dumps(
            {
                "arch": meta.arch,
                "phase": phase,
                "best_epoch": meta.epoch,
                "val_auc_history": history,
                **meta.metrics,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n",
    )
    return path


_CODE_STAMP = "code.json"


def _code_stamp(path: Path) -> str | None:
    """The training code's hash recorded for the checkpoint ``path`` (beside it, in
    ``code.json``; kept out of the checkpoint so that its bytes, and the baselines that
    record them, do not change with code that does not change the weights)."""
    try:
        stamp = json.loads((path.parent / _CODE_STAMP).read_text())
    except (OSError, ValueError):
        return None
    value = stamp.get(path.name) if isinstance(stamp, dict) else None
    return value if isinstance(value, str) else None


def _record_code(path: Path, code: str) -> None:
    stamps: dict[str, str] = {}
    try:
        loaded = json.loads((path.parent / _CODE_STAMP).read_text())
        stamps = {k: v for k, v in loaded.items() if isinstance(v, str)} if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass
    stamps[path.name] = code
    atomic_write_text(path.parent / _CODE_STAMP, json.dumps(stamps, indent=2, sort_keys=True) + "\n")


def _up_to_date(
    path: Path, config_sha256: str, device: torch.device, code: str | None = None
) -> tuple[Classifier, CheckpointMeta] | None:
    """The checkpoint at ``path`` if it was trained with this configuration (and, with
    ``code``, by this training code)."""
    if not path.is_file() or (code is not None and _code_stamp(path) != code):
        return None
    try:
        model, meta = load_checkpoint(path, device)
    except CheckpointError:
        return None
    return (model, meta) if meta.config_sha256 == config_sha256 else None


@dataclass
class _Run:
    """What both phases of one backbone's training share."""

    profile: Profile
    arch: str
    data: DataSet
    dist: Dist
    out: Path
    keys: dict[str, str]  # phase -> Profile.training_key
    sets: dict[str, ImageDataset]
    progress: bool
    log: Log

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def meta(self, phase: str, epoch: int, metrics: dict[str, Any]) -> CheckpointMeta:
        """The metadata of a checkpoint of this run."""
        mean, std = get_backbone(self.arch).imagenet_norm
        p = self.profile
        return CheckpointMeta(
            arch=self.arch,
            classes=self.data.classes,
            input_size=p.input_size_for(self.arch),
            mean=mean,
            std=std,
            phase=phase,
            seed=p.seed,
            data_manifest_sha256=self.data.manifest_sha256,
            weights=p.weights,
            metrics=metrics,
            config_sha256=self.keys[phase],
            epoch=epoch,
            preprocess=p.preprocess,
            target_layer=p.target_layer_for(self.arch),
            output_stride=p.output_stride_for(self.arch),
            machine=machine_record(self.device),
        )


def _tl_phase(run: _Run, cache_dir: Path) -> tuple[Classifier, CheckpointMeta]:
    """The head on the frozen body's features, computed once; writes ``tl.pt``."""
    profile, arch, device, bs = run.profile, run.arch, run.device, run.profile.batch_size
    size = profile.input_size_for(arch)
    run.log(f"[{arch}] TL: frozen body, head on cached features ({size}px, weights={profile.weights})")
    seed_all(profile.seed)
    model = build_classifier(
        arch,
        len(run.data.classes),
        imagenet=profile.weights == "imagenet",
        output_stride=profile.output_stride_for(arch),
    )
    if profile.weights == "synthetic":
        # rank 0 pretrains (or finds the cache); the others then load the cached result
        state = main_first(
            run.dist,
            lambda: pretrain_synthetic(
                arch,
                profile.pretrain,
                size,
                cache_dir,
                device=device,
                batch_size=bs,
                output_stride=profile.output_stride_for(arch),
                progress=run.progress,
                log=run.log,
            ),
        )
        load_body_weights(model.body, state)
    elif profile.weights not in ("imagenet", "none"):
        load_body_weights(model.body, Path(profile.weights))
    model.to(device)
    tick = time.perf_counter()
    feats = {
        s: sharded_features(run.dist, model, ds, device, bs, run.progress, f"features {s}")
        for s, ds in run.sets.items()
    }
    cfg = profile.phase_for(arch, "tl")
    epoch, history = train_head(
        model,
        feats["train"],
        feats["val"],
        cfg,
        batch_size=bs,
        seed=profile.seed,
        classes=run.data.classes,
        progress=run.progress,
    )
    broadcast(run.dist, model.head)  # every rank continues from rank 0's head
    model.to(device)
    metrics = {s: head_metrics(model.head.cpu(), *feats[s], run.data.classes) for s in ("val", "test")}
    model.to(device)
    meta = run.meta("tl", epoch, metrics)
    if run.dist.main:
        _write_phase(run.out, "tl", model, meta, history)
    barrier(run.dist)
    run.log(
        f"[{arch}] TL done: val macro AUC {metrics['val']['auc_macro']:.4f}, "
        f"test {metrics['test']['auc_macro']:.4f} (epoch {epoch + 1}; features and head "
        f"{time.perf_counter() - tick:.0f}s)"
    )
    return model, meta


def _ft_phase(run: _Run, model: Classifier, precision: str, keep_epochs: bool) -> CheckpointMeta:
    """Every layer from the TL weights, resumable; writes ``ft.pt`` (and, with
    ``keep_epochs``, ``ft.epoch<k>.pt``)."""
    profile, arch, device, bs, out = run.profile, run.arch, run.device, run.profile.batch_size, run.out
    cfg = profile.phase_for(arch, "ft")
    run.log(f"[{arch}] FT: all layers from the TL checkpoint, lr {cfg.lr:g}")
    seed_all(profile.seed + 1)
    resume = out / "ft.resume.pt"

    def keep(epoch: int, auc: float) -> None:
        """One checkpoint per epoch, for `drift-gate track` (1-based file names)."""
        save_checkpoint(
            out / f"ft.epoch{epoch + 1}.pt", model, run.meta("ft", epoch, {"val": {"auc_macro": auc}})
        )

    epoch, history = finetune(
        model,
        run.sets["train"],
        run.sets["val"],
        cfg=cfg,
        batch_size=bs,
        seed=profile.seed,
        device=device,
        resume=resume,
        config_sha256=run.keys["ft"],
        classes=run.data.classes,
        progress=run.progress,
        log=run.log,
        dist=run.dist,
        precision=precision,
        on_epoch=keep if keep_epochs else None,
        layout=training_layout(profile.output_stride_for(arch)),
    )
    metrics = {}
    for s in ("val", "test"):
        logits, labels = predict(model, run.sets[s], device, bs)
        metrics[s] = classification_metrics(logits, labels, run.data.classes)
    meta = run.meta("ft", epoch, metrics)
    if run.dist.main:
        _write_phase(out, "ft", model, meta, history)
        resume.unlink(missing_ok=True)
    barrier(run.dist)
    run.log(
        f"[{arch}] FT done: val macro AUC {metrics['val']['auc_macro']:.4f}, "
        f"test {metrics['test']['auc_macro']:.4f} (epoch {epoch + 1})"
    )
    return meta


def _pinned(pinned: Path, copy: Path, config_sha256: str, run: _Run) -> tuple[Classifier, CheckpointMeta]:
    """The pinned TL checkpoint, copied to ``copy`` (``<out>/<arch>/tl.pt``) byte for byte;
    refused when it was trained with other settings or data than the profile's."""
    model, meta = load_checkpoint(pinned, run.device)
    if meta.config_sha256 != config_sha256 or meta.phase != "tl" or meta.arch != run.arch:
        raise CheckpointError(
            f"{pinned}: the pinned reference was not trained with profile {run.profile.name!r}'s "
            f"settings and data for {run.arch} (its TL settings, data or code changed since); a "
            f"maintainer re-makes it by deleting it and running `drift-gate train --profile "
            f"{run.profile.name}`, then re-makes and commits its baseline"
        )
    data = pinned.read_bytes()
    if run.dist.main and (not copy.is_file() or copy.read_bytes() != data):
        atomic_write_bytes(copy, data)
    barrier(run.dist)
    run.log(
        f"[{run.arch}] TL: the pinned reference {pinned} (sha256 {file_sha256(pinned)[:12]}…), not trained"
    )
    return model, meta


def _check_target_layer(profile: Profile, arch: str, n_classes: int) -> None:
    """A profile's target layer is located on the untrained model before any training, so
    a wrong path fails in a second rather than after the run."""
    layer = profile.target_layer_for(arch)
    if layer is None:
        return
    try:
        find_layer(
            build_classifier(arch, n_classes, output_stride=profile.output_stride_for(arch)),
            layer,
            profile.input_size_for(arch),
            profile.preprocess.channels,
        )
    except ConfigError as exc:
        raise ConfigError(f"profile {profile.name!r}: per_backbone.{arch}.target_layer: {exc}") from None


def train_backbone(
    profile: Profile,
    arch: str,
    data: DataSet,
    device: torch.device,
    *,
    cache_dir: Path,
    progress: bool = True,
    force: bool = False,
    log: Log = log_stderr,
    dist: Dist | None = None,
    precision: str = "fp32",
    keep_epochs: bool = False,
    phases: tuple[str, ...] = ("tl", "ft"),
) -> TrainResult:
    """Runs TL then FT for one backbone and writes both checkpoints (``phases=("tl",)``:
    the TL checkpoint only).

    A phase whose checkpoint already exists for the same profile and data is
    skipped (so a rerun after an interruption continues where it stopped).

    Under ``torchrun`` (``dist``): features are computed batch-wise across the
    ranks and gathered, the head is trained on every rank and rank 0's copy
    broadcast, fine-tuning runs with DistributedDataParallel (:func:`finetune`),
    and only rank 0 writes files and logs.
    """
    dist = dist or Dist(0, 1, device)
    if not dist.main:
        progress, log = False, lambda message: None
    allocator_policy(TRAIN)
    spec = get_backbone(arch)
    out = Path(profile.out) / arch
    size = profile.input_size_for(arch)
    mean, std = spec.imagenet_norm
    keys = {"tl": profile.training_key(arch, "tl", data.manifest_sha256)}
    _check_target_layer(profile, arch, len(data.classes))
    if dist.main:
        atomic_write_text(out / "profile.json", json.dumps(asdict(profile), indent=2, sort_keys=True) + "\n")
    pre = profile.preprocess
    sets = {s: ImageDataset(data.split(s), size, mean, std, preprocess=pre) for s in ("train", "val", "test")}
    run = _Run(profile, arch, data, dist, out, keys, sets, progress, log)
    paths, metrics = {}, {}
    code = code_sha256()
    pinned = profile.pinned_tl(arch)
    current = None if force else _up_to_date(out / "tl.pt", keys["tl"], dist.device, code)
    if pinned is not None and pinned.is_file():
        current = _pinned(pinned, out / "tl.pt", keys["tl"], run)
    elif current is not None:
        log(f"[{arch}] TL checkpoint is up to date ({out / 'tl.pt'}); skipping")
    if current is not None:
        model, tl_meta = current
    else:
        model, tl_meta = _tl_phase(run, cache_dir)
        if dist.main:
            _record_code(out / "tl.pt", code)
            if pinned is not None:
                atomic_write_bytes(pinned, (out / "tl.pt").read_bytes())
                log(
                    f"[{arch}] made the pinned reference {pinned}: commit it with the baseline made "
                    "from it (`drift-gate baseline --reference "
                    f"{pinned} --data {profile.data_dir if profile.data == 'phantoms' else profile.data} "
                    f"--out {profile.baselines_folder() / arch}`)"
                )
    paths["tl"], metrics["tl"] = out / "tl.pt", tl_meta.metrics
    if "ft" not in phases:
        return TrainResult(arch, paths, metrics)
    # the FT weights descend from these TL bytes (a re-made pinned reference retrains them)
    keys["ft"] = profile.training_key(arch, "ft", data.manifest_sha256, precision, file_sha256(out / "tl.pt"))
    current = None if force or current is None else _up_to_date(out / "ft.pt", keys["ft"], dist.device, code)
    if current is not None:
        ft_meta = current[1]
        log(f"[{arch}] FT checkpoint is up to date ({out / 'ft.pt'}); skipping")
    else:
        ft_meta = _ft_phase(run, model, precision, keep_epochs)
        if dist.main:
            _record_code(out / "ft.pt", code)
    paths["ft"], metrics["ft"] = out / "ft.pt", ft_meta.metrics
    return TrainResult(arch, paths, metrics)


def finetune_from(
    reference: Path,
    data: DataSet,
    cfg: PhaseConfig,
    *,
    out: Path,
    seed: int,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
    log: Log = log_stderr,
    machine: str | None = None,
) -> Path:
    """Fine-tunes every layer of checkpoint ``reference`` (normally a TL one) on
    ``data`` with ``seed`` and writes checkpoint ``out`` (phase ``ft``). ``machine``
    names the emulated machine it runs under (:mod:`drift_gate.studies.machines`), so a
    checkpoint made under another is not taken for this one.

    This is :func:`train_backbone`'s FT phase for a given starting point, seed and
    data set: the controls and ``drift-gate calibrate`` use it for seed-to-seed
    runs and for the planted-shortcut candidate. A checkpoint already at ``out``
    for the same reference, data, settings and seed is kept; an interrupted run
    resumes from ``<out>.resume.pt``.
    """
    out = Path(out)
    settings = {
        "reference": file_sha256(reference),
        "data": data.manifest_sha256,
        "cfg": asdict(cfg),
        "seed": seed,
        "batch_size": batch_size,
        **({} if machine is None else {"machine": machine}),
    }
    config_sha = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if _up_to_date(out, config_sha, device) is not None:
        log(f"  {out} is up to date; skipping")
        return out
    allocator_policy(TRAIN)
    model, ref_meta = load_checkpoint(reference, device)
    if tuple(data.classes) != tuple(ref_meta.classes):
        raise DataError(
            f"data classes {list(data.classes)} differ from {reference}'s {list(ref_meta.classes)}"
        )
    sets = {
        s: ImageDataset(
            data.split(s), ref_meta.input_size, ref_meta.mean, ref_meta.std, preprocess=ref_meta.preprocess
        )
        for s in ("train", "val", "test")
    }
    seed_all(seed + 1)
    resume = out.with_name(out.name + ".resume.pt")
    epoch, _ = finetune(
        model,
        sets["train"],
        sets["val"],
        cfg=cfg,
        batch_size=batch_size,
        seed=seed,
        device=device,
        resume=resume,
        config_sha256=config_sha,
        classes=data.classes,
        progress=progress,
        log=log,
        layout=training_layout(ref_meta.output_stride),
    )
    metrics = {
        s: classification_metrics(*predict(model, sets[s], device, batch_size), data.classes)
        for s in ("val", "test")
    }
    meta = replace(
        ref_meta,
        phase="ft",
        seed=seed,
        data_manifest_sha256=data.manifest_sha256,
        metrics=metrics,
        config_sha256=config_sha,
        epoch=epoch,
        versions=library_versions(),
        machine=machine_record(device),
    )
    save_checkpoint(out, model, meta)
    resume.unlink(missing_ok=True)
    return out
