"""Honest variation from the machine: fine-tunes of one TL checkpoint under another CPU
kernel selection or thread count, each in a process of its own.

Training is bit-reproducible on one machine only: ATen picks its vectorised kernels by CPU
capability, oneDNN its convolutions by instruction set, and both reduce in an order that
depends on the thread count, so the same code and seed give other weights elsewhere. The
variation that gives is part of what separates two honest runs of a user's update (the
developer's laptop and the CI runner), so calibration samples it and validation holds out
runs of it. A process's kernels are chosen when torch starts, so each setting runs in a
child process whose environment emulates another machine:

* ``aten:default`` — ``ATEN_CPU_CAPABILITY=default``: ATen without its AVX2/AVX-512 kernels;
* ``cpu:avx2``, ``cpu:sse41`` — ``ONEDNN_MAX_CPU_ISA``: oneDNN limited to that instruction set
  (on a machine whose best is AVX2, ``cpu:avx2`` changes nothing);
* ``threads:N`` — ``N`` intra-op threads (``OMP_NUM_THREADS`` and torch's own count);
* ``gpu`` — the fine-tune on the first CUDA device (only where one exists).

Settings combine with ``+`` (``aten:default+threads:1``). The children run side by side
as far as the cores allow (:func:`run_jobs`): their thread counts add up to at most the
machine's cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from drift_gate.errors import ConfigError, DataError

__all__ = ["Machine", "MachineJob", "parse_machine", "run_jobs"]

_ISA = {"avx2": "AVX2", "sse41": "SSE41", "avx512": "AVX512_CORE"}


@dataclass(frozen=True)
class Machine:
    """An emulated machine: environment variables set before torch starts, a thread count
    and a device."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    threads: int | None = None
    device: str = "cpu"

    def threads_used(self, default: int) -> int:
        return self.threads or default


def parse_machine(text: str) -> Machine:
    """``aten:default``, ``cpu:sse41``, ``threads:1``, ``gpu`` or several joined by ``+``.

    Raises:
        ConfigError: an unknown setting; the message lists the known ones.
    """
    env: dict[str, str] = {}
    threads: int | None = None
    device = "cpu"
    for part in text.split("+"):
        kind, _, value = part.strip().partition(":")
        if kind == "aten" and value in ("default", "avx2", "avx512"):
            env["ATEN_CPU_CAPABILITY"] = value
        elif kind == "cpu" and value in _ISA:
            env["ONEDNN_MAX_CPU_ISA"] = _ISA[value]
        elif kind == "threads" and value.isdigit() and int(value) > 0:
            threads = int(value)
        elif kind == "gpu" and not value:
            device = "cuda"
        else:
            raise ConfigError(
                f"unknown noise source or machine setting {part.strip()!r}; known: tl[:N], pretrain[:N], and "
                "aten:default, cpu:avx2, cpu:sse41, threads:N, gpu (machines, joined by +)"
            )
    return Machine(text, env, threads, device)


@dataclass(frozen=True)
class MachineJob:
    """One fine-tune of ``reference`` in a child process (what ``finetune_from`` takes)."""

    machine: Machine
    reference: str
    data: str
    out: str
    seed: int
    batch_size: int
    epochs: int
    lr: float
    weight_decay: float


def _child_env(machine: Machine, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env.update(machine.env)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    src = str(Path(__file__).resolve().parents[2])  # this drift-gate, not another installed one
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def run_jobs(
    jobs: Sequence[MachineJob],
    log: Callable[[str], None],
    cores: int | None = None,
    default_threads: int = 2,
) -> list[Path]:
    """Runs every job in its own process, as many at once as their threads fit on the cores
    (at least one); returns the checkpoints in the jobs' order. An existing, up-to-date
    checkpoint is kept (``finetune_from`` decides).

    Raises:
        DataError: a job failed (its last output lines are in the message).
    """
    cores = cores or os.cpu_count() or 1
    pending = list(enumerate(jobs))
    running: list[tuple[int, MachineJob, subprocess.Popen[bytes], int, float, Path]] = []
    done: dict[int, Path] = {}
    with tempfile.TemporaryDirectory(prefix="drift-gate-jobs-") as tmp:
        while pending or running:
            busy = sum(t for *_, t, _, _ in running)
            while pending:
                i, job = pending[0]
                threads = min(job.machine.threads_used(default_threads), cores)
                if running and busy + threads > cores:
                    break
                pending.pop(0)
                spec = Path(tmp) / f"job{i}.json"
                spec.write_text(json.dumps({**asdict(job), "threads": threads}))
                logfile = Path(tmp) / f"job{i}.log"
                with logfile.open("wb") as fh:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "drift_gate.studies.machines", str(spec)],
                        env=_child_env(job.machine, threads),
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                log(
                    f"  machine {job.machine.name}: fine-tuning seed {job.seed} -> {job.out} (pid {proc.pid})"
                )
                running.append((i, job, proc, threads, time.perf_counter(), logfile))
                busy += threads
            time.sleep(0.5)
            for entry in list(running):
                i, job, proc, _, began, logfile = entry
                if proc.poll() is None:
                    continue
                running.remove(entry)
                if proc.returncode != 0:
                    for *_, other, _, _, _ in running:
                        other.kill()
                    tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
                    raise DataError(
                        f"machine {job.machine.name}: the fine-tune of {job.reference} failed "
                        f"(exit {proc.returncode}): {' | '.join(tail)}"
                    )
                log(f"  machine {job.machine.name}: done in {time.perf_counter() - began:.0f}s")
                done[i] = Path(job.out)
    return [done[i] for i in range(len(jobs))]


def _child(spec: Path) -> None:
    """The child process: one ``finetune_from`` with the job's settings."""
    import torch

    from drift_gate.data.datasets import load_dataset
    from drift_gate.training.pipeline import finetune_from
    from drift_gate.training.profiles import PhaseConfig

    job = json.loads(spec.read_text())
    torch.set_num_threads(int(job["threads"]))
    machine = job["machine"]
    device = torch.device(machine["device"])
    finetune_from(
        Path(job["reference"]),
        load_dataset(Path(job["data"])),
        PhaseConfig(job["epochs"], job["lr"], job["weight_decay"]),
        out=Path(job["out"]),
        seed=int(job["seed"]),
        batch_size=int(job["batch_size"]),
        device=device,
        progress=False,
        machine=machine["name"],
    )


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
