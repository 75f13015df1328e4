"""Calibration runs kept as numbers (``runs.json``), and pooled across sessions and machines.

A calibration run is minutes to an hour of training, and its checkpoints stay on the machine
that made them. A proposal from one ``calibrate`` call can only use the runs that call can
afford: four pretraining draws on two cores, and with four draws the tolerance factor is
7.04 (3.98 for ten). So ``calibrate`` also writes what it measured on each run to
``runs.json``: the summaries every bound is computed from, the AUCs, the swap drops and the
machine. ``calibrate --add-runs FILE`` pools the runs of earlier files, made in other
sessions or on other machines, with its own. Draws then accumulate, and a real other CPU's
spread enters the bound.

Runs are pooled only where they measure the same thing. The file's key (:func:`runs_key`)
holds:

* the training code and the measuring code (hashes of their source);
* each backbone's training settings and audit set;
* the rules' settings that shape a measurement.

A file that differs in any of them is refused, and the error names what differs. A run
already in the pool (the same candidate checkpoint, by sha256) is counted once. A file is
hostile input: its size is bounded and every field is checked before a number is used.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drift_gate._io import atomic_write_text, code_sha256, read_bounded
from drift_gate._machine import is_machine
from drift_gate.errors import ConfigError
from drift_gate.evidence.registry import METRICS

if TYPE_CHECKING:
    from drift_gate.gating.gate import CandidateResult
    from drift_gate.gating.thresholds import Thresholds

__all__ = [
    "FORMAT",
    "StoredRun",
    "differences",
    "pool_runs",
    "read_runs",
    "runs_key",
    "stored_run",
    "write_runs",
]

#: the version of ``runs.json``'s layout
FORMAT = 1
#: what the measurements depend on besides the training code: maps, metrics, summaries, the gate
MEASURING_CODE = ("evidence", "gating")
#: the summary groups a proposal reads (:mod:`drift_gate.studies.calibrate`)
GROUPS = ("overall", "newly_correct")
#: the one-number-per-run rules a proposal reads
DROPS = ("counterfactual_drop", "corner_drop")
_SUMMARY_INTS = ("n", "n_degenerate")
_SUMMARY_FLOATS = ("mean", "median", "std", "p10", "p90", "ci_low", "ci_high")
_MAX_BYTES = 32 * 1024 * 1024
_MAX_RUNS = 10_000
_NAME = re.compile(r"[A-Za-z0-9_.:+-]{1,64}")
_SHA = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredRun:
    """What one calibration run measured, as a proposal needs it."""

    arch: str
    #: ``seed``, ``tl``, ``pretrain`` or an emulated machine (``aten:default``)
    source: str
    seed: int
    #: whether the run stands for a pretraining draw of its own (the profile's fine-tune
    #: of its calibration, each ``pretrain`` run; :func:`~drift_gate.studies.calibrate.draw_runs`)
    draw: bool
    checkpoint: str
    candidate_sha256: str
    auc: float
    reference_auc: float
    n_selected: int
    n_audit: int
    #: method -> metric -> group (:data:`GROUPS`) -> a :class:`~drift_gate.evidence.summary.Summary` as a dict
    summaries: dict[str, dict[str, dict[str, dict[str, Any]]]]
    #: :data:`DROPS` -> the rule's observed value, where the run's rules had it
    drops: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] | None = None
    #: the file the run was read from (``""``: measured by this call); not stored
    origin: str = ""


def stored_run(source: str, seed: int, draw: bool, checkpoint: Path, c: CandidateResult) -> StoredRun:
    """``c``, a calibration run gated against its reference, as a :class:`StoredRun`."""
    summaries = {
        method: {
            metric: {g: dict(groups[g]) for g in GROUPS if g in groups}
            for metric, groups in by_metric.items()
        }
        for method, by_metric in c.summaries.items()
    }
    drops = {
        r.metric: float(r.observed)
        for r in c.rules
        if r.metric in DROPS and isinstance(r.observed, int | float) and math.isfinite(r.observed)
    }
    return StoredRun(
        c.arch,
        source,
        seed,
        draw,
        str(checkpoint),
        c.candidate_sha256,
        float(c.auc),
        float(c.reference_auc),
        int(c.n_selected),
        int(c.n_audit),
        summaries,
        drops,
        c.machines.get("candidate"),
    )


def runs_key(thresholds: Thresholds, per_class: int, backbones: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What runs must share to be pooled: the code that trained and measured them, the rules'
    settings that shape a measurement, and per backbone (``backbones``: arch -> ``{"training":
    the profile's FT training key, "audit": the audit set's sha256}``) what it was trained and
    gated on."""
    return {
        "training_code": code_sha256(),
        "measuring_code": code_sha256(MEASURING_CODE),
        "rules": {
            "methods": list(thresholds.methods),
            "samples": thresholds.samples,
            "statistic": thresholds.statistic,
            "per_class": per_class,
            "counterfactual": {
                **thresholds.counterfactual_settings(),
                "paired": thresholds.counterfactual_paired,
            }
            if thresholds.counterfactual_border is not None
            else None,
        },
        "backbones": backbones,
    }


def write_runs(path: Path, key: dict[str, Any], runs: list[StoredRun]) -> None:
    """``runs`` (this call's, not those it pooled) and their ``key`` to ``path``, atomically."""

    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    lines = [compact({k: v for k, v in asdict(r).items() if k != "origin"}) for r in runs]
    # one run per line: a committed file's diff shows which runs came or went
    head = f'{{"format":{FORMAT},"key":{compact(key)},"runs":[\n'
    atomic_write_text(path, head + ",\n".join(lines) + "\n]}\n")


def read_runs(path: Path) -> tuple[dict[str, Any], list[StoredRun]]:
    """``(key, runs)`` of a ``runs.json``, every field checked.

    Raises:
        ConfigError: unreadable, too large, not this format, or a field out of shape.
    """
    raw = read_bounded(Path(path), _MAX_BYTES, "calibration runs file", ConfigError)
    try:
        doc = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a calibration runs file ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != {"format", "key", "runs"}:
        raise ConfigError(f"{path}: not a calibration runs file (expected format, key and runs)")
    if type(doc["format"]) is not int or doc["format"] != FORMAT:  # ``true == 1`` in Python
        raise ConfigError(f"{path}: runs file format {doc['format']!r}; this drift-gate reads {FORMAT}")
    key, runs = doc["key"], doc["runs"]
    _check_key(path, key)
    if not isinstance(runs, list) or not 0 < len(runs) <= _MAX_RUNS:
        raise ConfigError(f"{path}: runs must be a list of 1 to {_MAX_RUNS} runs")
    out = [_run(path, i, r, key) for i, r in enumerate(runs)]
    return key, out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a run can hold")


def _check_key(path: Path, key: Any) -> None:
    ok = (
        isinstance(key, dict)
        and set(key) == {"training_code", "measuring_code", "rules", "backbones"}
        and all(
            isinstance(key[k], str) and _SHA.fullmatch(key[k]) for k in ("training_code", "measuring_code")
        )
        and isinstance(key["rules"], dict)
        and isinstance(key["backbones"], dict)
        and all(
            isinstance(a, str)
            and _NAME.fullmatch(a)
            and isinstance(v, dict)
            and set(v) == {"training", "audit"}
            and all(isinstance(s, str) and _SHA.fullmatch(s) for s in v.values())
            for a, v in key["backbones"].items()
        )
    )
    if not ok:
        raise ConfigError(f"{path}: the runs file's key is malformed")


def _bad(path: Path, i: int, what: str) -> ConfigError:
    return ConfigError(f"{path}: run {i + 1}: {what}")


def _number(value: Any, *, none: bool = False) -> bool:
    if value is None:
        return none
    return type(value) in (int, float) and math.isfinite(value)


def _summaries(path: Path, i: int, value: Any, methods: list[Any]) -> dict[str, Any]:
    if not isinstance(value, dict) or not set(value) <= set(methods):
        raise _bad(path, i, "summaries must be keyed by the key's methods")
    for by_metric in value.values():
        if not isinstance(by_metric, dict) or not set(by_metric) <= set(METRICS):
            raise _bad(path, i, "summaries hold an unknown metric")
        for groups in by_metric.values():
            if not isinstance(groups, dict) or not set(groups) <= set(GROUPS):
                raise _bad(path, i, f"a metric's groups must be among {', '.join(GROUPS)}")
            for s in groups.values():
                ok = (
                    isinstance(s, dict)
                    and set(s) == set(_SUMMARY_INTS + _SUMMARY_FLOATS)
                    and all(type(s[k]) is int and 0 <= s[k] <= 10**7 for k in _SUMMARY_INTS)
                    and all(_number(s[k], none=True) for k in _SUMMARY_FLOATS)
                )
                if not ok:
                    raise _bad(path, i, "a summary is malformed")
    return value


_FIELDS = {
    "arch",
    "source",
    "seed",
    "draw",
    "checkpoint",
    "candidate_sha256",
    "auc",
    "reference_auc",
    "n_selected",
    "n_audit",
    "summaries",
    "drops",
    "machine",
}


def _run(path: Path, i: int, r: Any, key: dict[str, Any]) -> StoredRun:
    if not isinstance(r, dict) or set(r) != _FIELDS:
        raise _bad(path, i, f"expected the fields {', '.join(sorted(_FIELDS))}")
    if r["arch"] not in key["backbones"]:
        raise _bad(path, i, "its backbone is not in the file's key")
    checks = {
        "source": isinstance(r["source"], str) and bool(_NAME.fullmatch(r["source"])),
        "seed": type(r["seed"]) is int and 0 <= r["seed"] < 2**32,
        "draw": type(r["draw"]) is bool,
        "checkpoint": isinstance(r["checkpoint"], str) and len(r["checkpoint"]) <= 1000,
        "candidate_sha256": isinstance(r["candidate_sha256"], str)
        and bool(_SHA.fullmatch(r["candidate_sha256"])),
        "auc": _number(r["auc"]) and 0 <= r["auc"] <= 1,
        "reference_auc": _number(r["reference_auc"]) and 0 <= r["reference_auc"] <= 1,
        "n_audit": type(r["n_audit"]) is int and 0 < r["n_audit"] <= 10**7,
        "n_selected": type(r["n_selected"]) is int and 0 <= r["n_selected"] <= 10**7,
        "drops": isinstance(r["drops"], dict)
        and set(r["drops"]) <= set(DROPS)
        and all(_number(v) and -1 <= v <= 1 for v in r["drops"].values()),
        "machine": r["machine"] is None or is_machine(r["machine"]),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise _bad(path, i, f"malformed {', '.join(bad)}")
    summaries = _summaries(path, i, r["summaries"], key["rules"].get("methods", []))
    return StoredRun(**{**r, "summaries": summaries, "origin": str(path)})


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Where two keys differ: the code, a rule's setting, a shared backbone's training or
    audit set (a backbone only one of them has is no conflict)."""
    out = [name.replace("_", " ") for name in ("training_code", "measuring_code") if a[name] != b[name]]
    rules = sorted(set(a["rules"]) | set(b["rules"]))
    out += [f"the rules' {name}" for name in rules if a["rules"].get(name) != b["rules"].get(name)]
    for arch in sorted(set(a["backbones"]) & set(b["backbones"])):
        out += [
            f"{arch}'s {'training settings' if part == 'training' else 'audit set'}"
            for part in ("training", "audit")
            if a["backbones"][arch][part] != b["backbones"][arch][part]
        ]
    return out


def pool_runs(
    key: dict[str, Any],
    runs: list[StoredRun],
    files: list[tuple[Path, dict[str, Any], list[StoredRun]]],
    arches: set[str] | None = None,
) -> tuple[list[StoredRun], list[dict[str, Any]]]:
    """``runs`` with the runs of ``files`` (``(path, key, runs)`` from :func:`read_runs`) of the
    backbones ``arches`` (default: those ``runs`` has), and per file what was pooled
    (``file``, ``runs``, ``pooled``, ``duplicates``). A run whose checkpoint is already in the
    pool is counted once.

    Raises:
        ConfigError: a file's key differs from ``key`` (the message says where).
    """
    arches = {r.arch for r in runs} if arches is None else arches
    seen = {r.candidate_sha256 for r in runs}
    pooled, report = list(runs), []
    for path, other, extra in files:
        differ = differences(key, other)
        if differ:
            raise ConfigError(
                f"{path}: its runs measured something else (differing: {'; '.join(differ)}); only runs "
                "of the same code, rules, training settings and audit set are pooled: calibrate afresh"
            )
        used = [r for r in extra if r.arch in arches]
        fresh = []
        for r in used:
            if r.candidate_sha256 not in seen:
                seen.add(r.candidate_sha256)
                fresh.append(r)
        pooled += fresh
        report.append(
            {
                "file": str(path),
                "runs": len(extra),
                "pooled": len(fresh),
                "duplicates": len(used) - len(fresh),
            }
        )
    return pooled, report
