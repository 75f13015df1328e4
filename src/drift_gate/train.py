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
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ._io import atomic_write_bytes, atomic_write_text, file_sha256
from .backbones import Classifier, build_classifier, get_backbone
from .cam import autocast
from .checkpoint import CheckpointMeta, library_versions, load_checkpoint, save_checkpoint
from .classification import classification_metrics
from .config import PhaseConfig, PretrainConfig, Profile
from .data import DataSet, ImageDataset
from .distributed import Dist, barrier, gather_shards, global_batchnorm, in_order, main_first
from .errors import CheckpointError, ConfigError, DataError
from .phantoms import SOURCE_LABELS, render_source_set
from .weights import load_body_weights

__all__ = [
    "TrainResult",
    "extract_features",
    "finetune_from",
    "predict",
    "pretrain_synthetic",
    "resolve_device",
    "train_backbone",
]

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _tqdm(iterable: Any, **kwargs: Any) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when available; otherwise the named device.

    Raises:
        ConfigError: ``cuda`` requested without a usable GPU, or an unknown name.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    return device


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.inference_mode()
def _collect(
    fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: ImageDataset,
    device: torch.device,
    batch_size: int,
    progress: bool,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn`` over the data set in batches, in order; returns outputs and labels."""
    outs, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, y in _tqdm(loader, desc=desc, disable=not progress):
        outs.append(fn(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def predict(
    model: Classifier,
    dataset: ImageDataset,
    device: torch.device,
    batch_size: int,
    progress: bool = False,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for a data set, in eval mode."""
    model.eval()
    logits, labels = _collect(model, dataset, device, batch_size, progress, desc)
    return logits.numpy(), labels.numpy()


def extract_features(
    model: Classifier,
    dataset: ImageDataset,
    device: torch.device,
    batch_size: int,
    progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled body activations ``(N, C)`` and labels, computed once in eval mode."""
    model.eval()
    return _collect(lambda x: model.body(x).mean(dim=(2, 3)), dataset, device, batch_size, progress, desc)


def _sharded_features(
    dist: Dist,
    model: Classifier,
    dataset: ImageDataset,
    device: torch.device,
    batch_size: int,
    progress: bool,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extract_features`, each rank computing its batches; every rank gets all of them."""
    if not dist.enabled:
        return extract_features(model, dataset, device, batch_size, progress, desc)

    def shard(idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not idx:
            return None
        sub = torch.utils.data.Subset(dataset, list(idx))
        return extract_features(model, sub, device, batch_size, progress and dist.main, desc)  # type: ignore[arg-type]

    parts = [(i, p) for i, p in gather_shards(dist, len(dataset), batch_size, shard) if p is not None]
    return in_order(parts, lambda p: p[0]), in_order(parts, lambda p: p[1])


class _GlobalBatchSampler(torch.utils.data.Sampler[int]):
    """This rank's share of each global batch of the single-process shuffle.

    The global batches are drawn by the very ``DataLoader(shuffle=True, generator=…)``
    a single-process run uses (over indices only), so global batch k holds the same
    samples in both runs; rank r takes its ``b = G / N`` consecutive samples of it.
    With gradients averaged over the ranks, each update sees what the single-process
    update with batch size G sees.
    """

    def __init__(self, n: int, global_batch: int, dist: Dist, seed: int) -> None:
        if n < global_batch:
            raise ConfigError(f"{n} training images: fewer than one global batch of {global_batch}")
        self.n, self.global_batch, self.dist, self.seed = n, global_batch, dist, seed

    def __len__(self) -> int:
        return (self.n // self.global_batch) * (self.global_batch // self.dist.world)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed)
        b = self.global_batch // self.dist.world
        batches = DataLoader(
            TensorDataset(torch.arange(self.n)),
            batch_size=self.global_batch,
            shuffle=True,
            generator=gen,
            drop_last=self.n > self.global_batch,
        )
        for (batch,) in batches:
            yield from batch.tolist()[self.dist.rank * b : (self.dist.rank + 1) * b]


def _head_metrics(
    head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
) -> dict[str, Any]:
    with torch.inference_mode():
        logits = head(feats).numpy()
    return classification_metrics(logits, labels.numpy(), classes)


def train_head(
    model: Classifier,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    cfg: PhaseConfig,
    batch_size: int,
    seed: int,
    classes: Sequence[str],
    progress: bool = False,
) -> tuple[int, list[float]]:
    """Trains ``model.head`` on cached features; keeps the best validation epoch.

    The features are standardised for the optimisation (pooled activations of a
    frozen body can differ in scale by orders of magnitude between channels), and
    the standardisation is folded back into the linear layer afterwards, so the
    head still takes raw pooled activations: ``W' = W / s``, ``b' = b - W' m``.

    Returns:
        The best epoch (0-based) and the validation macro AUC of every epoch.
    """
    fx_train, y_train = train
    mean = fx_train.mean(0)
    scale = fx_train.std(0).clamp_min(1e-6)
    head = nn.Linear(fx_train.shape[1], model.head.out_features)
    head.load_state_dict(
        {
            "weight": model.head.weight.detach().cpu() * scale,
            "bias": model.head.bias.detach().cpu() + model.head.weight.detach().cpu() @ mean,
        }
    )
    val_std = ((val[0] - mean) / scale, val[1])
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TensorDataset((fx_train - mean) / scale, y_train), batch_size=batch_size, shuffle=True, generator=gen
    )
    best_auc, best_epoch = -1.0, -1
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    history = []
    for epoch in _tqdm(range(cfg.epochs), desc="TL head", disable=not progress):
        head.train()
        for fx, y in loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(head(fx), y).backward()  # type: ignore[no-untyped-call]
            opt.step()
        head.eval()
        auc = _head_metrics(head, *val_std, classes)["auc_macro"]
        history.append(auc)
        if auc > best_auc:
            best_auc, best_epoch = auc, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    weight = best_state["weight"] / scale
    bias = best_state["bias"] - weight @ mean
    with torch.no_grad():
        model.head.weight.copy_(weight.to(model.head.weight.device))
        model.head.bias.copy_(bias.to(model.head.bias.device))
    return best_epoch, history


def _broadcast(dist: Dist, module: nn.Module) -> None:
    """Copies rank 0's parameters and buffers of ``module`` to every rank."""
    if not dist.enabled:
        return
    import torch.distributed

    for t in [*module.parameters(), *module.buffers()]:
        data = t.data.to(dist.device)
        torch.distributed.broadcast(data, src=0)
        t.data.copy_(data)


def _state_bytes(obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def finetune(
    model: Classifier,
    train: ImageDataset,
    val: ImageDataset,
    cfg: PhaseConfig,
    batch_size: int,
    seed: int,
    device: torch.device,
    resume: Path,
    config_sha256: str,
    classes: Sequence[str],
    progress: bool = False,
    log: Log = _stderr,
    dist: Dist | None = None,
    precision: str = "fp32",
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[int, list[float]]:
    """Trains every layer; saves a resumable state after each epoch to ``resume``.

    ``on_epoch(epoch, val_auc)`` is called on rank 0 after each epoch (``train
    --keep-epochs`` saves a checkpoint there).

    ``precision="bf16"`` runs the forward pass and the loss under bfloat16 autocast
    (weights, gradients and the optimiser stay in float32; no loss scaling is needed).

    Under ``torchrun`` (``dist``) the model is wrapped in DistributedDataParallel,
    ``batch_size`` stays the *global* batch (each of N ranks takes ``batch_size / N``
    of it, see :class:`_GlobalBatchSampler`), BatchNorm statistics cover the global
    batch (SyncBatchNorm on GPUs, :class:`~drift_gate.distributed.GlobalBatchNorm2d`
    on the CPU), and only rank 0 writes the resume state.

    Shuffling is seeded per epoch, so a resumed run follows the same path as an
    uninterrupted one. The resume file is removed by the caller once the final
    checkpoint is written.

    Returns:
        The best epoch (0-based) and the validation macro AUC of every epoch.
    """
    dist = dist or Dist(0, 1, device)
    model.to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    net: nn.Module = model
    if dist.enabled:
        if batch_size % dist.world:
            raise ConfigError(f"batch_size {batch_size} must be divisible by the {dist.world} processes")
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
        else:
            global_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, []
    best_auc, best_epoch = -1.0, -1
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resume.is_file():
        try:
            state = torch.load(resume, map_location=device, weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{resume}: unreadable resume state; delete it to restart fine-tuning"
            ) from exc
        if state.get("config_sha256") == config_sha256:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start, history = int(state["epoch"]) + 1, list(state["history"])
            best_auc, best_epoch = float(state["best_auc"]), int(state["best_epoch"])
            best_state = state["best_state"]
            log(f"  resuming fine-tuning after epoch {start} of {cfg.epochs}")
        else:
            log(f"  ignoring {resume.name}: it belongs to another configuration")
    for epoch in range(start, cfg.epochs):
        tick = time.perf_counter()
        if dist.enabled:
            sampler = _GlobalBatchSampler(len(train), batch_size, dist, seed * 1009 + epoch)
            loader = DataLoader(train, batch_size=batch_size // dist.world, sampler=sampler)
        else:
            gen = torch.Generator().manual_seed(seed * 1009 + epoch)
            loader = DataLoader(
                train, batch_size=batch_size, shuffle=True, generator=gen, drop_last=len(train) > batch_size
            )
        net.train()
        bar = _tqdm(loader, desc=f"FT epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for x, y in bar:
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = nn.functional.cross_entropy(net(x.to(device)).float(), y.to(device))
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        logits, labels = predict(model, val, device, batch_size)
        auc = classification_metrics(logits, labels, classes)["auc_macro"]
        history.append(auc)
        log(
            f"  FT epoch {epoch + 1}/{cfg.epochs}: val macro AUC {auc:.4f} "
            f"({time.perf_counter() - tick:.0f}s)"
        )
        if auc > best_auc:
            best_auc, best_epoch = auc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if dist.main and on_epoch is not None:
            on_epoch(epoch, auc)
        if dist.main:
            atomic_write_bytes(
                resume,
                _state_bytes(
                    {
                        "config_sha256": config_sha256,
                        "epoch": epoch,
                        "history": history,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "best_auc": best_auc,
                        "best_epoch": best_epoch,
                        "best_state": best_state,
                    }
                ),
            )
        barrier(dist)
    if dist.enabled and device.type != "cuda":
        global_batchnorm(model, enable=False)
    model.load_state_dict(best_state)
    return best_epoch, history


def _source_images(
    cfg: PretrainConfig, size: int, cache_dir: Path, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    key = hashlib.sha256(f"{json.dumps(asdict(cfg), sort_keys=True)}|{size}".encode()).hexdigest()[:16]
    path = cache_dir / f"source-{key}.npz"
    if path.is_file():
        with np.load(path) as npz:
            return torch.from_numpy(npz["x"]), torch.from_numpy(npz["y"])
    x, y = render_source_set(cfg.seed, cfg.images, size, progress)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y)
    atomic_write_bytes(path, buf.getvalue())
    return torch.from_numpy(x), torch.from_numpy(y)


def pretrain_synthetic(
    arch: str,
    cfg: PretrainConfig,
    input_size: int,
    cache_dir: Path,
    device: torch.device,
    batch_size: int,
    progress: bool = False,
    log: Log = _stderr,
) -> Path:
    """Pretrains a body on the phantom source task (multi-label); cached on disk.

    The source task (:func:`drift_gate.phantoms.render_source_sample`) asks which
    finding textures are present and in which zones and lungs, independently of
    the five target classes, so the TL phase starts from features that respond
    to opacities and their position rather than from random filters.

    Returns:
        Path of a file holding ``{"body": state_dict}``.
    """
    size = cfg.size_for(input_size)
    key = hashlib.sha256(f"{arch}|{json.dumps(asdict(cfg), sort_keys=True)}|{size}|v1".encode()).hexdigest()[
        :16
    ]
    path = cache_dir / f"synthetic-{arch}-{key}.pt"
    if path.is_file():
        log(f"  synthetic pretraining: cached ({path})")
        return path
    log(f"  synthetic pretraining of {arch}: {cfg.images} source images at {size}px, {cfg.epochs} epoch(s)")
    began = time.perf_counter()
    x, y = _source_images(cfg, size, cache_dir, progress)
    spec = get_backbone(arch)
    mean = torch.tensor(spec.imagenet_norm[0]).view(1, 3, 1, 1)
    std = torch.tensor(spec.imagenet_norm[1]).view(1, 3, 1, 1)
    _seed_all(cfg.seed)
    model = build_classifier(arch, len(SOURCE_LABELS)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for epoch in range(cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        order = torch.randperm(len(x), generator=gen)
        model.train()
        steps = range(0, len(order) - batch_size + 1, batch_size)
        bar = _tqdm(steps, desc=f"pretrain {epoch + 1}/{cfg.epochs}", disable=not progress)
        for first in bar:
            idx = order[first : first + batch_size]
            xb = (x[idx].float().div(255).unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.binary_cross_entropy_with_logits(model(xb.to(device)), y[idx].to(device))
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    atomic_write_bytes(path, _state_bytes({"body": {k: v.cpu() for k, v in model.body.state_dict().items()}}))
    log(f"  synthetic pretraining done in {time.perf_counter() - began:.0f}s")
    return path


@dataclass(frozen=True)
class TrainResult:
    """Checkpoint paths and metrics of one backbone's two phases."""

    arch: str
    checkpoints: dict[str, Path]
    metrics: dict[str, dict[str, Any]]


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


def _up_to_date(
    path: Path, config_sha256: str, device: torch.device
) -> tuple[Classifier, CheckpointMeta] | None:
    """The checkpoint at ``path`` if it was trained with this configuration."""
    if not path.is_file():
        return None
    try:
        model, meta = load_checkpoint(path, device)
    except CheckpointError:
        return None
    return (model, meta) if meta.config_sha256 == config_sha256 else None


def train_backbone(
    profile: Profile,
    arch: str,
    data: DataSet,
    device: torch.device,
    cache_dir: Path,
    progress: bool = True,
    force: bool = False,
    log: Log = _stderr,
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
    device = dist.device
    if not dist.main:
        progress, log = False, lambda message: None
    spec = get_backbone(arch)
    out = Path(profile.out) / arch
    size = profile.input_size_for(arch)
    mean, std = spec.imagenet_norm
    classes = data.classes
    config_sha = profile.sha256(arch, data.manifest_sha256)
    if dist.main:
        atomic_write_text(out / "profile.json", json.dumps(asdict(profile), indent=2, sort_keys=True) + "\n")
    pre = profile.preprocess
    sets = {s: ImageDataset(data.split(s), size, mean, std, preprocess=pre) for s in ("train", "val", "test")}
    bs = profile.batch_size

    def meta(phase: str, epoch: int, metrics: dict[str, Any]) -> CheckpointMeta:
        return CheckpointMeta(
            arch=arch,
            classes=classes,
            input_size=size,
            mean=mean,
            std=std,
            phase=phase,
            seed=profile.seed,
            data_manifest_sha256=data.manifest_sha256,
            weights=profile.weights,
            metrics=metrics,
            config_sha256=config_sha,
            epoch=epoch,
            preprocess=pre,
        )

    paths, metrics = {}, {}
    current = None if force else _up_to_date(out / "tl.pt", config_sha, device)
    if current is not None:
        log(f"[{arch}] TL checkpoint is up to date ({out / 'tl.pt'}); skipping")
        model, tl_meta = current
    else:
        log(f"[{arch}] TL: frozen body, head on cached features ({size}px, weights={profile.weights})")
        _seed_all(profile.seed)
        model = build_classifier(arch, len(classes), imagenet=profile.weights == "imagenet")
        if profile.weights == "synthetic":
            # rank 0 pretrains (or finds the cache); the others then load the cached result
            state = main_first(
                dist,
                lambda: pretrain_synthetic(
                    arch, profile.pretrain, size, cache_dir, device, bs, progress, log
                ),
            )
            load_body_weights(model.body, state)
        elif profile.weights not in ("imagenet", "none"):
            load_body_weights(model.body, Path(profile.weights))
        model.to(device)
        tick = time.perf_counter()
        feats = {
            s: _sharded_features(dist, model, ds, device, bs, progress, f"features {s}")
            for s, ds in sets.items()
        }
        epoch, history = train_head(
            model,
            feats["train"],
            feats["val"],
            profile.phase_for(arch, "tl"),
            bs,
            profile.seed,
            classes,
            progress,
        )
        _broadcast(dist, model.head)  # every rank continues from rank 0's head
        model.to(device)
        tl_metrics = {s: _head_metrics(model.head.cpu(), *feats[s], classes) for s in ("val", "test")}
        model.to(device)
        tl_meta = meta("tl", epoch, tl_metrics)
        if dist.main:
            _write_phase(out, "tl", model, tl_meta, history)
        barrier(dist)
        log(
            f"[{arch}] TL done: val macro AUC {tl_metrics['val']['auc_macro']:.4f}, "
            f"test {tl_metrics['test']['auc_macro']:.4f} (epoch {epoch + 1}; features and head "
            f"{time.perf_counter() - tick:.0f}s)"
        )
    paths["tl"], metrics["tl"] = out / "tl.pt", tl_meta.metrics
    if "ft" not in phases:
        return TrainResult(arch, paths, metrics)

    current = None if force else _up_to_date(out / "ft.pt", config_sha, device)
    if current is not None:
        ft_meta = current[1]
        log(f"[{arch}] FT checkpoint is up to date ({out / 'ft.pt'}); skipping")
    else:
        log(f"[{arch}] FT: all layers from the TL checkpoint, lr {profile.phase_for(arch, 'ft').lr:g}")
        _seed_all(profile.seed + 1)
        resume = out / "ft.resume.pt"

        def keep(epoch: int, auc: float) -> None:
            """One checkpoint per epoch, for `drift-gate track` (1-based file names)."""
            save_checkpoint(
                out / f"ft.epoch{epoch + 1}.pt", model, meta("ft", epoch, {"val": {"auc_macro": auc}})
            )

        epoch, history = finetune(
            model,
            sets["train"],
            sets["val"],
            profile.phase_for(arch, "ft"),
            bs,
            profile.seed,
            device,
            resume,
            config_sha,
            classes,
            progress,
            log,
            dist,
            precision,
            keep if keep_epochs else None,
        )
        ft_metrics = {}
        for s in ("val", "test"):
            logits, labels = predict(model, sets[s], device, bs)
            ft_metrics[s] = classification_metrics(logits, labels, classes)
        ft_meta = meta("ft", epoch, ft_metrics)
        if dist.main:
            _write_phase(out, "ft", model, ft_meta, history)
            resume.unlink(missing_ok=True)
        barrier(dist)
        log(
            f"[{arch}] FT done: val macro AUC {ft_metrics['val']['auc_macro']:.4f}, "
            f"test {ft_metrics['test']['auc_macro']:.4f} (epoch {epoch + 1})"
        )
    paths["ft"], metrics["ft"] = out / "ft.pt", ft_meta.metrics
    return TrainResult(arch, paths, metrics)


def finetune_from(
    reference: Path,
    data: DataSet,
    cfg: PhaseConfig,
    out: Path,
    seed: int,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
    log: Log = _stderr,
) -> Path:
    """Fine-tunes every layer of checkpoint ``reference`` (normally a TL one) on
    ``data`` with ``seed`` and writes checkpoint ``out`` (phase ``ft``).

    This is :func:`train_backbone`'s FT phase for a given starting point, seed and
    data set: the controls and ``drift-gate calibrate`` use it for seed-to-seed
    runs and for the planted-shortcut candidate. A checkpoint already at ``out``
    for the same reference, data, settings and seed is kept; an interrupted run
    resumes from ``<out>.resume.pt``.
    """
    out = Path(out)
    config_sha = hashlib.sha256(
        json.dumps(
            {
                "reference": file_sha256(reference),
                "data": data.manifest_sha256,
                "cfg": asdict(cfg),
                "seed": seed,
                "batch_size": batch_size,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    if _up_to_date(out, config_sha, device) is not None:
        log(f"  {out} is up to date; skipping")
        return out
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
    _seed_all(seed + 1)
    resume = out.with_name(out.name + ".resume.pt")
    epoch, _ = finetune(
        model, sets["train"], sets["val"], cfg, batch_size, seed, device, resume, config_sha,
        data.classes, progress, log,
    )  # fmt: skip
    metrics = {}
    for s in ("val", "test"):
        logits, labels = predict(model, sets[s], device, batch_size)
        metrics[s] = classification_metrics(logits, labels, data.classes)
    meta = replace(
        ref_meta,
        phase="ft",
        seed=seed,
        data_manifest_sha256=data.manifest_sha256,
        metrics=metrics,
        config_sha256=config_sha,
        epoch=epoch,
        versions=library_versions(),
    )
    save_checkpoint(out, model, meta)
    resume.unlink(missing_ok=True)
    return out
