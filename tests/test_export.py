"""ONNX export with parity, and the gate predicting with ONNX Runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import drift_gate.models.export
from drift_gate.cli import main
from drift_gate.models.checkpoint import load_checkpoint, save_checkpoint
from drift_gate.models.export import OnnxModel, onnx_path
from gatekit import RULES, assert_error, gate, result


def _export(env: dict[str, Path], ckpt: Path, *extra: str) -> int:
    args = ["export", "--checkpoint", str(ckpt), "--data", str(env["data"])]
    return main([*args, "--baselines", str(env["baselines"]), "--device", "cpu", "--no-progress", *extra])


@pytest.fixture()
def exported(env: dict[str, Path]) -> Path:
    """A copy of the FT checkpoint with its ONNX export beside it."""
    ckpt = env["tmp"] / "cand" / "model.pt"
    ckpt.parent.mkdir()
    shutil.copy(env["ft"], ckpt)
    assert _export(env, ckpt) == 0
    return ckpt


def test_export_writes_a_model_with_a_dynamic_batch_and_parity(exported: Path, env: dict[str, Path]) -> None:
    path = onnx_path(exported)
    assert path.name == "model.onnx" and path.is_file()
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["drift_gate.arch"] == "tiny" and len(props["drift_gate.checkpoint_sha256"]) == 64
    side = json.loads(path.with_suffix(".onnx.json").read_text())
    assert side["parity"]["max_rel_diff"] <= 1e-4 and side["parity"]["n"] == 10
    assert side["parity"]["provider"] == "CPUExecutionProvider"
    # Batch sizes other than the export's example give the same logits.
    model, _ = load_checkpoint(exported)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = model(x).numpy()
    got = OnnxModel(path).session.run(None, {"image": x.numpy()})[0]
    assert np.allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_gate_predicts_with_onnx_runtime_and_checks_parity(exported: Path, env: dict[str, Path]) -> None:
    assert gate(env, exported) == 0
    (c,) = result(env)["candidates"]
    assert c["predictions"] == "onnxruntime (CPUExecutionProvider)"
    assert c["onnx"]["path"] == str(onnx_path(exported)) and c["onnx"]["max_rel_diff"] <= 1e-4
    (rule,) = [r for r in c["rules"] if r["rule"] == "tiny/onnx.parity"]
    assert rule["status"] == "pass" and rule["bound"] == 1e-4
    assert gate(env, exported, "--no-onnx") == 0
    (c,) = result(env)["candidates"]
    assert c["predictions"] == "torch (cpu)" and not c["onnx"]
    assert not any(r["rule"].endswith("onnx.parity") for r in c["rules"])


def test_an_export_of_other_weights_fails_the_parity_rule(exported: Path, env: dict[str, Path]) -> None:
    """The checkpoint changed after export: what would be deployed is not what is audited."""
    model, meta = load_checkpoint(exported)
    with torch.no_grad():
        model.head.bias.add_(0.5)
    # other weights copied over the audited file (drift-gate's own writes drop the old export)
    changed = exported.parent / "changed.pt"
    save_checkpoint(changed, model, meta)
    changed.replace(exported)  # model.onnx still holds the old weights
    env["thresholds"].write_text(RULES.format(drift="iou.min = 0.0"))
    assert gate(env, exported) == 1
    (c,) = result(env)["candidates"]
    (rule,) = [r for r in c["rules"] if r["rule"] == "tiny/onnx.parity"]
    assert rule["status"] == "fail" and rule["observed"] > 1e-3
    assert c["label"] == "the exported ONNX model differs from the audited checkpoint"


def test_export_without_parity_writes_nothing(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = OnnxModel.logits
    monkeypatch.setattr(OnnxModel, "logits", lambda self, *a, **k: real(self, *a, **k) * 1.01)
    ckpt = env["tmp"] / "m.pt"
    shutil.copy(env["tl"], ckpt)
    assert_error(
        _export(env, ckpt), capsys, r"m\.pt: the ONNX export does not reproduce the checkpoint: .*nothing"
    )
    assert sorted(p.name for p in ckpt.parent.glob("m.*")) == ["m.pt"]


def test_unloadable_onnx_file_is_a_clear_error(
    exported: Path, env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path(exported).write_bytes(b"not onnx")
    assert_error(gate(env, exported), capsys, r"model\.onnx: not a loadable ONNX model")


def test_parity_measure() -> None:
    ref = np.array([[10.0, -2.0], [1.0, 0.0]])
    p = drift_gate.models.export.parity(ref, ref + 1e-4, "CPUExecutionProvider")
    assert p.max_rel_diff == pytest.approx(1e-5) and p.ok(1e-4) and not p.ok(1e-6)
    bad = drift_gate.models.export.parity(ref, ref * np.nan, "x")
    assert not bad.ok(1.0)
