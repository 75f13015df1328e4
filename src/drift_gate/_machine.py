"""The machine a result was computed on: what picks the kernels.

The same code and seed give other weights on another machine: ATen picks its kernels by the
CPU's capability (``ATEN_CPU_CAPABILITY`` caps it), oneDNN by the instruction set it may use
(``ONEDNN_MAX_CPU_ISA``), and reductions split by the thread count. So a checkpoint, a
baseline and a gate result each record the machine they came from (:func:`machine`), and a
figure read off them says where it was measured. The record is what the process sees when it
is made; it is shown, never compared: two honest runs may differ in it.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["is_machine", "machine", "machine_line", "machines_line", "well_formed"]

#: Longest text value kept (a CPU's model name is about 50 characters).
_MAX_TEXT = 200
#: The keys a record may hold.
_KEYS = ("cpu", "arch", "aten_capability", "onednn_max_cpu_isa", "threads", "gpu")


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``, else what Python's platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            name = "".join(c for c in value.strip() if c.isprintable())
            if key.strip() == "model name" and name:
                return name[:_MAX_TEXT]
    except OSError:
        pass
    return (platform.processor() or "unknown")[:_MAX_TEXT]


def machine(device: torch.device | str | None = None) -> dict[str, str | int]:
    """This process's machine: the CPU's model and architecture, ATen's CPU capability,
    oneDNN's cap (only where ``ONEDNN_MAX_CPU_ISA`` sets one), torch's thread count and,
    on a CUDA ``device``, the GPU's name."""
    out: dict[str, str | int] = {
        "cpu": _cpu_model(),
        "arch": platform.machine()[:_MAX_TEXT] or "unknown",
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
    }
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip()
    if isa:
        out["onednn_max_cpu_isa"] = isa[:_MAX_TEXT]
    out["threads"] = torch.get_num_threads()
    if device is not None and torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))[:_MAX_TEXT]
    return out


def is_machine(value: Any) -> bool:
    """Whether ``value`` (read from a file) is a record :func:`machine` could have made: a
    table of the known keys, each a short printable string (``threads`` a positive integer):
    a record is written into reports, comments and Markdown, where a line break could forge
    a line."""
    if not isinstance(value, dict) or not value or not set(value) <= set(_KEYS):
        return False
    for key, v in value.items():
        if key == "threads":
            if type(v) is not int or not 0 < v <= 4096:
                return False
        elif not isinstance(v, str) or not 0 < len(v) <= _MAX_TEXT or not v.isprintable():
            return False
    return True


def machine_line(record: dict[str, Any] | None) -> str:
    """``record`` in one line (``unknown`` for none): ``Intel(R) Xeon(R) Processor (x86_64),
    ATen AVX512, 2 threads``; oneDNN's cap and the GPU where the record has them."""
    if not record:
        return "unknown"
    parts = [f"{record.get('cpu', 'unknown CPU')} ({record.get('arch', '?')})"]
    if "aten_capability" in record:
        parts.append(f"ATen {record['aten_capability']}")
    if "onednn_max_cpu_isa" in record:
        parts.append(f"oneDNN up to {record['onednn_max_cpu_isa']}")
    if "threads" in record:
        parts.append(f"{record['threads']} thread{'s' if record['threads'] != 1 else ''}")
    if "gpu" in record:
        parts.append(f"GPU {record['gpu']}")
    return ", ".join(parts)


#: The machines behind one gate result (``CandidateResult.machines``), as reports name them.
_ROLES = (("candidate", "trained"), ("reference_maps", "reference maps"), ("gate", "gate"))


def well_formed(machines: object) -> dict[str, Any]:
    """The well-formed records of a result's ``machines`` table read from a file (the
    known roles only; anything else is dropped)."""
    if not isinstance(machines, dict):
        return {}
    return {key: machines[key] for key, _ in _ROLES if is_machine(machines.get(key))}


def machines_line(machines: dict[str, Any]) -> str:
    """The machines behind one gate result in one line: ``trained on A; reference maps on
    B; gate on C``, or ``trained, reference maps and gate on A`` where they are one; the
    roles not known are left out (``""`` if none is)."""
    known = [(role, machine_line(machines[key])) for key, role in _ROLES if machines.get(key)]
    lines = {line for _, line in known}
    if len(known) > 1 and len(lines) == 1:
        roles = [role for role, _ in known]
        return f"{', '.join(roles[:-1])} and {roles[-1]} on {lines.pop()}"
    return "; ".join(f"{role} on {line}" for role, line in known)
