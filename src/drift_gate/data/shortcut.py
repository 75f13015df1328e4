"""The planted shortcut: a radiopaque lead strip above the lungs whose height follows the
class with a chosen probability, and the masks of where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from drift_gate.data.phantoms import CLASSES, STRIP_HEIGHTS

__all__ = ["cue_masks", "strip_level"]


def strip_level(label: str, seed: int, index: int, shortcut: float) -> int:
    """Which of :data:`STRIP_HEIGHTS` an image's strip has: its class's with
    probability ``shortcut``, else one drawn uniformly from all five (so ``0``
    makes the strip uninformative)."""
    c = CLASSES.index(label)
    rng = np.random.default_rng([seed, index, c, 4_242])
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


def cue_masks(sample_ids: Sequence[str], seed: int, shortcut: float, size: int) -> NDArray[np.bool_]:
    """Where the planted strip of generated phantoms lies, ``(N, size, size)``
    (with a margin of 2 % of the side, for a coarse map's blur around it).

    Args:
        sample_ids: ids as in the manifest (``images/<label>/<label>-<i>.png``).
        seed, shortcut: the data set's seed and shortcut correlation.
    """
    out = np.zeros((len(sample_ids), size, size), dtype=bool)
    for n, sid in enumerate(sample_ids):
        label = sid.split("/")[-2]
        index = CLASSES.index(label) * 1_000_000 + int(Path(sid).stem.rsplit("-", 1)[1])
        out[n, : _strip_rows(strip_level(label, seed, index, shortcut), size) + round(0.02 * size)] = True
    return out
