"""Exception hierarchy. ``str(error)`` is the one-line message the user sees.

The CLI maps every :class:`DriftGateError` to its ``exit_code`` in one place
(:func:`drift_gate.cli.main`); nothing else prints tracebacks for them.
"""

from __future__ import annotations

__all__ = [
    "BundleMismatchError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DriftGateError",
    "ExportError",
    "StaleBaselineError",
    "WeightsUnavailableError",
]


class DriftGateError(Exception):
    """Base class: a usage or input error (exit code 2)."""

    exit_code = 2


class ConfigError(DriftGateError):
    """An invalid profile, option or configuration value."""


class DataError(DriftGateError):
    """Unreadable, inconsistent or unusable input data."""


class CheckpointError(DriftGateError):
    """A checkpoint that cannot be used: corrupt, foreign, unsafe or mismatched."""


class WeightsUnavailableError(DriftGateError):
    """Pretrained weights are not available offline."""


class StaleBaselineError(DriftGateError):
    """A baseline that is missing, damaged, tampered or does not fit the candidate."""


class ExportError(DriftGateError):
    """The exported model does not reproduce the checkpoint (nothing was written)."""


class BundleMismatchError(DriftGateError):
    """An evidence bundle whose files do not match its manifest or signature (exit code 1:
    the check ran and failed, as a gate's rule does)."""

    exit_code = 1
