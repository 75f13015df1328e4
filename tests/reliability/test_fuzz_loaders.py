"""Fuzzing the loaders of every file the gate reads (hypothesis): random JSON for checkpoint
metadata, ``baseline.json``, ``audit.json``, ``signature.json`` and ``gate.json``, random
TOML tables for model specs. Each either loads or raises a :class:`DriftGateError` (exit 2,
one line); nothing else ever comes out."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drift_gate.errors import DriftGateError
from drift_gate.gating.stored import read_baseline
from drift_gate.models.checkpoint import CheckpointMeta
from drift_gate.models.spec import ModelSpec

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_KEYS = [
    "arch",
    "classes",
    "input_size",
    "mean",
    "std",
    "phase",
    "seed",
    "data_manifest_sha256",
    "weights",
    "metrics",
    "epoch",
    "versions",
    "preprocess",
    "model",
    "schema_version",
    "task",
    "target_layer",
    "output_stride",
    "channels",
    "name",
    "operating_point",
    "layout",
    "kwargs",
    "maps",
    "audit",
    "reference",
    "auc",
    "approved",
    "samples",
    "sha256",
    "files",
    "signature",
    "candidates",
]


def _objects(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with random fields replaced by random JSON (and random fields added)."""
    return st.builds(
        lambda changes, extra: {**base, **changes, **extra},
        st.dictionaries(st.sampled_from(sorted(base) or _KEYS), _JSON, max_size=4),
        st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=2),
    )


_META = {
    "arch": "tiny",
    "classes": ["a", "b"],
    "input_size": 32,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "phase": "tl",
    "seed": 0,
    "data_manifest_sha256": "",
    "weights": "none",
    "metrics": {},
    "epoch": 1,
    "versions": {},
    "schema_version": 1,
}


@settings(max_examples=150, deadline=None)
@given(st.one_of(_objects(_META), _JSON))
def test_checkpoint_metadata(doc: Any) -> None:
    with contextlib.suppress(DriftGateError):
        CheckpointMeta.from_json(json.dumps(doc), Path("c.pt"))


_SPEC = {"arch": "timm:resnet18", "classes": ["a", "b"], "task": "multiclass", "input_size": 64}


@settings(max_examples=150, deadline=None)
@given(st.one_of(_objects(_SPEC), _JSON))
def test_model_spec_tables(doc: Any) -> None:
    try:
        spec = ModelSpec.from_dict(doc, "model.toml")
    except DriftGateError:
        return
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.as_dict())), "stored") == spec


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, trained: Path, phantom_root: Path) -> Path:
    """One real baseline of the tiny fixture, copied for every example."""
    from drift_gate.cli import main
    from gatekit import RULES

    tmp = tmp_path_factory.mktemp("fuzzbase")
    rules = tmp / "thresholds.toml"
    rules.write_text(RULES.format(drift="iou.min = 0.3"))
    assert (
        main(
            [
                "baseline",
                "--reference",
                str(trained / "tl.pt"),
                "--data",
                str(phantom_root),
                "--out",
                str(tmp / "tiny"),
                "--thresholds",
                str(rules),
                "--per-class",
                "2",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    return tmp / "tiny"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), name=st.sampled_from(["baseline.json", "audit.json", "signature.json"]))
def test_baseline_files(stored: Path, tmp_path: Path, data: st.DataObject, name: str) -> None:
    from drift_gate.gating.signing import public_key

    folder = Path(tempfile.mkdtemp(dir=tmp_path)) / "tiny"
    shutil.copytree(stored, folder)
    original = json.loads((folder / name).read_text()) if (folder / name).exists() else {}
    doc = data.draw(st.one_of(_objects(original) if isinstance(original, dict) else _JSON, _JSON))
    (folder / name).write_text(json.dumps(doc))
    key = None
    if name == "signature.json":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        pem = (
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
        key = public_key(pem.decode())
    with contextlib.suppress(DriftGateError):
        read_baseline(folder, key)


@settings(max_examples=60, deadline=None)
@given(doc=st.one_of(_objects({"candidates": [], "thresholds": {}, "verdict": "pass"}), _JSON))
def test_gate_results_given_to_approve(tmp_path_factory: pytest.TempPathFactory, doc: Any) -> None:
    """Run in an empty folder: nothing may be created for a baseline that does not exist."""
    import os

    from drift_gate import api

    folder = tmp_path_factory.mktemp("gr")
    path = folder / "gate.json"
    path.write_text(json.dumps(doc))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.suppress(DriftGateError):
            api.approve(result=path, force=True)
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in folder.iterdir()) == ["gate.json"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(
        ["approved", "auc", "classes", "input_size", "mean", "preprocess", "model", "history"]
    ),
    value=_JSON,
)
def test_the_gate_on_a_fuzzed_baseline_json_ends_in_a_documented_exit(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], field: str, value: Any
) -> None:
    """An edited ``baseline.json`` (its file hashes left intact) through the whole command:
    exit 0, 1 or 2, and for 2 exactly one error line and no traceback."""
    from gatekit import gate

    path = env["baselines"] / "tiny" / "baseline.json"
    original = path.read_text()
    meta = json.loads(original)
    meta[field] = value
    path.write_text(json.dumps(meta))
    try:
        code = gate(env, env["ft"])
    finally:
        path.write_text(original)
    err = capsys.readouterr().err
    assert code in (0, 1, 2) and "Traceback" not in err, err
    if code == 2:
        assert len([ln for ln in err.splitlines() if ln.startswith("drift-gate: error:")]) == 1, err
        assert "unexpected" not in err, err


def _variant(tensor: Any, kind: str) -> Any:
    """One weight of a user's state dict, stored another way."""
    import torch

    if kind == "transposed view":  # non-contiguous, same values
        return tensor.t().contiguous().t() if tensor.dim() == 2 else tensor.flip(0).flip(0)
    if kind == "strided slice":
        return torch.cat([tensor, tensor]).narrow(0, 0, len(tensor)) if tensor.dim() else tensor
    if kind == "sparse":
        return tensor.to_sparse()
    if kind == "meta":
        return tensor.to("meta")
    if kind == "quantised":
        import warnings

        with warnings.catch_warnings():  # deprecated in torch, still what a user may have saved
            warnings.simplefilter("ignore", UserWarning)
            return torch.quantize_per_tensor(tensor.float(), 0.1, 0, torch.qint8)
    if kind == "complex":
        return tensor.to(torch.complex64)
    if kind in ("float64", "bfloat16", "float16", "int64", "bool"):
        return tensor.to(getattr(torch, kind))
    if kind in ("nan", "inf"):
        return tensor.clone().fill_(float(kind))
    if kind == "wrong shape":
        return torch.zeros(*(s + 1 for s in tensor.shape))
    if kind == "scalar":
        return torch.tensor(1.0)
    if kind == "not a tensor":
        return [1.0, 2.0]
    raise AssertionError(kind)


_LAYOUTS = (
    "transposed view",
    "strided slice",
    "sparse",
    "meta",
    "quantised",
    "complex",
    "float64",
    "bfloat16",
    "float16",
    "int64",
    "bool",
    "nan",
    "inf",
    "wrong shape",
    "scalar",
    "not a tensor",
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_state_dicts_of_any_tensor_layout_load_or_name_the_key(tmp_path: Path, data: st.DataObject) -> None:
    """A user's state dict with some weights in another layout, dtype or shape (or extra
    and missing keys) either loads, or is refused with a DriftGateError that names a key
    or says what the file is: never another exception."""
    import torch

    from drift_gate.models.adapters import load_model
    from drift_gate.models.spec import load_spec
    from user_model import small_net

    spec_file = tmp_path / "model.toml"
    spec_file.write_text(
        '[model]\narch = "python:user_model:small_net"\nclasses = ["a", "b"]\ninput_size = 32\n'
        "[model.kwargs]\noutputs = 2\n"
    )
    state: dict[str, Any] = dict(small_net(2).state_dict())
    keys = sorted(state)
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        state[key] = _variant(state[key], data.draw(st.sampled_from(_LAYOUTS)))
    if data.draw(st.booleans()):
        state.pop(data.draw(st.sampled_from(keys)))
    if data.draw(st.booleans()):
        state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "v.pt"
    torch.save(state, path)
    try:
        model, _ = load_model(path, load_spec(spec_file))
    except DriftGateError as exc:
        text = str(exc)
        assert not text.startswith("unexpected") and str(path) in text, text
        return
    for value in model.state_dict().values():  # what loaded is dense, finite float
        assert value.layout == torch.strided and bool(torch.isfinite(value.float()).all())
    stored = [v for v in state.values() if isinstance(v, torch.Tensor)]
    assert all(v.is_floating_point() for v in stored)  # an int or bool weight is refused


def test_an_integer_weight_is_refused_not_cast(tmp_path: Path) -> None:
    """A bool or int64 tensor where the model has a float weight would load as 0/1 or
    whole numbers, silently: it is refused, naming the key."""
    import torch

    from drift_gate.models.adapters import load_model
    from drift_gate.models.spec import load_spec
    from user_model import small_net

    spec_file = tmp_path / "model.toml"
    spec_file.write_text(
        '[model]\narch = "python:user_model:small_net"\nclasses = ["a", "b"]\ninput_size = 32\n'
        "[model.kwargs]\noutputs = 2\n"
    )
    state = dict(small_net(2).state_dict())
    state["stage.0.weight"] = state["stage.0.weight"] > 0
    torch.save(state, tmp_path / "v.pt")
    with pytest.raises(DriftGateError, match=r"weight stage.0.weight is bool, not a floating-point tensor"):
        load_model(tmp_path / "v.pt", load_spec(spec_file))
