"""The phantom task's classes, in the order of their indices: what the renderer
(:mod:`drift_gate.data.phantoms`) and the planted cues (:mod:`drift_gate.data.shortcut`)
both index by, kept below both so that neither imports the other for it."""

from __future__ import annotations

__all__ = ["CLASSES"]

CLASSES: tuple[str, ...] = (
    "normal",
    "bacterial_pneumonia",
    "viral_pneumonia",
    "covid19",
    "tuberculosis",
)
