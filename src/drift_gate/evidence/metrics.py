"""Drift metrics between reference maps A and candidate maps B: pure, vectorised.

Every function takes batches of non-negative maps ``(N, H, W)`` (numpy or
torch), min-max normalises each map to ``[0, 1]`` and returns one value per
pair (float64). A constant map (all zeros included) is *degenerate*: its pair
gets NaN from these functions and ``True`` from :func:`is_degenerate`, and
:func:`summarise` counts such pairs and leaves them out explicitly — a NaN never
reaches an average.

The core metrics cost O(P) per map of P pixels: top-q masks and the top-10 %
mass come from selection (``numpy.partition``), not sorting, with a deterministic
row-major tie-break. Spearman and Gini need a full sort and are opt-in in
:func:`drift_metrics`. Maps are float32; sums accumulate in float64.

Size: the statistics a chunk of pairs shares (selection, centroids, ranks, Gini), the
fused batch path and the per-metric functions that evaluate the registry's formulas stay
side by side, so the two paths are read (and tested) together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from drift_gate.evidence.registry import (
    METRICS,
    PAIRWISE_METRICS,
    RANK_METRICS,
    ArrayLike,
    Pairs,
)

__all__ = [
    "concentration",
    "concentration_change",
    "correlation",
    "displacement",
    "drift_metrics",
    "gini",
    "intra_class_consistency",
    "iou",
    "is_degenerate",
    "localisation",
    "peak_displacement",
    "spearman",
]


_TOP_MASS = 0.10


def _as_tensor(maps: ArrayLike, check: bool = True) -> Tensor:
    t = torch.as_tensor(maps)
    if t.dim() != 3:
        raise ValueError(f"expected maps of shape (N, H, W), got {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.float()
    t = t.float()
    if check and t.numel():
        lo, hi = torch.aminmax(t)  # NaN and Inf propagate into the extremes
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            raise ValueError("maps contain NaN or Inf (or values beyond the float32 range)")
        if max(-float(lo), float(hi)) > _MAX_ABS:
            raise ValueError(f"maps contain values beyond ±{_MAX_ABS:g}; rescale them")
    return t


def _normalise(t: Tensor) -> tuple[Tensor, Tensor]:
    """Min-max to [0, 1] per map; returns (maps, degenerate)."""
    flat = t.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = hi - lo
    degenerate = ~(span > 0)
    safe = torch.where(degenerate, torch.ones_like(span), span)
    return (t - lo[:, None, None]) / safe[:, None, None], degenerate


def is_degenerate(maps: ArrayLike) -> np.ndarray:
    """``True`` for maps that are constant (no spatial information)."""
    return _normalise(_as_tensor(maps))[1].numpy()


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[Tensor, Tensor, Tensor]:
    ta, tb = _as_tensor(a), _as_tensor(b)
    if ta.shape != tb.shape:
        raise ValueError(f"map shapes differ: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    na, da = _normalise(ta)
    nb, db = _normalise(tb)
    return na, nb, da | db


def _nan_where(values: Tensor, degenerate: Tensor) -> np.ndarray:
    values = values.double()
    return torch.where(degenerate, torch.full_like(values, math.nan), values).numpy()


def _sum64(t: Tensor, dim: int | tuple[int, ...]) -> Tensor:
    """Sum widened to float64. torch reduces float32 with pairwise (cascade)
    accumulation, accurate to a few ulps here, and much faster than a float64
    reduction of float32 input (which converts the whole tensor first)."""
    return t.sum(dim).double()


def _diag(m: Tensor) -> float:
    return math.hypot(m.shape[1], m.shape[2])


#: Largest map magnitude accepted: sums over a 1e6-pixel map stay within float32.
_MAX_ABS = 1e30
#: Above this value range, maps are rescaled before products are formed in float32.
_SAFE_SPAN = 1e15


def _pearson(fa: Tensor, fb: Tensor, span_a: Tensor | None = None, span_b: Tensor | None = None) -> Tensor:
    """Pearson r per row. ``span_*`` (max - min per row), when given, lets rows with a
    huge range be rescaled first (r is scale-invariant), so squares cannot overflow."""
    da = fa - fa.mean(1, keepdim=True)  # centred first: robust to large offsets
    db = fb - fb.mean(1, keepdim=True)
    for d, span in ((da, span_a), (db, span_b)):
        if span is not None and float(span.max()) > _SAFE_SPAN:
            d /= span.clamp_min(1).to(d.dtype)[:, None]
    den = (_sum64(da * da, 1) * _sum64(db * db, 1)).sqrt().clamp_min(1e-300)
    return (_sum64(da * db, 1) / den).clamp(-1, 1)


def _top_k(p: int, q: float) -> int:
    return max(1, min(p, round(q * p)))


def _mask_at(flat: Tensor, thr: Tensor, k: int) -> Tensor:
    """Mask of exactly ``k`` pixels per row: all above ``thr`` plus ties at ``thr``
    in row-major order (a deterministic tie-break)."""
    mask = flat >= thr[:, None]
    excess = mask.sum(1) != k
    if bool(excess.any()):  # rows with ties at the threshold: keep the first ones only
        rows = flat[excess]
        t = thr[excess, None]
        tied = rows == t
        room = k - (rows > t).sum(1, keepdim=True)
        mask[excess] = (rows > t) | (tied & (tied.cumsum(1) <= room))
    return mask


def _selection(flat: Tensor, q: float) -> tuple[Tensor, Tensor]:
    """Per row, by selection (``numpy.partition``, O(P)) rather than sorting: the
    k-th largest value for the top-``q`` masks, and the mass of the top 10 %."""
    x = flat.numpy()
    p = x.shape[1]
    kq, kc = _top_k(p, q), _top_k(p, _TOP_MASS)
    big, small = max(kq, kc), min(kq, kc)
    top_big = np.partition(x, p - big, axis=1)[:, p - big :]  # the `big` largest, unordered
    top_small = np.partition(top_big, big - small, axis=1)[:, big - small :]
    thr_q = (top_big if kq == big else top_small).min(1)  # k-th largest = min of the top k
    mass_c = (top_small if kc == small else top_big).sum(1, dtype=np.float64)
    return torch.from_numpy(thr_q), torch.from_numpy(mass_c)


def _concentration(flat: Tensor) -> Tensor:
    return _selection(flat, _TOP_MASS)[1] / _sum64(flat, 1).clamp_min(1e-300)


def _avg_ranks(flat: Tensor) -> Tensor:
    """Average ranks (ties share their mean rank, as scipy's ``rankdata``)."""
    values, order = torch.sort(flat, dim=1, stable=True)
    n, p = values.shape
    pos = torch.arange(p).expand(n, p)
    starts = torch.ones(n, p, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = torch.ones(n, p, dtype=torch.bool)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, pos, 0).cummax(1).values
    last = torch.where(ends, pos, p - 1).flip(1).cummin(1).values.flip(1)
    ranks = torch.empty(n, p, dtype=torch.float64)
    ranks.scatter_(1, order, (first + last).double() / 2 + 1)
    return ranks


def _gini(flat: Tensor) -> Tensor:
    asc = torch.sort(flat, dim=1).values.double()
    p = asc.shape[1]
    i = torch.arange(1, p + 1, dtype=torch.float64)
    return (2 * (asc * i).sum(1) / (p * asc.sum(1).clamp_min(1e-300))) - (p + 1) / p


@dataclass(frozen=True)
class _Stats:
    """What the core metrics need of one batch of maps, from raw values.

    Min-max normalisation is affine, so it is folded into the formulas instead of
    materialising normalised copies: thresholds and the argmax are unchanged by
    it, the Pearson r is invariant to it, and the centroid and the top-10 % mass
    share subtract the minimum analytically.
    """

    degenerate: Tensor
    span: Tensor
    centroid: Tensor
    peak: Tensor
    thr_q: Tensor
    concentration: Tensor


def _raw_stats(x: Tensor, q: float) -> _Stats:
    n, h, w = x.shape
    p = h * w
    flat = x.view(n, p)
    lo, hi = torch.aminmax(flat, dim=1)
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        raise ValueError("maps contain NaN or Inf (or values beyond the float32 range)")
    if bool((hi > _MAX_ABS).any() | (lo < -_MAX_ABS).any()):
        raise ValueError(f"maps contain values beyond ±{_MAX_ABS:g}; rescale them")
    lo64 = lo.double()
    rows = _sum64(x, 2) - lo64[:, None] * w  # mass of (x - lo) per row
    cols = _sum64(x, 1) - lo64[:, None] * h
    mass = rows.sum(1)
    safe = torch.where(mass > 0, mass, 1)
    centroid = torch.stack(
        [
            (rows * torch.arange(h, dtype=torch.float64)).sum(1) / safe,
            (cols * torch.arange(w, dtype=torch.float64)).sum(1) / safe,
        ],
        1,
    )
    idx = flat.argmax(1)
    thr_q, top_mass = _selection(flat, q)
    top = top_mass - lo64 * _top_k(p, _TOP_MASS)
    return _Stats(
        ~(hi > lo),
        hi.double() - lo64,
        centroid,
        torch.stack([idx // w, idx % w], 1).double(),
        thr_q,
        top / safe,
    )


def displacement(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """‖c(A) − c(B)‖₂ / √(H² + W²), c the intensity-weighted centroid."""
    return _one("displacement", a, b)


def peak_displacement(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Distance between the maps' (first) maxima / image diagonal."""
    return _one("peak_displacement", a, b)


def iou(a: ArrayLike, b: ArrayLike, q: float = 0.2) -> np.ndarray:
    """IoU of the top-``q`` pixel masks (ties broken by pixel order, deterministically)."""
    return _one("iou", a, b, q)


def correlation(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Pearson r of the flattened maps."""
    return _one("correlation", a, b)


def spearman(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Spearman rank correlation of the flattened maps (average ranks for ties)."""
    return _one("spearman", a, b)


def concentration(maps: ArrayLike) -> np.ndarray:
    """κ: the share of a map's mass in its top 10 % of pixels (NaN if degenerate)."""
    m, deg = _normalise(_as_tensor(maps))
    return _nan_where(_concentration(m.flatten(1)), deg)


def gini(maps: ArrayLike) -> np.ndarray:
    """Gini coefficient of a map's pixel values (NaN if degenerate)."""
    m, deg = _normalise(_as_tensor(maps))
    return _nan_where(_gini(m.flatten(1)), deg)


def concentration_change(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """κ(B) − κ(A)."""
    return _one("concentration_change", a, b)


def _one(name: str, a: ArrayLike, b: ArrayLike, q: float = 0.2) -> np.ndarray:
    """One pairwise metric by its formula (:data:`FORMULAS`), on min-max normalised maps
    (checked for NaN, Inf and their shapes first); only what the formula reads is computed."""
    na, nb, deg = _pair(a, b)
    return _nan_where(FORMULAS[name](ChunkPairs(na, nb, q)), deg)


class ChunkPairs:
    """The registry's :class:`~drift_gate.evidence.registry.Pairs` for one chunk of map
    pairs (A: reference, B: candidate): each map's statistics from its raw values, the
    flattened raw maps, the top-``q`` pixel count ``k`` and the overlap of the top-``q``
    masks, the image diagonal; and the operations formulas share. The statistics and the
    overlap are computed on first use, once for every formula that reads them."""

    def __init__(self, a: Tensor, b: Tensor, q: float) -> None:
        self._raw, self._q = (a, b), q
        self.fa, self.fb = a.flatten(1), b.flatten(1)
        self.k = _top_k(self.fa.shape[1], q)
        self.diagonal = _diag(a)

    @cached_property
    def a(self) -> _Stats:
        return _raw_stats(self._raw[0], self._q)

    @cached_property
    def b(self) -> _Stats:
        return _raw_stats(self._raw[1], self._q)

    @cached_property
    def overlap(self) -> Tensor:
        return _sum64(_mask_at(self.fa, self.a.thr_q, self.k) & _mask_at(self.fb, self.b.thr_q, self.k), 1)

    @staticmethod
    def pearson(x: Tensor, y: Tensor, span_x: Tensor | None = None, span_y: Tensor | None = None) -> Tensor:
        """Pearson r per row (``span_*``: each row's max - min, to rescale huge ranges)."""
        return _pearson(x, y, span_x, span_y)

    @staticmethod
    def ranks(flat: Tensor) -> Tensor:
        """Average ranks per row (ties share their mean rank)."""
        return _avg_ranks(flat)

    @staticmethod
    def gini(flat: Tensor) -> Tensor:
        """Gini coefficient per row."""
        return _gini(flat)

    @staticmethod
    def minmax(flat: Tensor) -> Tensor:
        """Each row min-max normalised to ``[0, 1]`` (a constant row to 0)."""
        return _normalise(flat[:, None, :])[0][:, 0, :]


#: Each pairwise metric's formula, by name, as the registry declares it
#: (:attr:`MetricSpec.formula <drift_gate.evidence.registry.MetricSpec.formula>`): the
#: per-metric functions above and :func:`drift_metrics` both evaluate these.
FORMULAS: dict[str, Callable[[Pairs], Tensor]] = {
    name: formula for name, spec in METRICS.items() if (formula := spec.formula) is not None
}


def drift_metrics(
    a: ArrayLike, b: ArrayLike, q: float = 0.2, ranks: bool = False, chunk: int = 16
) -> dict[str, np.ndarray]:
    """The drift metrics for each pair of maps, in O(P) per map.

    Args:
        q: share of pixels in the IoU masks.
        ranks: also compute :data:`RANK_METRICS` (one sort per map; about
            ten times the cost of all the others together at 224 px).
        chunk: pairs processed at a time, so memory stays bounded.

    Returns:
        metric name -> ``(N,)`` float64 (NaN for degenerate pairs), plus
        ``concentration_a``/``concentration_b`` and ``degenerate`` (bool).
    """
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    if ta.shape != tb.shape:
        raise ValueError(f"map shapes differ: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    names = [n for n in PAIRWISE_METRICS if ranks or n not in RANK_METRICS]
    keys = (*names, "concentration_a", "concentration_b", "degenerate")
    starts = range(0, len(ta), chunk)
    workers = min(torch.get_num_threads(), len(starts))
    if workers > 1:
        # Chunks are independent: process them on a thread pool with single-threaded
        # ops (torch and numpy.partition release the GIL). This scales better than
        # per-op threading, and each chunk's arithmetic is the same either way.
        from concurrent.futures import ThreadPoolExecutor

        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                done = list(
                    pool.map(lambda i: _chunk_metrics(ta[i : i + chunk], tb[i : i + chunk], q, names), starts)
                )
        finally:
            torch.set_num_threads(previous)
    else:
        done = [_chunk_metrics(ta[i : i + chunk], tb[i : i + chunk], q, names) for i in starts]
    return {
        k: np.concatenate([d[k] for d in done])
        if done
        else np.empty(0, dtype=bool if k == "degenerate" else float)
        for k in keys
    }


def _chunk_metrics(a: Tensor, b: Tensor, q: float, names: Sequence[str]) -> dict[str, np.ndarray]:
    """``names``' formulas on one chunk of pairs, NaN where a map is degenerate; with
    ``concentration_a``/``concentration_b`` and ``degenerate``."""
    pairs = ChunkPairs(_as_tensor(a, check=False), _as_tensor(b, check=False), q)
    deg = pairs.a.degenerate | pairs.b.degenerate  # the statistics check the values too
    out = {name: FORMULAS[name](pairs) for name in names}
    out.update(concentration_a=pairs.a.concentration, concentration_b=pairs.b.concentration)
    result = {key: _nan_where(v, deg) for key, v in out.items()}
    result["degenerate"] = deg.numpy()
    return result


def localisation(maps: ArrayLike, masks: ArrayLike) -> dict[str, np.ndarray]:
    """Reference-based checks of maps against ground-truth finding masks.

    * ``pointing_game``: 1 if the map's (first, row-major) maximum lies inside the
      mask, else 0 (the pointing game of Zhang et al., 2016, without tolerance);
    * ``mask_energy``: the share of the min-max normalised map's mass inside the
      mask (Quantus calls this relevance mass accuracy).

    Args:
        maps: ``(N, H, W)`` non-negative maps.
        masks: ``(N, H, W)`` booleans of the same size.

    Returns:
        both names -> ``(N,)`` float64; NaN where the mask is empty (nothing to
        point at, e.g. a normal image) or the map is degenerate.
    """
    m, deg = _normalise(_as_tensor(maps))
    k = torch.as_tensor(np.asarray(masks, dtype=bool))
    if k.shape != m.shape:
        raise ValueError(f"mask shape {tuple(k.shape)} differs from the maps' {tuple(m.shape)}")
    flat, kflat = m.flatten(1), k.flatten(1)
    undefined = deg | ~kflat.any(1)
    hit = kflat.gather(1, flat.argmax(1, keepdim=True))[:, 0].double()
    energy = _sum64(torch.where(kflat, flat, 0), 1) / _sum64(flat, 1).clamp_min(1e-300)
    return {"pointing_game": _nan_where(hit, undefined), "mask_energy": _nan_where(energy, undefined)}


def intra_class_consistency(
    maps: np.ndarray, labels: np.ndarray, selected: np.ndarray, classes: Sequence[str]
) -> dict[str, dict[str, float | int | None]]:
    """How alike the maps of one class are: the mean pairwise soft IoU
    (``sum(min(a, b)) / sum(max(a, b))`` of min-max normalised maps) over the selected
    samples of each class, as in the C-Score of the study's authors; ``overall`` is the
    mean over the classes with two or more samples. Constant maps are left out.

    Returns:
        group -> ``{"mean": value or None, "n": samples}``.
    """
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    usable = (hi[:, 0] > lo[:, 0]) & np.asarray(selected, dtype=bool)
    norm = (flat - lo) / np.where(hi > lo, hi - lo, 1.0)
    out: dict[str, dict[str, float | int | None]] = {}
    for c, name in enumerate(classes):
        a = norm[usable & (np.asarray(labels) == c)]
        scores = []
        for i in range(len(a) - 1):
            inter = np.minimum(a[i], a[i + 1 :]).sum(1)
            union = np.maximum(a[i], a[i + 1 :]).sum(1)
            scores.append(inter / union)
        out[name] = {"mean": float(np.concatenate(scores).mean()) if scores else None, "n": len(a)}
    means = [v["mean"] for v in out.values() if v["mean"] is not None]
    out["overall"] = {"mean": float(np.mean(means)) if means else None, "n": int(usable.sum())}
    return out
