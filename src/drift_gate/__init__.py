"""drift-gate: a regression gate for the evidence behind medical-imaging models.

The public API (:mod:`drift_gate.api`): :func:`gate`, :func:`baseline`,
:func:`approve`, :func:`train`, :func:`export`, :func:`phantoms`, and the studies
:func:`study`, :func:`track`, :func:`calibrate`, :func:`validate`; their results
(:class:`GateResult`, :class:`CandidateResult`, :class:`RuleResult` with a
:class:`Status`), the rules (:class:`Thresholds`, :func:`load_thresholds`),
preprocessing (:class:`Preprocess`), models drift-gate did not train
(:class:`ModelSpec`, :func:`load_spec`) and the CAM engine on any module
(:class:`CamEngine`, :func:`find_layer`), and the errors. Names are imported on
first use, so ``import drift_gate`` loads no torch.

Packages follow the data flow: :mod:`drift_gate.data` (data sets, preprocessing,
phantoms) -> :mod:`drift_gate.models` (backbones, checkpoints, ONNX) ->
:mod:`drift_gate.training` -> :mod:`drift_gate.evidence` (CAMs and metrics, pure)
-> :mod:`drift_gate.gating` (thresholds, baselines, the gate, reports);
:mod:`drift_gate.studies` builds on all of them and :mod:`drift_gate.cli` is the
command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from drift_gate._version import __version__

_WHERE = {
    "gate": "drift_gate.api",
    "baseline": "drift_gate.api",
    "approve": "drift_gate.api",
    "train": "drift_gate.api",
    "export": "drift_gate.api",
    "keygen": "drift_gate.api",
    "bundle": "drift_gate.api",
    "verify_bundle": "drift_gate.api",
    "phantoms": "drift_gate.api",
    "study": "drift_gate.studies.api",
    "track": "drift_gate.studies.api",
    "calibrate": "drift_gate.studies.api",
    "validate": "drift_gate.studies.api",
    "Approval": "drift_gate.api",
    "Export": "drift_gate.api",
    "GateResult": "drift_gate.gating.gate",
    "CandidateResult": "drift_gate.gating.gate",
    "RuleResult": "drift_gate.gating.rules",
    "Status": "drift_gate.gating.rules",
    "Thresholds": "drift_gate.gating.thresholds",
    "load_thresholds": "drift_gate.gating.thresholds",
    "Preprocess": "drift_gate.data.preprocess",
    "ModelSpec": "drift_gate.models.spec",
    "load_spec": "drift_gate.models.spec",
    "CamEngine": "drift_gate.evidence.cam",
    "find_layer": "drift_gate.models.layers",
    "DriftGateError": "drift_gate.errors",
    "ConfigError": "drift_gate.errors",
    "DataError": "drift_gate.errors",
    "CheckpointError": "drift_gate.errors",
    "StaleBaselineError": "drift_gate.errors",
}

__all__ = [
    "Approval",
    "CamEngine",
    "CandidateResult",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DriftGateError",
    "Export",
    "GateResult",
    "ModelSpec",
    "Preprocess",
    "RuleResult",
    "StaleBaselineError",
    "Status",
    "Thresholds",
    "__version__",
    "approve",
    "baseline",
    "bundle",
    "calibrate",
    "export",
    "find_layer",
    "gate",
    "keygen",
    "load_spec",
    "load_thresholds",
    "phantoms",
    "study",
    "track",
    "train",
    "validate",
    "verify_bundle",
]


def __getattr__(name: str) -> Any:
    """Imports a public name from its module on first use (PEP 562)."""
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'drift_gate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from drift_gate.api import (
        Approval,
        Export,
        approve,
        baseline,
        bundle,
        export,
        gate,
        keygen,
        phantoms,
        train,
        verify_bundle,
    )
    from drift_gate.data.preprocess import Preprocess
    from drift_gate.errors import CheckpointError, ConfigError, DataError, DriftGateError, StaleBaselineError
    from drift_gate.gating.gate import CandidateResult, GateResult
    from drift_gate.gating.rules import RuleResult, Status
    from drift_gate.gating.thresholds import Thresholds, load_thresholds
    from drift_gate.studies.api import calibrate, study, track, validate
