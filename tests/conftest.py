"""Shared fixtures: a tiny phantom data set, RNG isolation, two CPU threads."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from drift_gate.config import PhaseConfig, PretrainConfig, Profile
from drift_gate.data import DataSet, load_dataset
from drift_gate.phantoms import generate_dataset

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _prevent_leaking_rng() -> Iterator[None]:
    """Restores the global RNG states after each test (as torchvision's suite does)."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    yield
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 64-px phantoms per class (train 5 / val 2 / test 1... per class, stratified)."""
    root = tmp_path_factory.mktemp("phantoms")
    generate_dataset(root, n_per_class=10, seed=3, size=64, progress=False)
    return root


@pytest.fixture(scope="session")
def phantom_data(phantom_root: Path) -> DataSet:
    return load_dataset(phantom_root)


@pytest.fixture()
def tiny_profile(tmp_path: Path) -> Profile:
    """A profile that trains the tiny backbone in seconds."""
    return Profile(
        name="test",
        data="unused",
        backbones=("tiny",),
        input_size=32,
        weights="none",
        pretrain=PretrainConfig(images=32, epochs=1, scale=1.0),
        seed=0,
        batch_size=8,
        tl=PhaseConfig(epochs=4, lr=1e-2),
        ft=PhaseConfig(epochs=2, lr=1e-3),
        out=str(tmp_path / "checkpoints"),
    )
