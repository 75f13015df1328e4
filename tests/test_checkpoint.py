"""Checkpoint round trip and every way a checkpoint can be bad."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drift_gate.models.backbones import build_classifier
from drift_gate.models.checkpoint import SCHEMA_VERSION, CheckpointMeta, load_checkpoint, save_checkpoint


def _meta(**over: object) -> CheckpointMeta:
    kw: dict[str, object] = dict(
        arch="tiny",
        classes=("a", "b", "c"),
        input_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
        phase="tl",
        seed=3,
        data_manifest_sha256="0" * 64,
        metrics={"val": {"auc_macro": 0.9}},
    )
    kw.update(over)
    return CheckpointMeta(**kw)  # type: ignore[arg-type]


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tl.pt"
    save_checkpoint(path, build_classifier("tiny", 3), _meta())
    return path


def test_round_trip(ckpt: Path) -> None:
    model, meta = load_checkpoint(ckpt)
    assert meta == _meta(versions=meta.versions)
    assert meta.schema_version == 1 and "torch" in meta.versions, "schema 1: no target layer named"
    assert torch.load(ckpt, weights_only=True)["schema_version"] == 1 < SCHEMA_VERSION
    torch.manual_seed(0)
    reference = build_classifier("tiny", 3)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert not model.training


def test_a_rewritten_checkpoint_drops_the_export_of_its_old_bytes(ckpt: Path) -> None:
    """A retrained ``ft.pt`` beside the old ``ft.onnx`` would fail the gate's parity check
    (its predictions come from the export): the export goes with the bytes it was made from."""
    other = ckpt.parent / "other.onnx"
    for f in (ckpt.with_suffix(".onnx"), ckpt.with_suffix(".onnx.json"), other):
        f.write_bytes(b"old export")
    save_checkpoint(ckpt, build_classifier("tiny", 3), _meta())
    assert not ckpt.with_suffix(".onnx").exists() and not ckpt.with_suffix(".onnx.json").exists()
    assert other.read_bytes() == b"old export", "only the checkpoint's own export"
    load_checkpoint(ckpt)


def test_meta_json_is_canonical() -> None:
    text = _meta().to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True), "keys sorted, no whitespace variants"
    assert text.startswith('{"arch"') and "preprocess" not in text, "the default preprocessing is not stored"
    assert CheckpointMeta.from_json(text, Path("x")) == _meta(versions=json.loads(text)["versions"])
