"""Shared fixtures: a tiny phantom data set, RNG isolation, two CPU threads."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from drift_gate.data.datasets import DataSet, load_dataset
from drift_gate.data.phantom_set import generate_dataset
from drift_gate.training.profiles import PhaseConfig, PretrainConfig, Profile

# Under pytest-xdist (`nox -s tests` runs one worker per core) each worker takes one
# thread, so the workers do not compete for the cores; alone, the suite takes two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


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
    from gatekit import TINY_TRAINING, train_tiny

    out = tmp_path_factory.mktemp("ck")
    profile = dataclasses.replace(TINY_TRAINING, out=str(out))
    train_tiny(profile, phantom_data, out / "cache")
    return out / "tiny"


@pytest.fixture()
def env(tmp_path: Path, trained: Path, phantom_root: Path) -> dict[str, Path]:
    """A fresh baselines folder made from the TL checkpoint, and a thresholds file."""
    from gatekit import make_env

    return make_env(tmp_path, phantom_root, trained / "tl.pt", trained / "ft.pt")


#: test ids in collection order (under xdist: as the workers collected them)
_COLLECTED: list[str] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    _COLLECTED[:] = [item.nodeid for item in session.items]


def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    if not _COLLECTED:
        _COLLECTED[:] = ids


def pytest_testnodedown(node: Any, error: object) -> None:
    """A worker's error messages come back to the controller, which checks the page."""
    from gatekit import RECORDED

    rows = getattr(node, "workeroutput", {}).get("failure_modes")
    if rows:
        RECORDED.extend(tuple(r) for r in json.loads(rows))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """docs/reference/failure-modes.md must list what the error tests print: a run that
    saw a message the page does not have (or a different one) fails, and says how to
    regenerate it; ``DRIFT_GATE_WRITE_DOCS=1`` writes the page instead. Rows are in
    collection order, however the tests were spread over workers."""
    from gatekit import FAILURE_MODES, RECORDED, failure_modes_page, parse_failure_modes

    if hasattr(session.config, "workeroutput"):  # an xdist worker: the controller checks
        session.config.workeroutput["failure_modes"] = json.dumps(RECORDED)
        return
    if not RECORDED:
        return
    order = {nodeid: i for i, nodeid in enumerate(_COLLECTED)}
    RECORDED.sort(key=lambda row: order.get(row[0], len(order)))
    if os.environ.get("DRIFT_GATE_WRITE_DOCS"):
        FAILURE_MODES.write_text(failure_modes_page(RECORDED), encoding="utf-8")
        return
    committed = (
        parse_failure_modes(FAILURE_MODES.read_text(encoding="utf-8")) if FAILURE_MODES.is_file() else []
    )
    stale = [row for row in RECORDED if row not in committed]
    ran = set(_COLLECTED)
    gone = [
        row
        for row in committed
        if row[0].split("::")[0] in {i.split("::")[0] for i in ran} and row[0] not in ran
    ]
    if (stale or (gone and not session.config.option.keyword)) and exitstatus == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        shown = [f"  {t}: {m}" for t, _, m in stale[:5]] + [
            f"  (no longer a test) {t}" for t, _, _ in gone[:5]
        ]
        if reporter is not None:
            reporter.write_line(
                f"{FAILURE_MODES.name} is stale ({len(stale)} new or changed, {len(gone)} gone); "
                "regenerate it with `nox -s docs`:\n" + "\n".join(shown),
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
