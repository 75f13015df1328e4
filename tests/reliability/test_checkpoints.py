"""Bad candidate checkpoints: each is refused with one line and exit code 2."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from drift_gate.models.backbones import build_classifier
from drift_gate.models.checkpoint import SCHEMA_VERSION
from gatekit import assert_error, gate, resaved


def _rewritten(env: dict[str, Path], mutate: Callable[[dict], None]) -> Path:  # type: ignore[type-arg]
    obj = torch.load(env["tl"], weights_only=True)
    mutate(obj)
    path = env["tmp"] / "edited.pt"
    torch.save(obj, path)
    return path


def _bytes(env: dict[str, Path], data: bytes) -> Path:
    path = env["tmp"] / "bad.pt"
    path.write_bytes(data)
    return path


class _Exploit:
    """Unpickling this runs ``touch MARKER``: a checkpoint that would execute code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _exploit(env: dict[str, Path], raw: bool) -> Path:
    path = env["tmp"] / "exploit.pt"
    payload = {"format": "drift-gate-checkpoint", "payload": _Exploit(env["tmp"] / "pwned")}
    with path.open("wb") as fh:
        if raw:
            fh.write(pickle.dumps(payload))
        else:
            torch.save(payload, fh)
    return path


def _set_weight(value: float) -> Callable[[dict], None]:  # type: ignore[type-arg]
    return lambda o: o["state_dict"]["head.weight"].__setitem__((0, 0), value)


def _wrong_arch_baseline(env: dict[str, Path]) -> Path:
    meta_path = env["baselines"] / "tiny" / "baseline.json"
    meta = json.loads(meta_path.read_text())
    meta["arch"] = "resnet50v2"
    meta_path.write_text(json.dumps(meta))
    return env["tl"]


def _shared_nest(depth: int) -> list[object]:
    """A list whose ``str`` would take 2**depth steps: each level holds the next one twice."""
    node: list[object] = []
    for _ in range(depth):
        node = [node, node]
    return node


def _meta_with(obj: dict, **changes: object) -> str:  # type: ignore[type-arg]
    meta = json.loads(obj["meta"])
    meta.update(changes)
    return json.dumps(meta)


CASES: dict[str, tuple[Callable[[dict[str, Path]], Path], str]] = {
    "missing": (lambda e: e["tmp"] / "nope.pt", r"nope\.pt: checkpoint not found"),
    "empty": (lambda e: _bytes(e, b""), r"bad\.pt: checkpoint file is empty"),
    "truncated": (
        lambda e: _bytes(e, e["tl"].read_bytes()[: e["tl"].stat().st_size // 2]),
        "not a readable checkpoint, truncated or corrupt",
    ),
    "text": (lambda e: _bytes(e, b"hello"), "not a readable checkpoint, truncated or corrupt"),
    "bare state dict": (
        lambda e: (
            torch.save(build_classifier("tiny", 5).state_dict(), e["tmp"] / "sd.pt"),
            e["tmp"] / "sd.pt",
        )[1],
        "not a drift-gate checkpoint",
    ),
    "code pickle (torch.save)": (
        lambda e: _exploit(e, raw=False),
        "contains Python objects that would run code when loaded; refused",
    ),
    "code pickle (raw)": (
        lambda e: _exploit(e, raw=True),
        "would run code when loaded; refused|truncated or corrupt",
    ),
    "newer schema": (
        lambda e: _rewritten(e, lambda o: o.update(schema_version=SCHEMA_VERSION + 1)),
        f"schema version {SCHEMA_VERSION + 1} is newer than this drift-gate supports",
    ),
    "NaN weight": (
        lambda e: _rewritten(e, _set_weight(float("nan"))),
        r"weight head\.weight contains NaN or Inf",
    ),
    "Inf weight": (
        lambda e: _rewritten(e, _set_weight(float("inf"))),
        r"weight head\.weight contains NaN or Inf",
    ),
    "metadata not JSON": (
        lambda e: _rewritten(e, lambda o: o.update(meta="{")),
        "metadata is not valid JSON",
    ),
    "metadata incomplete": (
        lambda e: _rewritten(e, lambda o: o.update(meta='{"arch": "tiny"}')),
        "metadata lacks classes",
    ),
    "metadata a shared nested list": (
        lambda e: _rewritten(e, lambda o: o.update(meta=_shared_nest(40))),
        "checkpoint metadata is list, not a JSON string",
    ),
    "metadata deeply nested": (
        lambda e: _rewritten(e, lambda o: o.update(meta="[" * 100_000 + "]" * 100_000)),
        "metadata is not valid JSON",
    ),
    "metadata classes a number": (
        lambda e: _rewritten(e, lambda o: o.update(meta=_meta_with(o, classes=5))),
        r"metadata field classes must be a list of 1 to 10,000 class names, got 5",
    ),
    "metadata input size a string": (
        lambda e: _rewritten(e, lambda o: o.update(meta=_meta_with(o, input_size="32"))),
        r"metadata field input_size must be an integer from 8 to 4096, got '32'",
    ),
    "metadata NaN std": (
        lambda e: _rewritten(e, lambda o: o.update(meta=_meta_with(o, std=[float("nan")] * 3))),
        r"metadata field std must be 1 or 3 positive numbers",
    ),
    "bytearray in the state dict": (
        lambda e: _rewritten(e, lambda o: o["state_dict"].update(extra=bytearray(1024))),
        "the state_dict holds bytearray, not only tensors",
    ),
    "more classes than weights": (
        lambda e: resaved(e, "six.pt", classes=("a", "b", "c", "d", "e", "f")),
        "do not fit architecture 'tiny' with 6 classes",
    ),
    "other class names": (
        lambda e: resaved(e, "names.pt", classes=("a", "b", "c", "d", "e")),
        r"does not match the baseline in .*: classes \['a', .*make a baseline for this model",
    ),
    "other input size": (
        lambda e: resaved(e, "size.pt", input_size=48),
        r"input_size 48 \(baseline 32\).*make a baseline for this model",
    ),
    "other normalisation": (
        lambda e: resaved(e, "norm.pt", mean=(0.1, 0.1, 0.1)),
        r"mean \[0\.1, 0\.1, 0\.1\]",
    ),
    "wrong architecture for the baseline": (
        _wrong_arch_baseline,
        r"arch 'tiny' \(baseline 'resnet50v2'\).*make a baseline for this model: `drift-gate baseline",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_checkpoint(env: dict[str, Path], case: str, capsys: pytest.CaptureFixture[str]) -> None:
    make, message = CASES[case]
    candidate = make(env)
    assert_error(gate(env, candidate), capsys, message)
    assert not (env["tmp"] / "pwned").exists(), "the pickle's code ran"
    assert not (env["reports"] / "gate.json").exists(), "no report for a refused candidate"


def test_a_model_whose_maps_overflow_fails_rather_than_errors(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A head scaled by 1e36 gives Inf logits and maps beyond range: a broken candidate,
    not bad input, so the gate ends in exit 1 with a report (its maps are degenerate:
    never a pass), not in exit 2."""
    candidate = _rewritten(env, lambda o: o["state_dict"]["head.weight"].mul_(1e36))
    assert gate(env, candidate) == 1
    assert (env["reports"] / "gate.json").is_file()
    out = capsys.readouterr().out
    assert "verdict: PASS" not in out and ("verdict: FAIL" in out or "verdict: INCONCLUSIVE" in out)


def test_refused_pickle_payload_would_have_run(env: dict[str, Path]) -> None:
    """The exploit is real: plain ``pickle.load`` runs it (so the test above can fail)."""
    path = _exploit(env, raw=True)
    with path.open("rb") as fh:
        pickle.load(fh)
    assert (env["tmp"] / "pwned").exists()
