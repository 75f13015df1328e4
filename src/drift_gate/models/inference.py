"""Batched inference: the device to run on, and a function over a data set in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from drift_gate.data.datasets import Images
from drift_gate.errors import ConfigError

__all__ = ["predict", "resolve_device"]


def progress_bar(iterable: Any, **kwargs: Any) -> Any:
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


@torch.inference_mode()
def collect(
    fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: Images,
    device: torch.device,
    batch_size: int,
    progress: bool,
    desc: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn`` over the data set in batches, in order; returns outputs and labels."""
    outs, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, y in progress_bar(loader, desc=desc, disable=not progress):
        outs.append(fn(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


def predict(
    model: torch.nn.Module,
    dataset: Images,
    device: torch.device,
    batch_size: int,
    progress: bool = False,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for a data set, in eval mode."""
    model.eval()
    logits, labels = collect(model, dataset, device, batch_size, progress, desc)
    return logits.numpy(), labels.numpy()
