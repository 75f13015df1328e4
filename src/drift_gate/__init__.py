"""drift-gate: a regression gate for the evidence behind medical-imaging models."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
