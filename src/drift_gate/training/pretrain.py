"""Synthetic pretraining: a body trained on the phantom source task, cached."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from drift_gate._io import atomic_write_bytes, code_sha256
from drift_gate._memory import TRAIN, allocator_policy
from drift_gate.data.phantom_set import render_source_set
from drift_gate.data.phantoms import SOURCE_LABELS
from drift_gate.models.backbones import build_classifier, get_backbone
from drift_gate.models.inference import progress_bar
from drift_gate.training.loops import (
    Log,
    log_stderr,
    seed_all,
    state_bytes,
    to_training_layout,
    training_batch,
    training_layout,
)
from drift_gate.training.profiles import PretrainConfig

__all__ = ["pretrain_synthetic"]


def _source_images(
    cfg: PretrainConfig, size: int, cache_dir: Path, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    code = code_sha256(("data/phantoms.py", "data/phantom_set.py"))
    # the source images depend on their seed, count and size only (not on how they are learnt)
    key = hashlib.sha256(f"{cfg.seed}|{cfg.images}|{size}|{code}".encode()).hexdigest()[:16]
    path = cache_dir / f"source-{key}.npz"
    if path.is_file():
        with np.load(path) as npz:
            return torch.from_numpy(npz["x"]), torch.from_numpy(npz["y"])
    x, y = render_source_set(cfg.seed, cfg.images, size, progress)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y)
    atomic_write_bytes(path, buf.getvalue())
    return torch.from_numpy(x), torch.from_numpy(y)


def _schedule(opt: torch.optim.Optimizer, name: str, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate over ``steps`` optimiser steps (stepped after each)."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def pretrain_synthetic(
    arch: str,
    cfg: PretrainConfig,
    input_size: int,
    cache_dir: Path,
    *,
    device: torch.device,
    batch_size: int,
    output_stride: int | None = None,
    progress: bool = False,
    log: Log = log_stderr,
) -> Path:
    """Pretrains a body on the phantom source task (multi-label); cached on disk.

    The source task (:func:`drift_gate.phantoms.render_source_sample`) asks which
    finding textures are present and in which zones and lungs, independently of
    the five target classes, so the TL phase starts from features that respond
    to opacities and their position rather than from random filters.

    The body is built with ``output_stride`` (``None``: the backbone's own), as the TL
    and FT phases build it, so its filters are trained at the grid they will run at.

    Returns:
        Path of a file holding ``{"body": state_dict}``.
    """
    size = cfg.size_for(input_size)
    # keyed by the settings and by the code that makes it (changed code never reuses it)
    stride = "" if output_stride is None else f"|os{output_stride}"
    settings = f"{arch}{stride}|{json.dumps(cfg.key(), sort_keys=True)}|{size}|{code_sha256()}"
    key = hashlib.sha256(settings.encode()).hexdigest()[:16]
    path = cache_dir / f"synthetic-{arch}-{key}.pt"
    if path.is_file():
        log(f"  synthetic pretraining: cached ({path})")
        return path
    log(f"  synthetic pretraining of {arch}: {cfg.images} source images at {size}px, {cfg.epochs} epoch(s)")
    allocator_policy(TRAIN)
    began = time.perf_counter()
    x, y = _source_images(cfg, size, cache_dir, progress)
    spec = get_backbone(arch)
    mean = torch.tensor(spec.imagenet_norm[0]).view(1, 3, 1, 1)
    std = torch.tensor(spec.imagenet_norm[1]).view(1, 3, 1, 1)
    seed_all(cfg.seed)
    layout = training_layout(output_stride)
    model = to_training_layout(
        build_classifier(arch, len(SOURCE_LABELS), output_stride=output_stride), device, layout
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    starts = range(0, len(x) - batch_size + 1, batch_size)  # each epoch's batches (full ones only)
    schedule = _schedule(opt, cfg.schedule, len(starts) * cfg.epochs)
    for epoch in range(cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        order = torch.randperm(len(x), generator=gen)
        model.train()
        bar = progress_bar(starts, desc=f"pretrain {epoch + 1}/{cfg.epochs}", disable=not progress)
        for first in bar:
            idx = order[first : first + batch_size]
            xb = (x[idx].float().div(255).unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.binary_cross_entropy_with_logits(
                model(training_batch(xb, device, layout)), y[idx].to(device)
            )
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    atomic_write_bytes(
        path, state_bytes({"body": {k: v.cpu().contiguous() for k, v in model.body.state_dict().items()}})
    )
    log(f"  synthetic pretraining done in {time.perf_counter() - began:.0f}s")
    return path
