"""The allocator policy per stage: training under TRAIN, gates and baselines under AUDIT."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

import drift_gate._memory as memory
from drift_gate.data.datasets import DataSet
from gatekit import TINY_TRAINING, gate, make_env, train_tiny


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_both_policies() -> None:
    assert memory.allocator_policy(memory.TRAIN) and memory.allocator_policy(memory.AUDIT)


def test_each_stage_sets_its_policy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, phantom_data: DataSet, phantom_root: Path
) -> None:
    calls: list[tuple[int, int]] = []

    def record(policy: tuple[int, int]) -> bool:
        calls.append(policy)
        return True

    for module in ("training.pipeline", "training.pretrain", "gating.gate", "gating.baseline"):
        monkeypatch.setattr(f"drift_gate.{module}.allocator_policy", record)
    profile = dataclasses.replace(TINY_TRAINING, out=str(tmp_path / "ck"), weights="synthetic")
    train_tiny(profile, phantom_data, tmp_path / "cache")
    assert calls and set(calls) == {memory.TRAIN}, "pretraining, TL and FT under TRAIN"
    calls.clear()
    env = make_env(
        tmp_path, phantom_root, tmp_path / "ck" / "tiny" / "tl.pt", tmp_path / "ck" / "tiny" / "ft.pt"
    )
    assert calls == [memory.AUDIT], "the baseline under AUDIT"
    assert gate(env, env["ft"]) in (0, 1)
    assert calls == [memory.AUDIT, memory.AUDIT], "the gate under AUDIT"
