"""Inputs checked before use by their declared sizes, layouts and formats, and a broken
candidate's numbers treated as evidence: a precise line (exit 2) where no verdict is
possible, a failed rule (exit 1) where one is."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from drift_gate.cli import main
from drift_gate.models.checkpoint import load_checkpoint, save_checkpoint
from gatekit import RULES, assert_error, gate, result


def _npy(shape: tuple[int, ...], dtype: str = "<f8", payload: bytes = b"\0" * 64) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def test_a_maps_file_whose_header_declares_a_huge_array_is_refused_unread(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The archive's directory says 100 bytes; the array header says 80 GB. Reading it
    would try to allocate those (MemoryError); it is refused from the header alone."""
    folder = env["baselines"] / "tiny"
    with np.load(folder / "maps.npz") as z:
        arrays = {k: z[k] for k in z.files}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, a in arrays.items():
            one = io.BytesIO()
            np.save(one, a)
            zf.writestr(f"{k}.npy", _npy((10_000_000_000,)) if k == "labels" else one.getvalue())
    (folder / "maps.npz").write_bytes(buf.getvalue())
    meta = json.loads((folder / "baseline.json").read_text())
    meta["maps"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (folder / "baseline.json").write_text(json.dumps(meta))
    assert_error(
        gate(env, env["ft"]), capsys, r"maps.npz: labels.npy declares 80,000,000,000 bytes in its header"
    )


@pytest.mark.parametrize("which", ["thresholds", "profiles"])
def test_deeply_nested_toml_names_the_file(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], which: str
) -> None:
    deep = env["tmp"] / f"{which}.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    if which == "thresholds":
        code = gate(env, env["ft"], "--thresholds", str(deep))
    else:
        code = main(["train", "--profile", "demo", "--profiles", str(deep), "--no-progress"])
    assert_error(code, capsys, rf"{which}.toml: invalid TOML: nested too deeply to read")


def _with_weight(env: dict[str, Path], name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Path:
    obj = torch.load(env["ft"], weights_only=True)
    obj["state_dict"]["head.weight"] = change(obj["state_dict"]["head.weight"])
    path = env["tmp"] / name
    torch.save(obj, path)
    return path


def _quietly(make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """torch warns that its quantised dtypes are deprecated; the tensor is what a file holds."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return make()


LAYOUTS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "meta": (lambda w: torch.empty_like(w, device="meta"), r"weight head.weight is a meta tensor"),
    "sparse": (lambda w: w.to_sparse(), r"weight head.weight is a sparse_coo tensor; save dense weights"),
    "quantised": (
        lambda w: _quietly(lambda: torch.quantize_per_tensor(w, 0.01, 0, torch.qint8)),
        r"weight head.weight is quantised \(torch.qint8\)",
    ),
    "complex": (lambda w: w.to(torch.complex64), r"weight head.weight is complex"),
    "non-contiguous": (lambda w: w.t().contiguous().t(), ""),  # fine: loaded as it is
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_tensor_layouts_are_named_by_their_key(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    change, message = LAYOUTS[layout]
    candidate = _with_weight(env, f"{layout}.pt", change)
    if not message:
        assert gate(env, candidate) in (0, 1)
        return
    assert_error(gate(env, candidate), capsys, message)


def test_a_safetensors_file_named_pt_is_told_what_it_is(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    model, _ = load_checkpoint(env["ft"])
    path = env["tmp"] / "weights.pt"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    line = assert_error(gate(env, path), capsys, r"weights.pt: a safetensors file \(its first bytes say so\)")
    assert "would run code" not in line


def test_approving_a_result_without_a_candidate_says_so(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    made = env["tmp"] / "made.json"
    made.write_text(json.dumps({"candidates": [{"candidate": "", "verdict": None}]}))
    assert_error(
        main(["approve", "--result", str(made)]), capsys, r"the gate result names no candidate \(''\)"
    )


def _overflowing(env: dict[str, Path], name: str) -> Path:
    """Finite weights whose logits overflow to +-Inf (and their log-odds to NaN)."""
    model, meta = load_checkpoint(env["ft"])
    with torch.no_grad():
        model.head.weight.fill_(3e38)  # the largest float32 is 3.4e38: finite, but not their sums
    path = env["tmp"] / name
    save_checkpoint(path, model, meta)
    return path


def test_a_candidate_that_predicts_inf_fails_its_auc_rules(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = gate(env, _overflowing(env, "inf.pt"))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "unexpected" not in err and "Traceback" not in err, err
    c = result(env)["candidates"][0]
    auc = {r["rule"]: r for r in c["rules"] if r["scope"] == "auc"}
    assert (
        auc["tiny/auc.min"]["status"] == "fail" and "NaN or infinite logits" in auc["tiny/auc.min"]["message"]
    )


def test_an_onnx_export_that_predicts_inf_fails_parity_and_auc(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The candidate is fine, the ONNX beside it (what is deployed) is not: parity and the
    AUC from ONNX Runtime fail, exit 1."""
    import shutil

    from drift_gate.models.export import _export_bytes

    model, meta = load_checkpoint(_overflowing(env, "broken.pt"))
    candidate = env["tmp"] / "deployed.pt"
    shutil.copy(env["ft"], candidate)
    # what `drift-gate export` writes, from the broken weights (export itself would refuse:
    # its parity check fails), beside the sound candidate
    candidate.with_suffix(".onnx").write_bytes(_export_bytes(model, meta.input_size, {}, 3))
    code = gate(env, candidate)
    err = capsys.readouterr().err
    assert code == 1, err
    c = result(env)["candidates"][0]
    by = {r["rule"]: r["status"] for r in c["rules"]}
    assert by["tiny/onnx.parity"] == "fail" and by["tiny/auc.min"] == "fail", by
    assert c["predictions"].startswith("onnxruntime")


def test_an_auc_on_too_few_positives_is_inconclusive(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Two audit images per class: an AUC on 2 positives means nothing at the default
    [auc] min_support of 5, so the AUC rules are inconclusive (exit 1), never a pass."""
    rules = env["tmp"] / "default-support.toml"
    rules.write_text(RULES.replace("min_support = 2\n", "").format(drift="iou.min = 0.0"))
    assert gate(env, env["tl"], "--thresholds", str(rules)) == 1
    c = result(env)["candidates"][0]
    auc = [r for r in c["rules"] if r["scope"] == "auc"]
    assert auc and all(r["status"] == "inconclusive" for r in auc), auc
    assert "too few to mean anything (at least 5 of each, [auc] min_support)" in auc[0]["message"]
    assert c["verdict"] == "inconclusive"


def test_each_class_auc_is_reported_and_can_be_ruled_on(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rules = env["tmp"] / "per-class.toml"
    rules.write_text(
        RULES.format(drift="iou.min = 0.0")
        + '[auc.labels.normal]\nmin = 0.0\n[auc.labels."covid19"]\nmin = 1.01\n'
    )
    assert_error(
        gate(env, env["tl"], "--thresholds", str(rules)), capsys, r"an AUC bound must lie in \[0, 1\]"
    )
    rules.write_text(RULES.format(drift="iou.min = 0.0") + "[auc.labels.normal]\nmin = 0.0\nmax_drop = 0.0\n")
    gate(env, env["ft"], "--thresholds", str(rules))
    out = capsys.readouterr().out
    c = result(env)["candidates"][0]
    assert set(c["auc_per_class"]) == set(c["classes"]) == set(c["reference_auc_per_class"])
    assert "AUC per class: normal" in out
    names = {r["rule"] for r in c["rules"]}
    assert {"tiny/auc/normal.min", "tiny/auc/normal.max_drop"} <= names
    for report in ("gate.md", "gate.html"):
        assert "AUC per class" in (env["reports"] / report).read_text()
