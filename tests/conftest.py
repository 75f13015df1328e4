"""Shared fixtures: a tiny phantom data set, RNG isolation, two CPU threads."""

from __future__ import annotations

import dataclasses
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


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, phantom_data: DataSet) -> Path:
    """TL and FT checkpoints of the tiny backbone (``tl.pt``, ``ft.pt``), trained once."""
    from drift_gate.train import train_backbone
    from gatekit import TINY_TRAINING

    out = tmp_path_factory.mktemp("ck")
    profile = dataclasses.replace(TINY_TRAINING, out=str(out))
    train_backbone(
        profile, "tiny", phantom_data, torch.device("cpu"), out / "cache", progress=False, log=lambda m: None
    )
    return out / "tiny"


@pytest.fixture()
def env(tmp_path: Path, trained: Path, phantom_root: Path) -> dict[str, Path]:
    """A fresh baselines folder made from the TL checkpoint, and a thresholds file."""
    from drift_gate.cli import main
    from gatekit import RULES, baseline_args

    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text(RULES.format(drift="iou.min = 0.3"))
    out = {
        "baselines": tmp_path / "baselines",
        "thresholds": thresholds,
        "reports": tmp_path / "reports",
        "data": phantom_root,
        "tl": trained / "tl.pt",
        "ft": trained / "ft.pt",
        "tmp": tmp_path,
    }
    assert main(baseline_args(out, out["tl"])) == 0
    return out
