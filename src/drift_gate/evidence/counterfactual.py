"""Counterfactual check for evidence outside the anatomy: when a map's maximum lies in the
band along the image's edges (where burned-in text, site markers, rulers and shields sit,
and no finding does), that part of the image is replaced and the change in the model's
score for the explained class is measured.

Per image and map: the map is upsampled to the input and min-max normalised; if its
maximum lies within ``border`` (a fraction of the side) of an edge, the *region* is the
band's pixels where the map is at least half its maximum (so it always holds the peak),
and it is replaced: ``swap`` (default) copies the same region from another image of the
audit set explained for another class (drawn at random, :func:`donor_indices`), so the
image stays one the model could have seen (another patient's margin; a marker coded for
another class); ``edge`` fills it with the
median of the image's band; ``mean`` with zero after normalisation; ``blur`` with a
blurred copy. Measured on the demo's phantoms, whose bodies reach into the band: a
fine-tune without a shortcut loses about nothing under ``swap`` and ``blur`` but up to
half its score under ``edge`` and ``mean``, which put something unseen there.
``counterfactual_drop`` is the score before minus the score after
(softmax probability; sigmoid for a multi-label head): near 0 when the model does not
use what lies there, large when it does. Images whose maximum lies inside get NaN.
Cost: two forward passes per image whose map points outside, none for the others.

``region = "band"`` makes the check map-free: the *whole* band of every image is replaced
(by the donor's band under ``swap``), whatever the maps show — the margin's share of the
prediction, for maps too coarse to point at a corner marker. Measured through the gate
on the validate controls (docs/explanation/controls.md): the lead-strip shortcut that
passes InceptionV3's map rules loses 0.853 of its true-class score, where the held-out
honest fine-tunes lose 0.035-0.245. The marker shortcuts lose more than their
uninformative twins (DenseNet201 0.256 against 0.155, ResNet50V2 0.313 against 0.128) but
stay below the calibrated bound (0.56). Cost: two forward passes per image,
once for all methods.

``region = "corners"`` swaps each of the band's four corner squares on its own (where
laterality markers and site labels are burned in), and the rule judges the corner whose
mean drop over the judged samples is largest: a class-coded box in one corner stands out
there, where across the whole band it is one part among the body's edges. Cost: five
forward passes per image, once for all methods. ``max_corner_drop`` judges the corners
as a second rule beside the region's (the gate calls this module twice: the band, then
the corners).

``control = "same-class"`` subtracts from each drop the drop when the same region comes
from another image of the same class: a class-coded marker keeps its drop, a seam that any
donor opens (a body edge that no longer meets, an exposure that no longer matches) costs
both swaps alike and cancels. ``draws`` averages each image's drops over that many donors
(and controls). Cost: the swap's passes x ``draws``, x 2 with the control.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from drift_gate.data.datasets import Images
from drift_gate.evidence.counterfactual_choices import BASELINES, CONTROLS, REGIONS
from drift_gate.evidence.faithfulness import replacement

__all__ = [
    "BASELINES",
    "CONTROLS",
    "CORNERS",
    "REGIONS",
    "border_band",
    "corner_masks",
    "counterfactual_drop",
    "counterfactual_metrics",
    "donor_indices",
]

#: The four corner squares of ``region = "corners"``, in the order of its drops' columns.
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def donor_indices(
    targets: Sequence[int] | np.ndarray,
    images: Sequence[object] | None = None,
    *,
    seed: int = 0,
    same_class: bool = False,
) -> np.ndarray:
    """For each sample, a donor drawn at random (a fixed ``seed``, so the same on every
    run and rank) from the samples explained for another class (``same_class``: for the
    same class, the control's donors; never the sample itself), and of another image where
    ``images`` says which image each sample is (a multi-label image's pairs); itself when
    there is none. Drawn over the whole audit set, not a batch, and from every other class
    in proportion to its share, so a region is replaced by a draw from the set's own
    distribution of that region. (Taking the next sample of another class instead gives
    every image of a class the same donor, always of the neighbouring class: a cue coded
    by class is then only ever swapped for its neighbour's form, which the demo's marker
    shortcuts barely react to.)"""
    t = np.asarray(targets)
    ids = None if images is None else np.unique([str(i) for i in images], return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    out = np.arange(len(t))
    for i in range(len(t)):
        other = (t == t[i]) & (np.arange(len(t)) != i) if same_class else t != t[i]
        if ids is not None:
            other &= ids != ids[i]
        pool = np.flatnonzero(other)
        if len(pool):
            out[i] = pool[rng.integers(len(pool))]
    return out


def border_band(size: tuple[int, int], border: float) -> torch.Tensor:
    """``(h, w)`` booleans: within ``border`` x the side of any edge."""
    h, w = size
    bh, bw = max(1, round(border * h)), max(1, round(border * w))
    band = torch.ones(h, w, dtype=torch.bool)
    band[bh : h - bh, bw : w - bw] = False
    return band


def corner_masks(size: tuple[int, int], border: float) -> torch.Tensor:
    """``(4, h, w)`` booleans: the band's four corner squares (``border`` x the side on each
    edge), in :data:`CORNERS` order."""
    h, w = size
    bh, bw = max(1, round(border * h)), max(1, round(border * w))
    out = torch.zeros(len(CORNERS), h, w, dtype=torch.bool)
    out[0, :bh, :bw] = out[1, :bh, w - bw :] = out[2, h - bh :, :bw] = out[3, h - bh :, w - bw :] = True
    return out


def _scores(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, multilabel: bool, batch: int | None = None
) -> torch.Tensor:
    """The explained classes' scores, ``batch`` images per forward pass (all by default)."""
    weight = next(model.parameters(), None)  # a parameter-free model runs where x is
    step = batch or len(x)
    logits = torch.cat(
        [
            model(x[i : i + step] if weight is None else x[i : i + step].to(weight.device)).float().cpu()
            for i in range(0, len(x), step)
        ]
    )
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
    return probs[torch.arange(len(x)), targets]


@torch.no_grad()
def counterfactual_drop(
    model: nn.Module,
    x: torch.Tensor,
    maps: np.ndarray,
    targets: np.ndarray,
    *,
    border: float = 0.15,
    baseline: str = "swap",
    multilabel: bool = False,
    batch_size: int = 16,
    region: str = "map",
    band_drop: np.ndarray | None = None,
    donors: torch.Tensor | None = None,
    control: str = "none",
    controls: torch.Tensor | None = None,
    draws: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each map's maximum lies in the border band, and the score drop when its
    region there is replaced (see the module); with ``region="band"`` the whole band of
    every image is replaced, so every drop is finite; with ``region="corners"`` each of the
    band's four corner squares is replaced on its own, one drop per corner. With
    ``control="same-class"`` (``swap`` only) each drop is less the drop when the same region
    comes from another image of the same class: the part of it the region's class carries.

    Args:
        x: ``(N, C, H, W)`` inputs, normalised as the model expects.
        maps: ``(N, h, w)`` maps; ``targets``: the explained classes, ``(N,)``.
        band_drop: map-free regions only: the drops already measured for these images (they
            do not depend on the map), so another method's maps cost no forward pass.
        donors: ``swap`` only: each image's donor, ``(N, C, H, W)``, or ``(D, N, C, H, W)``
            for ``D`` donors whose drops are averaged; by default ``draws`` drawn from
            ``x``'s images explained for another class (:func:`donor_indices`).
        controls: ``control="same-class"`` only: likewise each image's same-class donors, by
            default drawn from ``x``'s images explained for the same class.

    Returns:
        ``(outside, drop)``: ``(N,)`` floats, ``outside`` 1 or 0 (NaN for a constant map),
        ``drop`` NaN where the maximum lies inside (``map`` only); ``(N, 4)`` for
        ``corners``, its columns in :data:`CORNERS` order.
    """
    _check(region, baseline, border, control)
    model.eval()
    n, _, h, w = x.shape
    up = torch.nn.functional.interpolate(
        torch.as_tensor(maps, dtype=torch.float64)[:, None], size=(h, w), mode="bilinear", align_corners=False
    )[:, 0]
    flat = up.reshape(n, -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    constant = hi <= lo
    norm = (up - lo.view(-1, 1, 1)) / (hi - lo).clamp_min(1e-300).view(-1, 1, 1)
    band = border_band((h, w), border)
    peak_in_band = band.reshape(-1)[flat.argmax(1)] & ~constant
    outside = peak_in_band.double().numpy()
    outside[constant.numpy()] = np.nan
    whole = region != "map"  # map-free: every image, whatever its map shows
    if whole and band_drop is not None:
        return outside, np.asarray(band_drop, dtype=np.float64)
    drop = np.full((n, len(CORNERS)) if region == "corners" else n, np.nan)
    rows = torch.arange(n) if whole else torch.nonzero(peak_in_band)[:, 0]
    if region == "corners":
        corners = corner_masks((h, w), border).to(x.dtype)[:, None, None]  # (4, 1, 1, h, w)
    t = torch.as_tensor(targets, dtype=torch.long)
    if baseline == "swap":
        donors = _drawn(x, t, donors, draws, same_class=False)
        controls = _drawn(x, t, controls, draws, same_class=True) if control != "none" else None
    else:
        controls = None
    for start in range(0, len(rows), batch_size):
        idx = rows[start : start + batch_size]
        xi = x[idx]
        if donors is not None:
            fills = list(donors[:, idx])
        elif baseline == "edge":
            fills = [xi[:, :, band].median(dim=2).values[:, :, None, None].expand_as(xi)]
        else:
            fills = [replacement(xi, baseline)]
        swapped = len(fills)
        fills += [] if controls is None else list(controls[:, idx])
        if region == "corners":  # each corner on its own: (4, k, C, H, W), corner-major
            changed = torch.cat([(xi * (1 - corners) + f * corners).flatten(0, 1) for f in fills])
        else:
            chosen = band.expand(len(idx), h, w) if whole else band & (norm[idx] >= 0.5)
            mask = chosen.to(x.dtype)[:, None]
            changed = torch.cat([xi * (1 - mask) + f * mask for f in fills])
        k = len(idx)
        copies = len(changed) // k
        scores = _scores(
            model, torch.cat([xi, changed]), t[idx].repeat(copies + 1), multilabel, 5 * k
        ).double()
        # (k, fills, corners or 1): each fill's loss, averaged over the donors
        lost = (scores[:k, None] - scores[k:].view(copies, k).T).view(k, len(fills), -1)
        kept = lost[:, :swapped].mean(1)
        if controls is not None:  # less the same-class controls' loss
            kept = kept - lost[:, swapped:].mean(1)
        drop[idx.numpy()] = (kept if region == "corners" else kept[:, 0]).numpy()
    return outside, drop


def _check(region: str, baseline: str, border: float, control: str) -> None:
    """:func:`counterfactual_drop`'s settings, or a ``ValueError`` naming the bad one."""
    if region not in REGIONS:
        raise ValueError(f"region {region!r}: expected one of {', '.join(REGIONS)}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline {baseline!r}: expected one of {', '.join(BASELINES)}")
    if not 0 < border < 0.5:
        raise ValueError(f"border must lie in (0, 0.5), got {border}")
    if control not in CONTROLS:
        raise ValueError(f"control {control!r}: expected one of {', '.join(CONTROLS)}")
    if control != "none" and baseline != "swap":
        raise ValueError(f"control {control!r} compares two swaps; baseline {baseline!r} swaps nothing")


def _drawn(
    x: torch.Tensor, t: torch.Tensor, given: torch.Tensor | None, draws: int, *, same_class: bool
) -> torch.Tensor:
    """``(D, N, C, H, W)`` donor images: ``given`` (one donor per image, or ``D``) or
    ``draws`` drawn from ``x``'s images (:func:`donor_indices`, one seed per draw)."""
    if given is not None:
        return given if given.dim() == 5 else given[None]
    labels = t[: len(x)].numpy()
    picks = [donor_indices(labels, seed=d, same_class=same_class) for d in range(draws)]
    return torch.stack([x[torch.as_tensor(p)] for p in picks])


def counterfactual_metrics(
    model: nn.Module,
    dataset: Images,
    maps: np.ndarray,
    targets: np.ndarray,
    *,
    border: float,
    baseline: str,
    multilabel: bool = False,
    batch_size: int = 16,
    region: str = "map",
    band_drop: np.ndarray | None = None,
    donors: torch.Tensor | None = None,
    control: str = "none",
    controls: torch.Tensor | None = None,
    draws: int = 1,
) -> dict[str, np.ndarray]:
    """Per sample of ``dataset``: ``outside_anatomy`` (the map's maximum lies in the border
    band) and ``counterfactual_drop`` (:func:`counterfactual_drop`; ``band_drop``: the
    drops another method's call measured, ``region="band"`` only), ``batch_size`` images
    at a time. ``donors``: ``swap`` only, each sample's donor image, ``(N, C, H, W)`` in
    ``dataset``'s order (the gate picks them over the whole audit set); by default from
    the same batch; ``control`` and ``controls`` likewise for the same-class control;
    ``draws``: how many donors per image where none are given."""
    parts: dict[str, list[np.ndarray]] = {"outside_anatomy": [], "counterfactual_drop": []}
    n = len(dataset)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        x = torch.stack([dataset[i][0] for i in range(start, stop)])
        fill, same = (None if d is None else d[..., start:stop, :, :, :] for d in (donors, controls))
        outside, drop = counterfactual_drop(
            model,
            x,
            maps[start:stop],
            targets[start:stop],
            border=border,
            baseline=baseline,
            multilabel=multilabel,
            batch_size=batch_size,
            region=region,
            band_drop=None if band_drop is None else band_drop[start:stop],
            donors=fill,
            control=control,
            controls=same,
            draws=draws,
        )
        parts["outside_anatomy"].append(outside)
        parts["counterfactual_drop"].append(drop)
    return {k: np.concatenate(v) for k, v in parts.items()}
