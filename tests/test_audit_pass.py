"""The gate's pass over the audit set: chunked, each image decoded once for every check,
and the same numbers however it is chunked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import drift_gate.data.datasets as datasets
import drift_gate.gating.audit_pass as audit_pass
from drift_gate.gating.gate import run_gate
from drift_gate.gating.thresholds import parse_thresholds
from gatekit import RULES

EVERY_CHECK = (
    RULES.format(drift="iou.min = 0.0")
    + '[sanity]\nrandomise = "head"\nmax_randomised_correlation = 1.0\nmax_class_correlation = 1.0\n'
    + "[faithfulness]\nsteps = 3\n"
    + "[counterfactual]\nborder = 0.3\nmax_score_drop = 1.0\nmin_samples = 1\n"
)


def test_chunks_decode_each_image_once_and_change_no_number(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = parse_thresholds(EVERY_CHECK, "thresholds.toml")
    decoded: list[str] = []
    real = datasets.read_image

    def counted(path: str, *args: object, **kwargs: object) -> object:
        decoded.append(str(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(datasets, "read_image", counted)

    def gated(chunk_batches: int) -> dict[str, dict[str, list[float | None]]]:
        monkeypatch.setattr(audit_pass, "CHUNK_BATCHES", chunk_batches)
        decoded.clear()
        c, _ = run_gate(env["ft"], env["baselines"], rules, env["data"], batch_size=2, use_onnx=False)
        assert len(decoded) == c.n_audit == len(set(decoded)), "every audit image decoded exactly once"
        assert {"faithfulness", "counterfactual_drop"} <= set(c.per_sample["layercam"])
        return c.per_sample

    one, many = gated(1), gated(1000)
    assert one.keys() == many.keys()
    for method in one:
        for metric, values in one[method].items():
            a = np.array(values, dtype=float)
            b = np.array(many[method][metric], dtype=float)
            np.testing.assert_array_equal(a, b, err_msg=f"{method}/{metric}")
