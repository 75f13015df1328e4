"""Gates that checked nothing must not pass: empty audit sets, no true positives,
fewer than ``min_samples``, every map degenerate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from drift_gate.cli import main
from drift_gate.models.checkpoint import load_checkpoint, save_checkpoint
from gatekit import RULES, assert_error, gate, result

TP_RULES = RULES.replace('samples = "all"', 'samples = "true-positive"').replace(
    "max_drop = 0.2", "max_drop = 1.0"
)


def _edited_model(env: dict[str, Path], name: str, edit) -> Path:  # type: ignore[no-untyped-def]
    model, meta = load_checkpoint(env["tl"])
    with torch.no_grad():
        edit(model)
    path = env["tmp"] / name
    save_checkpoint(path, model, meta)
    return path


def _inconclusive(env: dict[str, Path], candidate: Path, reason: str) -> dict:  # type: ignore[type-arg]
    assert gate(env, candidate) == 1, "an inconclusive gate exits 1, never 0"
    res = result(env)
    (c,) = res["candidates"]
    assert res["verdict"] == c["verdict"] == "inconclusive"
    drift = [r for r in c["rules"] if "/auc." not in r["rule"]]
    assert drift and all(r["status"] == "inconclusive" and reason in r["message"] for r in drift)
    return c  # type: ignore[no-any-return]


def test_zero_true_positives(env: dict[str, Path]) -> None:
    """Head rows rotated: the candidate never predicts what the reference predicts,
    so no sample is a true positive of both."""
    env["thresholds"].write_text(TP_RULES.format(drift="iou.min = 0.0"))
    rotated = _edited_model(
        env,
        "rotated.pt",
        lambda m: (m.head.weight.copy_(m.head.weight.roll(1, 0)), m.head.bias.copy_(m.head.bias.roll(1, 0))),
    )
    c = _inconclusive(env, rotated, "only 0 usable samples")
    assert c["n_selected"] == 0


def test_fewer_than_min_samples(env: dict[str, Path]) -> None:
    env["thresholds"].write_text(
        TP_RULES.format(drift="iou.min = 0.0").replace("min_samples = 2", "min_samples = 500")
    )
    _inconclusive(env, env["tl"], "min_samples is 500")


def test_every_map_degenerate(env: dict[str, Path]) -> None:
    """A head of zeros: every gradient, hence every map, is zero (constant)."""
    env["thresholds"].write_text(
        RULES.replace("max_drop = 0.2", "max_drop = 1.0").format(drift="iou.min = 0.0")
    )
    blank = _edited_model(env, "blank.pt", lambda m: (m.head.weight.zero_(), m.head.bias.zero_()))
    c = _inconclusive(env, blank, "degenerate")
    for method in ("layercam", "gradcam++"):
        assert all(d == 1.0 for d in c["per_sample"][method]["degenerate"])
        assert c["summaries"][method]["iou"]["overall"]["n"] == 0
    assert c["label"] == "too few usable samples to judge the evidence"


def test_empty_audit_set(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A baseline with no audit images (consistent hashes, so not caught as tampering)."""
    folder = env["baselines"] / "tiny"
    audit = {"sha256": "", "samples": []}
    digest = hashlib.sha256(json.dumps([]).encode()).hexdigest()
    (folder / "audit.json").write_text(json.dumps(audit))
    meta = json.loads((folder / "baseline.json").read_text())
    meta["audit"]["sha256"] = digest
    (folder / "baseline.json").write_text(json.dumps(meta))
    assert_error(gate(env, env["tl"]), capsys, "the audit set is empty: nothing could be checked")


def test_nothing_to_gate(env: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert_error(main(["gate", "--thresholds", str(env["thresholds"])]), capsys, "nothing to gate")


@pytest.mark.parametrize(
    ("option", "value"), [("--batch-size", "0"), ("--per-class", "-1"), ("--threads", "x")]
)
def test_bad_numbers_are_usage_errors(
    env: dict[str, Path], option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["baseline", "--reference", str(env["tl"]), "--data", str(env["data"]), option, value])
    assert code == 2
    assert f"argument {option}:" in capsys.readouterr().err
