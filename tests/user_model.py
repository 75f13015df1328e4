"""A user's own model class, imported by name by ``arch = "python:user_model:<factory>"``."""

from __future__ import annotations

import torch
from torch import nn


class SmallNet(nn.Module):
    """Two conv stages, global pooling and a linear head (``outputs`` logits)."""

    def __init__(self, outputs: int = 5, channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 8, 3, 2, 1), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.head = nn.Linear(16, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


def small_net(outputs: int = 5, channels: int = 3) -> SmallNet:
    return SmallNet(outputs, channels)


def not_a_module() -> str:
    return "a string"


def small_net_v2(outputs: int = 5, channels: int = 3) -> SmallNet:
    """Another team's factory with the same layers (its weights load into either)."""
    return SmallNet(outputs, channels)
