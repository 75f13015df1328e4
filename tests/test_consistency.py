"""Intra-class consistency: the metric, and the gate, study and track reports carrying it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drift_gate.evidence.metrics import intra_class_consistency
from gatekit import gate, result


def test_identical_maps_are_fully_consistent_and_unrelated_ones_less() -> None:
    rng = np.random.default_rng(0)
    same = np.repeat(rng.random((1, 4, 4)), 3, axis=0)
    noise = rng.random((3, 4, 4))
    maps = np.concatenate([same, noise, np.zeros((1, 4, 4))])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    out = intra_class_consistency(maps, labels, np.ones(7, bool), ["a", "b", "c"])
    assert out["a"] == {"mean": pytest.approx(1.0), "n": 3}
    assert 0 < out["b"]["mean"] < 0.9 and out["b"]["n"] == 3, "the constant map is left out"
    assert out["c"] == {"mean": None, "n": 0}
    assert out["overall"]["mean"] == pytest.approx((1.0 + out["b"]["mean"]) / 2)
    chosen = intra_class_consistency(maps, labels, np.array([1, 1, 0, 1, 1, 1, 1], bool), ["a", "b", "c"])
    assert chosen["a"]["n"] == 2, "only selected samples count"


def test_the_gate_reports_consistency_of_reference_and_candidate(env: dict[str, Path]) -> None:
    gate(env, env["ft"])
    c = result(env)["candidates"][0]
    for method in ("layercam", "gradcam++"):
        k = c["consistency"][method]
        assert set(k) == {"reference", "candidate"}
        assert k["candidate"]["overall"]["n"] <= c["n_selected"]
        for side in k.values():
            assert side["overall"]["mean"] is None or 0 <= side["overall"]["mean"] <= 1
    assert "intra-class consistency" in (env["reports"] / "gate.md").read_text()
    assert "intra-class consistency" in (env["reports"] / "gate.html").read_text()
