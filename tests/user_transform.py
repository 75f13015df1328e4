"""A user's own preprocessing, as production code would have it (used by test_preprocess)."""

from __future__ import annotations

from pathlib import Path

import torch


def prepare(path: Path) -> torch.Tensor:
    """The model input for one file: here a constant, so a test can tell it was used."""
    out = torch.zeros(3, 12, 12)
    out[1] = 7.0
    return out


def wrong_shape(path: Path) -> torch.Tensor:
    return torch.zeros(1, 4, 4)
