"""The two training loops: the head on cached features (TL) and every layer (FT)."""

from __future__ import annotations

import io
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from drift_gate._io import atomic_write_bytes
from drift_gate.data.datasets import ImageDataset, Images, Rows
from drift_gate.distributed import Dist, barrier, gather_shards, global_batchnorm, in_order
from drift_gate.errors import CheckpointError, ConfigError
from drift_gate.evidence.cam import autocast
from drift_gate.evidence.classification import classification_metrics
from drift_gate.models.backbones import Classifier
from drift_gate.models.inference import collect, predict, progress_bar
from drift_gate.training.profiles import PhaseConfig

__all__ = ["extract_features", "finetune", "train_head"]


Log = Callable[[str], None]
M = TypeVar("M", bound=nn.Module)


def log_stderr(msg: str) -> None:
    """The default log: a line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def training_layout(output_stride: int | None) -> torch.memory_format:
    """The memory layout a backbone is trained in: channels-last for one built at a halved
    output stride, channels-first (PyTorch's default) otherwise.

    Channels-last took 0.98x / 1.20x / 1.12x the time of a stride-32 channels-first step at
    stride 16, against 1.24x / 1.34x / 1.33x channels-first (DenseNet201 / ResNet50V2 /
    InceptionV3, one Adam step, batch 8, 2 threads, 2026-12-06; benchmarks/bench_train_step.py),
    and 0.90x / 0.96x / 0.90x at stride 32. It gives other weights than channels-first, as
    another CPU does, so it follows from a setting that is part of every training key (the
    output stride): a checkpoint trained channels-first is never taken for a channels-last
    one, and the stride-32 profiles (the ci profile's pinned reference among them) train
    exactly as before.
    """
    return torch.channels_last if output_stride is not None else torch.contiguous_format


def to_training_layout(model: M, device: torch.device, layout: torch.memory_format) -> M:
    """``model`` on ``device`` with its 4-D weights in ``layout`` (:func:`training_layout`)."""
    return model.to(device).to(memory_format=layout)


def training_batch(x: torch.Tensor, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    """A batch of images on ``device`` in ``layout`` (:func:`training_layout`)."""
    return x.to(device, memory_format=layout)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def extract_features(
    model: Classifier,
    dataset: Images,
    device: torch.device,
    batch_size: int,
    progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled body activations ``(N, C)`` and labels, computed once in eval mode."""
    model.eval()
    return collect(lambda x: model.body(x).mean(dim=(2, 3)), dataset, device, batch_size, progress, desc)


def sharded_features(
    dist: Dist,
    model: Classifier,
    dataset: Images,
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
        return extract_features(model, Rows(dataset, idx), device, batch_size, progress and dist.main, desc)

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


def head_metrics(
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
    *,
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
    for epoch in progress_bar(range(cfg.epochs), desc="TL head", disable=not progress):
        head.train()
        for fx, y in loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(head(fx), y).backward()  # type: ignore[no-untyped-call]
            opt.step()
        head.eval()
        auc = head_metrics(head, *val_std, classes)["auc_macro"]
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


def broadcast(dist: Dist, module: nn.Module) -> None:
    """Copies rank 0's parameters and buffers of ``module`` to every rank."""
    if not dist.enabled:
        return
    import torch.distributed

    for t in [*module.parameters(), *module.buffers()]:
        data = t.data.to(dist.device)
        torch.distributed.broadcast(data, src=0)
        t.data.copy_(data)


def state_bytes(obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _wrap(
    model: Classifier, dist: Dist, device: torch.device, batch_size: int, layout: torch.memory_format
) -> nn.Module:
    """Every parameter trainable, in ``layout``; under torchrun, global-batch BatchNorm and DDP."""
    to_training_layout(model, device, layout)
    for p in model.parameters():
        p.requires_grad_(True)
    if not dist.enabled:
        return model
    if batch_size % dist.world:
        raise ConfigError(f"batch_size {batch_size} must be divisible by the {dist.world} processes")
    net: nn.Module = model
    if device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    else:
        global_batchnorm(model)
    return nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None
    )


def _epoch_loader(train: ImageDataset, batch_size: int, dist: Dist, seed: int) -> DataLoader[Any]:
    """One epoch's shuffled batches, seeded per epoch (a resumed run takes the same path)."""
    if dist.enabled:
        sampler = _GlobalBatchSampler(len(train), batch_size, dist, seed)
        return DataLoader(train, batch_size=batch_size // dist.world, sampler=sampler)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=gen, drop_last=len(train) > batch_size
    )


@dataclass
class _FineTuning:
    """Where fine-tuning stands: the next epoch, the history and the best epoch so far."""

    start: int
    history: list[float]
    best_auc: float
    best_epoch: int
    best_state: dict[str, torch.Tensor]

    def state(
        self, config_sha256: str, epoch: int, model: nn.Module, opt: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """What the resume file holds after ``epoch``."""
        return {
            "config_sha256": config_sha256,
            "epoch": epoch,
            "history": self.history,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "best_auc": self.best_auc,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
        }


def _resumed(
    resume: Path,
    config_sha256: str,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    device: torch.device,
    epochs: int,
    log: Log,
) -> _FineTuning:
    """A fresh start, or the state after the last finished epoch of the same configuration."""
    run = _FineTuning(0, [], -1.0, -1, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if not resume.is_file():
        return run
    try:
        state = torch.load(resume, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{resume}: unreadable resume state; delete it to restart fine-tuning") from exc
    if state.get("config_sha256") != config_sha256:
        log(f"  ignoring {resume.name}: it belongs to another configuration")
        return run
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    run = _FineTuning(
        int(state["epoch"]) + 1,
        list(state["history"]),
        float(state["best_auc"]),
        int(state["best_epoch"]),
        state["best_state"],
    )
    log(f"  resuming fine-tuning after epoch {run.start} of {epochs}")
    return run


def finetune(
    model: Classifier,
    train: ImageDataset,
    val: ImageDataset,
    *,
    cfg: PhaseConfig,
    batch_size: int,
    seed: int,
    device: torch.device,
    resume: Path,
    config_sha256: str,
    classes: Sequence[str],
    progress: bool = False,
    log: Log = log_stderr,
    dist: Dist | None = None,
    precision: str = "fp32",
    on_epoch: Callable[[int, float], None] | None = None,
    layout: torch.memory_format = torch.contiguous_format,
) -> tuple[int, list[float]]:
    """Trains every layer, in memory layout ``layout`` (:func:`training_layout`); saves a
    resumable state after each epoch to ``resume``.

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
    net = _wrap(model, dist, device, batch_size, layout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = _resumed(resume, config_sha256, model, opt, device, cfg.epochs, log)
    for epoch in range(run.start, cfg.epochs):
        tick = time.perf_counter()
        loader = _epoch_loader(train, batch_size, dist, seed * 1009 + epoch)
        net.train()
        bar = progress_bar(loader, desc=f"FT epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for x, y in bar:
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = nn.functional.cross_entropy(
                    net(training_batch(x, device, layout)).float(), y.to(device)
                )
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        logits, labels = predict(model, val, device, batch_size)
        auc = classification_metrics(logits, labels, classes)["auc_macro"]
        run.history.append(auc)
        log(
            f"  FT epoch {epoch + 1}/{cfg.epochs}: val macro AUC {auc:.4f} "
            f"({time.perf_counter() - tick:.0f}s)"
        )
        if auc > run.best_auc:
            run.best_auc, run.best_epoch = auc, epoch
            run.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if dist.main and on_epoch is not None:
            on_epoch(epoch, auc)
        if dist.main:
            atomic_write_bytes(resume, state_bytes(run.state(config_sha256, epoch, model, opt)))
        barrier(dist)
    if dist.enabled and device.type != "cuda":
        global_batchnorm(model, enable=False)
    model.load_state_dict(run.best_state)
    return run.best_epoch, run.history
