"""The machine record: what picks the kernels, recorded by every checkpoint, baseline and
gate result, shown in the reports, refused when malformed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drift_gate._machine import is_machine, machine, machine_line, machines_line
from drift_gate.cli import main
from drift_gate.errors import CheckpointError
from drift_gate.models.checkpoint import load_checkpoint
from gatekit import assert_error, gate, resaved, result

INTEL = {"cpu": "Intel(R) Xeon(R) Processor", "arch": "x86_64", "aten_capability": "AVX512", "threads": 2}
AMD = {"cpu": "AMD EPYC 7B13", "arch": "x86_64", "aten_capability": "AVX2", "threads": 1}


def test_the_record_follows_the_threads_and_the_onednn_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    try:
        torch.set_num_threads(1)
        one = machine()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        capped = machine()
    finally:
        torch.set_num_threads(threads)
    assert is_machine(one) and is_machine(capped)
    assert one["threads"] == 1 and "onednn_max_cpu_isa" not in one
    assert capped["onednn_max_cpu_isa"] == "AVX2"
    assert machine_line(capped).endswith(", oneDNN up to AVX2, 1 thread")


def test_the_record_says_which_aten_kernels_a_process_runs() -> None:
    """``ATEN_CPU_CAPABILITY`` takes effect when torch starts, so a child process shows it."""
    code = "from drift_gate._machine import machine; print(machine()['aten_capability'])"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "DEFAULT"


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {},
        [INTEL],
        {**INTEL, "hostname": "ci-runner-7"},
        {**INTEL, "threads": True},
        {**INTEL, "threads": 0},
        {**INTEL, "threads": "2"},
        {**INTEL, "cpu": ""},
        {**INTEL, "cpu": "x" * 201},
        {**INTEL, "gpu": 3},
    ],
)
def test_a_malformed_record_is_not_a_machine(bad: object) -> None:
    assert not is_machine(bad)


def test_lines_name_each_machine_once() -> None:
    assert machine_line(INTEL) == "Intel(R) Xeon(R) Processor (x86_64), ATen AVX512, 2 threads"
    assert machine_line({**AMD, "gpu": "NVIDIA H100"}).endswith("ATen AVX2, 1 thread, GPU NVIDIA H100")
    assert machine_line(None) == "unknown"
    same = machines_line({"candidate": INTEL, "reference_maps": INTEL, "gate": INTEL})
    assert same == f"trained, reference maps and gate on {machine_line(INTEL)}"
    mixed = machines_line({"candidate": AMD, "reference_maps": INTEL, "gate": INTEL})
    amd, intel = machine_line(AMD), machine_line(INTEL)
    assert mixed == f"trained on {amd}; reference maps on {intel}; gate on {intel}"
    assert machines_line({"gate": AMD}) == f"gate on {machine_line(AMD)}"
    assert machines_line({}) == ""


def test_checkpoints_baselines_and_gate_results_record_their_machines(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, meta = load_checkpoint(env["ft"])
    assert is_machine(meta.machine)
    stored = json.loads((env["baselines"] / "tiny" / "baseline.json").read_text())
    assert is_machine(stored["machine"])
    assert gate(env, env["ft"]) in (0, 1)
    machines = result(env)["candidates"][0]["machines"]
    assert machines == {"candidate": meta.machine, "reference_maps": stored["machine"], "gate": machine()}
    line = f"machines: {machines_line(machines)}"
    assert f"  {line}" in capsys.readouterr().out.splitlines()
    assert line in (env["reports"] / "gate.md").read_text()
    assert line.removeprefix("machines: ") in (env["reports"] / "gate.html").read_text()


def test_a_model_without_a_record_gates_with_the_machines_that_are_known(env: dict[str, Path]) -> None:
    older = resaved(env, "older.pt", machine=None)
    assert "machine" not in json.loads(torch.load(older, weights_only=True)["meta"])
    assert gate(env, older) in (0, 1)
    assert set(result(env)["candidates"][0]["machines"]) == {"reference_maps", "gate"}


def test_a_malformed_record_in_a_checkpoint_is_refused(env: dict[str, Path]) -> None:
    bad = resaved(env, "bad.pt", machine={**INTEL, "threads": -1})
    with pytest.raises(
        CheckpointError, match=r"bad\.pt: checkpoint metadata field machine must be a machine record"
    ):
        load_checkpoint(bad)


def test_a_malformed_record_in_a_baseline_is_refused(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = env["baselines"] / "tiny" / "baseline.json"
    doc = json.loads(path.read_text())
    doc["machine"] = {**INTEL, "cpu": "\x1b[2J" + "x" * 300}
    path.write_text(json.dumps(doc))
    assert_error(gate(env, env["ft"]), capsys, r"baseline.json: the machine record is malformed; re-make it")


def test_a_bundle_shows_the_machines_and_drops_a_malformed_record(env: dict[str, Path]) -> None:
    assert gate(env, env["ft"]) in (0, 1)
    path = env["reports"] / "gate.json"
    doc = json.loads(path.read_text())
    machines = doc["candidates"][0]["machines"]
    doc["candidates"][0]["machines"] = {**machines, "gate": {"cpu": ["not", "text"]}}
    path.write_text(json.dumps(doc))
    out = env["tmp"] / "update.tar"
    assert main(["bundle", "--result", str(path), "--out", str(out)]) == 0
    import tarfile

    with tarfile.open(out) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    info = json.loads(files["bundle.json"])
    assert info["machines"] == {k: v for k, v in machines.items() if k != "gate"}
    expected = machines_line(info["machines"])
    assert f"Machines: {expected}." in files["summary.md"].decode()
