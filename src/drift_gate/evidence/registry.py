"""The metric registry: every metric's name, which way is better, its ideal value, a
one-line description and, for a metric that compares two maps, its formula. Thresholds,
reports, calibration and :func:`~drift_gate.evidence.metrics.drift_metrics` read it; none
lists metrics again. A new pairwise metric is one entry here (and its test).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from torch import Tensor

__all__ = [
    "CORE_METRICS",
    "COUNTERFACTUAL_METRICS",
    "FAITHFULNESS_METRICS",
    "LOCALISATION_METRICS",
    "METRICS",
    "PAIRWISE_METRICS",
    "RANK_METRICS",
    "ArrayLike",
    "Direction",
    "MetricSpec",
]


ArrayLike = np.ndarray | Tensor


class Direction(enum.Enum):
    """Which way a metric is better."""

    HIGHER = "higher"
    LOWER = "lower"
    ZERO = "closer to 0"


class MapStats(Protocol):
    """One batch of maps' statistics that pairwise formulas read, per map (from raw values;
    min-max normalisation folded in)."""

    @property
    def centroid(self) -> Tensor: ...  # (N, 2) intensity-weighted centroid (row, column)
    @property
    def peak(self) -> Tensor: ...  # (N, 2) the first maximum (row, column)
    @property
    def span(self) -> Tensor: ...  # (N,) max - min
    @property
    def concentration(self) -> Tensor: ...  # (N,) share of the mass in the top 10 % of pixels


class Pairs(Protocol):
    """What a pairwise formula reads of a chunk of map pairs (A: reference, B: candidate),
    computed once for every formula (:class:`drift_gate.evidence.metrics.ChunkPairs`)."""

    @property
    def a(self) -> MapStats: ...
    @property
    def b(self) -> MapStats: ...
    @property
    def fa(self) -> Tensor: ...  # (N, P) A's raw maps, flattened
    @property
    def fb(self) -> Tensor: ...
    @property
    def k(self) -> int: ...  # pixels in each top-q mask
    @property
    def overlap(self) -> Tensor: ...  # (N,) pixels in both top-q masks
    @property
    def diagonal(self) -> float: ...  # the map's diagonal, in cells
    def pearson(
        self, x: Tensor, y: Tensor, span_x: Tensor | None = None, span_y: Tensor | None = None
    ) -> Tensor: ...  # Pearson r per row
    def ranks(self, flat: Tensor) -> Tensor: ...  # average ranks per row
    def gini(self, flat: Tensor) -> Tensor: ...  # Gini coefficient per row
    def minmax(self, flat: Tensor) -> Tensor: ...  # each row min-max normalised


@dataclass(frozen=True)
class MetricSpec:
    """A drift metric's declared properties.

    Attributes:
        name: the metric's key in results and in ``thresholds.toml``.
        direction: which way is better.
        ideal: the value for identical maps (``None`` where it depends on the
            maps themselves, as for the reference-based localisation metrics).
        description: one line for reports.
        range: the values the metric can take (bounds outside it are refused).
        title: its name in table headings, where not the name in words (``IoU``).
        formula: for a metric of two maps (A: reference, B: candidate), its value for each
            pair of a chunk from the statistics the chunk shares
            (:class:`Pairs`); written only here.
    """

    name: str
    direction: Direction
    ideal: float | None
    description: str
    range: tuple[float, float] = (0.0, 1.0)
    title: str = ""
    formula: Callable[[Pairs], Tensor] | None = field(default=None, compare=False, repr=False)

    @property
    def heading(self) -> str:
        """The metric's name in a table heading (``title``, else the name in words)."""
        return self.title or self.name.replace("_", " ")


METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec(
            "displacement",
            Direction.LOWER,
            0.0,
            "distance between intensity-weighted centroids / image diagonal",
            formula=lambda p: (p.a.centroid - p.b.centroid).norm(dim=1) / p.diagonal,
        ),
        MetricSpec(
            "peak_displacement",
            Direction.LOWER,
            0.0,
            "distance between the maps' maxima / image diagonal",
            formula=lambda p: (p.a.peak - p.b.peak).norm(dim=1) / p.diagonal,
        ),
        MetricSpec(
            "iou",
            Direction.HIGHER,
            1.0,
            "IoU of the top-q pixel masks",
            title="IoU",
            formula=lambda p: p.overlap / (2 * p.k - p.overlap),  # both masks hold exactly k pixels
        ),
        MetricSpec(
            "correlation",
            Direction.HIGHER,
            1.0,
            "Pearson correlation of the maps",
            (-1.0, 1.0),
            formula=lambda p: p.pearson(p.fa, p.fb, p.a.span, p.b.span),
        ),
        MetricSpec(
            "spearman",
            Direction.HIGHER,
            1.0,
            "Spearman rank correlation of the maps",
            (-1.0, 1.0),
            formula=lambda p: p.pearson(p.ranks(p.fa), p.ranks(p.fb)),
        ),
        MetricSpec(
            "concentration_change",
            Direction.ZERO,
            0.0,
            "top-10 % mass share of B minus that of A",
            (-1.0, 1.0),
            formula=lambda p: p.b.concentration - p.a.concentration,
        ),
        MetricSpec(
            "gini_change",
            Direction.ZERO,
            0.0,
            "Gini coefficient of B minus that of A",
            (-1.0, 1.0),
            formula=lambda p: p.gini(p.minmax(p.fb)) - p.gini(p.minmax(p.fa)),
        ),
        # Reference-based: need a ground-truth finding mask per sample (NaN without one).
        MetricSpec(
            "pointing_game",
            Direction.HIGHER,
            None,
            "1 if the candidate map's maximum lies inside the ground-truth mask, else 0",
        ),
        MetricSpec(
            "mask_energy", Direction.HIGHER, None, "share of the candidate map's mass inside the mask"
        ),
        MetricSpec(
            "reference_pointing_game",
            Direction.HIGHER,
            None,
            "1 if the reference map's maximum lies inside the ground-truth mask, else 0",
        ),
        MetricSpec(
            "reference_mask_energy",
            Direction.HIGHER,
            None,
            "share of the reference map's mass inside the mask",
        ),
        # Faithfulness (opt-in, [faithfulness]): deletion/insertion on the candidate model.
        MetricSpec(
            "faithfulness",
            Direction.HIGHER,
            None,
            "insertion minus deletion area of the candidate's map on the candidate model",
            (-1.0, 1.0),
        ),
        MetricSpec(
            "reference_faithfulness",
            Direction.HIGHER,
            None,
            "insertion minus deletion area of the reference's map on the candidate model",
            (-1.0, 1.0),
        ),
        MetricSpec(
            "faithfulness_change",
            Direction.HIGHER,
            0.0,
            "faithfulness minus reference_faithfulness (positive: the model relies on where its map moved)",
            (-2.0, 2.0),
        ),
        # Counterfactual (opt-in, [counterfactual]): the candidate's maps pointing outside.
        MetricSpec(
            "outside_anatomy",
            Direction.LOWER,
            None,
            "1 if the candidate map's maximum lies in the border band (outside the anatomy), else 0",
        ),
        MetricSpec(
            "counterfactual_drop",
            Direction.LOWER,
            None,
            "the candidate's score minus its score with that border region replaced (NaN: map inside)",
            (-1.0, 1.0),
        ),
        MetricSpec(
            "corner_drop",
            Direction.LOWER,
            None,
            "the candidate's score minus its score with the costliest of the border band's corners swapped",
            (-1.0, 1.0),
        ),
        MetricSpec(
            "mask_energy_change",
            Direction.HIGHER,
            0.0,
            "mask_energy minus reference_mask_energy (negative: evidence left the finding)",
            (-1.0, 1.0),
        ),
    )
}

#: Metrics that compare each map with a ground-truth mask rather than with each other.
#: The study's four drift metrics: what reports tabulate and calibration proposes bounds for.
CORE_METRICS = ("displacement", "iou", "correlation", "concentration_change")

LOCALISATION_METRICS = (
    "pointing_game",
    "mask_energy",
    "reference_pointing_game",
    "reference_mask_energy",
    "mask_energy_change",
)

#: Per-sample faithfulness metrics (computed by the gate when [faithfulness] is set).
FAITHFULNESS_METRICS = ("faithfulness", "reference_faithfulness", "faithfulness_change")
#: Metrics of the counterfactual check (computed on the candidate only, opt-in).
COUNTERFACTUAL_METRICS = ("outside_anatomy", "counterfactual_drop", "corner_drop")
#: Metrics that compare two maps with each other (what ``drift_metrics`` computes).
PAIRWISE_METRICS = tuple(name for name, spec in METRICS.items() if spec.formula is not None)

#: Metrics that need a full sort of every map (O(P log P)); opt-in in drift_metrics.
RANK_METRICS = ("spearman", "gini_change")
