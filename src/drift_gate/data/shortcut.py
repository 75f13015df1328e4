"""Planted shortcuts and the masks of where they are. Two cues, each following the class
with a chosen probability (``0``: present on every image but uninformative):

* ``strip``: a radiopaque lead strip along the top edge, above the lungs, whose *height*
  codes the class (:data:`STRIP_HEIGHTS`);
* ``marker``: a burned-in label box in the bottom-right corner, outside the body (as a
  site's exposure-index or text label would be), the same size on every image, whose
  *fill grey level* codes the class (:data:`MARKER_LEVELS`);
* ``drain``: a chest drain — a bright tube entering from the right edge *over the lung
  field*, where the findings are (chest drains predict pneumothorax in real data sets:
  Oakden-Rayner et al., 2020) — whose *entry height* codes the class
  (:data:`DRAIN_ROWS`). Unlike the other two it lies inside the anatomy, so a map that
  moved onto it still looks like a map on the lung.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from drift_gate.data.classes import CLASSES

__all__ = [
    "CUES",
    "DRAIN_ROWS",
    "MARKER_LEVELS",
    "MARKER_SIDE",
    "STRIP_HEIGHTS",
    "add_cue",
    "cue_level",
    "cue_masks",
    "strip_level",
]

#: The plantable cues.
CUES = ("strip", "marker", "drain")
#: Heights of the lead strip, one per class (in :data:`CLASSES` order), as fractions of
#: the image side; the phantoms' lungs start below the tallest.
STRIP_HEIGHTS: tuple[float, ...] = (0.02, 0.04, 0.06, 0.08, 0.10)
#: Heights (fractions of the side) at which the drain crosses the lung, one per class.
DRAIN_ROWS: tuple[float, ...] = (0.28, 0.35, 0.42, 0.49, 0.56)
#: Columns (fractions of the side) between which the drain runs: from the right edge inwards.
DRAIN_COLUMNS = (0.58, 0.96)
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
    if cue not in CUES:
        raise ValueError(f"unknown cue {cue!r}; known: {', '.join(CUES)}")
    salt = {"strip": 4_242, "marker": 5_353, "drain": 6_767}[cue]
    rng = np.random.default_rng([seed, index, c, salt])
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


def _drain_line(level: int, size: int) -> tuple[NDArray[np.int64], NDArray[np.int64], int]:
    """Columns, rows (centre line) and half-thickness of the drain: it slopes down by 4 % of
    the side from its entry at the right edge to its tip over the lung."""
    lo, hi = (round(f * size) for f in DRAIN_COLUMNS)
    cols = np.arange(lo, hi)
    entry = DRAIN_ROWS[level] * size
    rows = np.round(entry + 0.04 * size * (hi - cols) / max(hi - lo, 1)).astype(np.int64)
    return cols, rows, max(1, size // 128)


def add_drain(image: NDArray[np.uint8], lungs: NDArray[np.bool_], level: int) -> NDArray[np.uint8]:
    """Draws the drain: a bright tube with a dark lumen, over the lung, entering at the
    class-``level`` height (:data:`DRAIN_ROWS`)."""
    size = image.shape[0]
    cols, rows, half = _drain_line(level, size)
    out = image.copy()
    for dr in range(-2 * half, 2 * half + 1):
        r = np.clip(rows + dr, 0, size - 1)
        out[r, cols] = 230 if abs(dr) > half // 2 else 150
    return out


def add_cue(cue: str, image: NDArray[np.uint8], lungs: NDArray[np.bool_], level: int) -> NDArray[np.uint8]:
    """Draws ``cue`` (one of :data:`CUES`) in its class-``level`` form."""
    if cue not in CUES:
        raise ValueError(f"unknown cue {cue!r}; known: {', '.join(CUES)}")
    draw = {"strip": add_strip, "marker": add_marker, "drain": add_drain}[cue]
    return draw(image, lungs, level)


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
        if cue == "drain":
            cols, rows, half = _drain_line(cue_level("drain", label, seed, index, shortcut), size)
            for c, r in zip(cols.tolist(), rows.tolist(), strict=True):
                out[n, max(0, r - 2 * half - pad) : r + 2 * half + pad + 1, max(0, c - pad) : c + pad + 1] = (
                    True
                )
            continue
        out[n, : _strip_rows(strip_level(label, seed, index, shortcut), size) + pad] = True
    return out
