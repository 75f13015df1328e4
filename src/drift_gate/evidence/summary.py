"""Sample selection and per-group summaries (bootstrap CIs) of per-sample metrics. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from drift_gate.evidence.registry import METRICS

__all__ = ["Summary", "select_samples", "summarise"]


def select_samples(
    labels: ArrayLike, reference_pred: ArrayLike, candidate_pred: ArrayLike, mode: str = "true-positive"
) -> np.ndarray:
    """Which samples enter the drift statistics.

    Args:
        mode: ``true-positive`` (classified correctly by both reference and
            candidate: the study's choice) or ``all``.
    """
    y = np.asarray(labels)
    if mode == "all":
        return np.ones(len(y), dtype=bool)
    if mode != "true-positive":
        raise ValueError(f"unknown sample selection {mode!r}; use 'true-positive' or 'all'")
    chosen: np.ndarray = (np.asarray(reference_pred) == y) & (np.asarray(candidate_pred) == y)
    return chosen


@dataclass(frozen=True)
class Summary:
    """Statistics of one metric over the selected, non-degenerate samples.

    ``n`` counts the samples used; ``n_degenerate`` those selected but left out
    because a map was constant. With ``n == 0`` every statistic is ``None``.
    """

    n: int
    n_degenerate: int
    mean: float | None
    median: float | None
    std: float | None
    p10: float | None
    p90: float | None
    ci_low: float | None
    ci_high: float | None


def _summary(values: np.ndarray, n_degenerate: int, n_boot: int, rng: np.random.Generator) -> Summary:
    n = len(values)
    if n == 0:
        return Summary(0, n_degenerate, None, None, None, None, None, None, None)
    boot = values[rng.integers(0, n, size=(n_boot, n))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return Summary(
        n,
        n_degenerate,
        float(values.mean()),
        float(np.median(values)),
        float(values.std(ddof=1)) if n > 1 else 0.0,
        float(np.percentile(values, 10)),
        float(np.percentile(values, 90)),
        float(lo),
        float(hi),
    )


def summarise(
    values: Mapping[str, np.ndarray],
    selected: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Summary]]:
    """Aggregates per-sample metrics overall and per class.

    Args:
        values: output of :func:`drift_metrics`.
        selected: boolean mask from :func:`select_samples`.
        labels: class index of every sample.
        n_boot: bootstrap resamples for the 95 % CI of the mean.
        seed: bootstrap seed (results are reproducible).

    Samples whose value is NaN without being degenerate (localisation metrics of
    an image without a ground-truth mask) do not enter that metric's summary.

    Returns:
        metric -> group (``overall`` or a class name) -> :class:`Summary`.
    """
    degenerate = np.asarray(values["degenerate"], dtype=bool)
    labels = np.asarray(labels)
    groups = {"overall": np.ones(len(labels), dtype=bool)}
    groups.update({c: labels == i for i, c in enumerate(classes)})
    out: dict[str, dict[str, Summary]] = {}
    for name in METRICS:
        if name not in values:
            continue
        out[name] = {}
        for gi, (group, member) in enumerate(groups.items()):
            use = selected & member
            rng = np.random.default_rng([seed, gi, list(METRICS).index(name)])
            v = np.asarray(values[name], dtype=np.float64)
            out[name][group] = _summary(
                v[use & ~degenerate & ~np.isnan(v)], int((use & degenerate).sum()), n_boot, rng
            )
    return out
