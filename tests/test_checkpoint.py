"""Checkpoint round trip and every way a checkpoint can be bad."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from drift_gate.backbones import build_classifier
from drift_gate.checkpoint import SCHEMA_VERSION, CheckpointMeta, load_checkpoint, save_checkpoint
from drift_gate.errors import CheckpointError


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
    assert meta.schema_version == SCHEMA_VERSION and "torch" in meta.versions
    torch.manual_seed(0)
    reference = build_classifier("tiny", 3)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert not model.training


def _rewrite(path: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    obj = torch.load(path, weights_only=True)
    mutate(obj)
    torch.save(obj, path)


def test_missing_empty_truncated_garbage(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="checkpoint file is empty"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "cut.pt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "text.pt")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_code_carrying_pickle_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, saver in (
        ("torch.pt", lambda f, o: torch.save(o, f)),
        ("raw.pt", lambda f, o: f.write(pickle.dumps(o))),
    ):
        path = tmp_path / name
        with path.open("wb") as fh:
            saver(fh, {"format": "drift-gate-checkpoint", "payload": _Exploit(marker)})
        with pytest.raises(
            CheckpointError, match=r"would run code when loaded; refused|truncated or corrupt"
        ):
            load_checkpoint(path)
        assert not marker.exists()
    with pytest.raises(CheckpointError, match="would run code when loaded; refused"):
        load_checkpoint(tmp_path / "torch.pt")


def test_foreign_file(tmp_path: Path) -> None:
    torch.save(build_classifier("tiny", 3).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a drift-gate checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")


def test_newer_schema(ckpt: Path) -> None:
    _rewrite(ckpt, lambda o: o.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(CheckpointError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        load_checkpoint(ckpt)


def test_nan_and_inf_weights(ckpt: Path) -> None:
    _rewrite(ckpt, lambda o: o["state_dict"]["head.weight"].__setitem__((0, 0), float("nan")))
    with pytest.raises(CheckpointError, match=r"weight head\.weight contains NaN or Inf"):
        load_checkpoint(ckpt)


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    save_checkpoint(path, build_classifier("tiny", 4), _meta())  # meta says 3 classes
    with pytest.raises(CheckpointError, match="do not fit architecture 'tiny' with 3 classes"):
        load_checkpoint(path)


def test_bad_metadata(ckpt: Path) -> None:
    _rewrite(ckpt, lambda o: o.update(meta='{"arch": "tiny"}'))
    with pytest.raises(CheckpointError, match="metadata lacks classes"):
        load_checkpoint(ckpt)
    _rewrite(ckpt, lambda o: o.update(meta="{"))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ckpt)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, build_classifier("tiny", 3), _meta())
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, build_classifier("tiny", 3), _meta(seed=9))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_meta_json_is_canonical() -> None:
    assert _meta().to_json() == _meta().to_json()
    assert io.StringIO(_meta().to_json()).read().startswith('{"arch"')
