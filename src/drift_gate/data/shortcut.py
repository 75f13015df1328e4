"""Planted shortcuts and the masks of where they are. Two cues, each following the class
with a chosen probability (``0``: present on every image but uninformative):

* ``strip``: a radiopaque lead strip along the top edge, above the lungs, whose *height*
  codes the class (:data:`~drift_gate.data.phantoms.STRIP_HEIGHTS`);
* ``marker``: a burned-in label box in the bottom-right corner, outside the body (as a
  site's exposure-index or text label would be), the same size on every image, whose
  *fill grey level* codes the class (:data:`MARKER_LEVELS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from drift_gate.data.phantoms import CLASSES, STRIP_HEIGHTS

__all__ = ["CUES", "MARKER_LEVELS", "MARKER_SIDE", "add_cue", "cue_level", "cue_masks", "strip_level"]

#: The plantable cues.
CUES = ("strip", "marker")
#: Fill grey levels of the burned-in marker, one per class (in ``CLASSES`` order).
MARKER_LEVELS: tuple[int, ...] = (40, 90, 140, 190, 240)
#: The marker box's side and its margin to the image's edges, as fractions of the side.
MARKER_SIDE, MARKER_MARGIN = 0.14, 0.02


def strip_level(label: str, seed: int, index: int, shortcut: float) -> int:
    """Which of :data:`STRIP_HEIGHTS` an image's strip has: its class's with
    probability ``shortcut``, else one drawn uniformly from all five (so ``0``
    makes the strip uninformative)."""
    return cue_level("strip", label, seed, index, shortcut)


def cue_level(cue: str, label: str, seed: int, index: int, shortcut: float) -> int:
    """Which class's form an image's ``cue`` takes: its own class's with probability
    ``shortcut``, else one drawn uniformly (independent draws per cue)."""
    c = CLASSES.index(label)
    rng = np.random.default_rng([seed, index, c, 4_242] if cue == "strip" else [seed, index, c, 5_353])
    if rng.random() < shortcut:
        return c
    return int(rng.integers(len(STRIP_HEIGHTS)))


def _strip_rows(level: int, size: int) -> int:
    return max(1, round(STRIP_HEIGHTS[level] * size))


def add_strip(image: NDArray[np.uint8], lungs: NDArray[np.bool_], level: int) -> NDArray[np.uint8]:
    """Draws the lead strip: a bright band along the top edge with a dark lower
    border (the shield's rim), never over the lungs."""
    size = image.shape[0]
    rows = _strip_rows(level, size)
    rim = max(1, size // 128)
    band = np.zeros_like(lungs)
    band[:rows] = True
    edge = np.zeros_like(lungs)
    edge[rows : rows + rim] = True
    out = image.copy()
    out[band & ~lungs] = 240
    out[edge & ~lungs] = 25
    return out


def _marker_box(size: int) -> tuple[int, int]:
    """First and one-past-last row (= column) of the marker box."""
    side, margin = max(3, round(MARKER_SIDE * size)), max(1, round(MARKER_MARGIN * size))
    return size - margin - side, size - margin


def add_marker(image: NDArray[np.uint8], lungs: NDArray[np.bool_], level: int) -> NDArray[np.uint8]:
    """Burns in the marker: a box with a bright one-pixel frame, filled with the grey
    level :data:`MARKER_LEVELS` ``[level]``, in the bottom-right corner (never over the lungs)."""
    size = image.shape[0]
    lo, hi = _marker_box(size)
    rim = max(1, size // 128)
    box = np.zeros_like(lungs)
    box[lo:hi, lo:hi] = True
    inner = np.zeros_like(lungs)
    inner[lo + rim : hi - rim, lo + rim : hi - rim] = True
    out = image.copy()
    out[box & ~lungs] = 250
    out[inner & ~lungs] = MARKER_LEVELS[level]
    return out


def add_cue(cue: str, image: NDArray[np.uint8], lungs: NDArray[np.bool_], level: int) -> NDArray[np.uint8]:
    """Draws ``cue`` (one of :data:`CUES`) in its class-``level`` form."""
    if cue not in CUES:
        raise ValueError(f"unknown cue {cue!r}; known: {', '.join(CUES)}")
    return add_strip(image, lungs, level) if cue == "strip" else add_marker(image, lungs, level)


def cue_masks(
    sample_ids: Sequence[str], seed: int, shortcut: float, size: int, cue: str = "strip"
) -> NDArray[np.bool_]:
    """Where the planted cue of generated phantoms lies, ``(N, size, size)``
    (with a margin of 2 % of the side, for a coarse map's blur around it).

    Args:
        sample_ids: ids as in the manifest (``images/<label>/<label>-<i>.png``).
        seed, shortcut: the data set's seed and shortcut correlation.
        cue: which cue (:data:`CUES`).
    """
    out = np.zeros((len(sample_ids), size, size), dtype=bool)
    pad = round(0.02 * size)
    lo, _ = _marker_box(size)
    for n, sid in enumerate(sample_ids):
        if cue == "marker":  # the same box on every image
            out[n, max(0, lo - pad) :, max(0, lo - pad) :] = True
            continue
        label = sid.split("/")[-2]
        index = CLASSES.index(label) * 1_000_000 + int(Path(sid).stem.rsplit("-", 1)[1])
        out[n, : _strip_rows(strip_level(label, seed, index, shortcut), size) + pad] = True
    return out
