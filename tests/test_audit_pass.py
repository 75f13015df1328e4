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
        """In one chunk every image is decoded once; in smaller chunks the counterfactual's
        donors that lie in another chunk are decoded once more (and only they)."""
        monkeypatch.setattr(audit_pass, "CHUNK_BATCHES", chunk_batches)
        decoded.clear()
        c, _ = run_gate(
            env["ft"],
            baselines=env["baselines"],
            thresholds=rules,
            data_root=env["data"],
            batch_size=2,
            use_onnx=False,
        )
        if chunk_batches >= 1000:
            assert len(decoded) == c.n_audit == len(set(decoded)), "every audit image decoded exactly once"
        else:
            assert len(set(decoded)) == c.n_audit < len(decoded) <= 2 * c.n_audit, "donors: at most once more"
        assert {"faithfulness", "counterfactual_drop"} <= set(c.per_sample["layercam"])
        return c.per_sample

    one, many = gated(1), gated(1000)
    assert one.keys() == many.keys()
    for method in one:
        for metric, values in one[method].items():
            a = np.array(values, dtype=float)
            b = np.array(many[method][metric], dtype=float)
            np.testing.assert_array_equal(a, b, err_msg=f"{method}/{metric}")


def test_the_gate_is_its_five_stages(env: dict[str, Path]) -> None:
    """prepare -> audit -> predictions -> judge -> record, called one by one, is run_gate;
    each stage's output is what the next one reads."""
    import json
    from dataclasses import asdict

    import torch

    from drift_gate.distributed import Dist
    from drift_gate.gating import gate

    rules = parse_thresholds(RULES.format(drift="iou.min = 0.3"))
    common = {"baselines": env["baselines"], "thresholds": rules, "data_root": env["data"], "batch_size": 4}
    whole, _ = run_gate(env["ft"], use_onnx=False, **common)
    job = gate.prepare(
        env["ft"],
        reference=None,
        use_onnx=False,
        dist=Dist(0, 1, torch.device("cpu")),
        progress=False,
        precision="fp32",
        **common,
    )
    gathered = gate.audit(job)
    assert set(gathered.maps) == set(rules.methods) and gathered.onnx_logits is None
    assert len(gathered.torch_logits) == len(job.samples) == whole.n_audit
    preds = gate.predictions(job, gathered)
    assert int(preds.selected.sum()) == whole.n_selected and preds.parity_rules == []
    judged = gate.judge(job, gathered, preds)
    assert [r.rule for r in judged[0]] == [r.rule for r in whole.rules]
    staged, _ = gate.record(job, gathered, preds, judged, None)
    assert json.dumps(asdict(staged), default=str) == json.dumps(asdict(whole), default=str)
