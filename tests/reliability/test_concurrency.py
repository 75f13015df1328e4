"""Writers take turns: the report lock and the baseline lock, each held by the test while
a real ``drift-gate`` process tries to write."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from gatekit import gate_args


def _cpu_ticks(pid: int) -> tuple[str, int]:
    """(state, utime + stime) of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0], int(fields[11]) + int(fields[12])


def _blocked_while_locked(argv: list[str], what: str) -> subprocess.Popen[str]:
    """Starts ``drift-gate argv`` and returns once it sleeps without using the CPU for 3 s
    (blocked on the lock the caller holds); fails if it finishes first."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "drift_gate", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    idle = 0
    for _ in range(300):
        _, before = _cpu_ticks(proc.pid)
        time.sleep(1.0)
        assert proc.poll() is None, f"{what} finished while another process held the lock"
        state, after = _cpu_ticks(proc.pid)
        idle = idle + 1 if (state, after) == ("S", before) else 0
        if idle >= 3:
            return proc
    raise AssertionError(f"{what} never blocked")


def test_a_gate_waits_for_the_report_lock(env: dict[str, Path]) -> None:
    """The lock is what makes two writers take turns: while another process holds it,
    a gate that has finished computing waits, writing nothing, and then completes."""
    from drift_gate._io import write_lock

    with write_lock(env["reports"]):
        proc = _blocked_while_locked(gate_args(env, env["ft"], "--threads", "1"), "the gate")
        assert not (env["reports"] / "gate.json").exists(), "it wrote reports while the lock was held"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads((env["reports"] / "gate.json").read_text())["verdict"] == "pass"


def test_approve_waits_for_the_baseline_lock(env: dict[str, Path]) -> None:
    """``baseline``, ``approve`` and the gate share one lock per baseline: an approval that
    finds it held waits, changing nothing, and then records its result (none is lost)."""
    from drift_gate.gating.stored import baseline_lock
    from gatekit import gate

    assert gate(env, env["ft"]) == 0
    meta = env["baselines"] / "tiny" / "baseline.json"
    before = meta.read_bytes()
    with baseline_lock(env["baselines"] / "tiny"):
        proc = _blocked_while_locked(["approve", "--result", str(env["reports"] / "gate.json")], "approve")
        assert meta.read_bytes() == before, "approve wrote while the lock was held"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(json.loads(meta.read_text())["history"]) == 1
