"""``[counterfactual] paired = true``: the candidate's swap drops judged less the reference's.

A map-free swap (``region = "band"`` or ``"corners"``, and ``max_corner_drop``) costs an
honest fine-tune some score on every image: the swapped margin is another patient's, and the
seam it leaves is new to any model. How much depends on the image and its donor far more than
on the model, so on a 50-image audit set the mean drop of one honest run differs from the
next one's by the audit set's sampling noise (docs/explanation/controls.md measured
standard errors of 0.02-0.06). Paired, each sample's drop is less the *reference's* drop on
the same image with the same donors (and the same controls): what the image and donor cost
any model cancels, and the rule judges what the update added.

The reference's drops are measured once, when the baseline is made (:func:`reference_drops`,
the gate's own code path on the reference, so a candidate equal to its reference has
paired drops of exactly 0), and stored in ``maps.npz`` with the settings they were
measured under in ``baseline.json`` (``counterfactual``). A baseline without them, or made
under other settings, is refused (:func:`paired_mismatch`), never silently paired with
drops of another kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from drift_gate.data.datasets import ImageDataset, Sample
from drift_gate.distributed import Dist
from drift_gate.gating.audit_pass import CHUNK_BATCHES, Job, _counterfactual, _donors
from drift_gate.gating.stored import DROPS
from drift_gate.gating.thresholds import Thresholds

if TYPE_CHECKING:
    from drift_gate.gating.stored import Baseline
    from drift_gate.models.checkpoint import CheckpointMeta

__all__ = ["less_reference", "paired_mismatch", "reference_drops"]


@torch.no_grad()
def reference_drops(
    model: torch.nn.Module,
    meta: CheckpointMeta,
    samples: list[Sample],
    thresholds: Thresholds,
    *,
    multilabel: bool,
    device: str | torch.device,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """The reference's map-free swap drops on the audit ``samples`` (the (image, class) pairs
    of a multi-label set), by the gate's own chunks, donors and batches: the ``(N,)`` or
    ``(N, 4)`` drops of the region (``counterfactual_drop``) and, with ``max_corner_drop``,
    the ``(N, 4)`` corner drops (``corner_drop``)."""
    t = thresholds
    assert t.counterfactual_border is not None and t.counterfactual_region != "map"
    dist = Dist(0, 1, torch.device(device))
    # the audit pass's helpers read the model, samples, rules and donors from a Job; the
    # reference has no baseline of its own yet (nothing reads one here)
    job = Job(
        Path("reference"),
        model,
        meta,
        cast("Baseline", None),
        samples,
        t,
        dist,
        batch_size,
        False,
        "fp32",
        None,
        Path(),
        pairs=np.zeros((0, 2), dtype=np.int64) if multilabel else None,
    )
    parts: dict[str, list[np.ndarray]] = {}
    step = CHUNK_BATCHES * batch_size
    for start in range(0, len(samples), step):
        indices = list(range(start, min(start + step, len(samples))))
        chosen = [samples[i] for i in indices]
        ds = ImageDataset(
            chosen, meta.input_size, meta.mean, meta.std, cache=True, preprocess=meta.preprocess
        )
        donors = _donors(job, indices, ds)
        targets = np.array([s.label for s in chosen])
        flat = np.zeros((len(chosen), 1, 1))  # map-free: the maps only say where they peak
        parts.setdefault("counterfactual_drop", []).append(
            _counterfactual(job, ds, flat, targets, None, donors)["counterfactual_drop"]
        )
        if t.counterfactual_max_corner_drop is not None:
            corners = _counterfactual(job, ds, flat, targets, None, donors, "corners")
            parts.setdefault("corner_drop", []).append(corners["counterfactual_drop"])
    return {k: np.concatenate(v) for k, v in parts.items()}


def paired_mismatch(base: Baseline, thresholds: Thresholds) -> str | None:
    """Why ``base``'s stored drops cannot be paired with ``thresholds``' counterfactual
    (``None``: they can, or the rules do not pair)."""
    if not thresholds.counterfactual_paired:
        return None
    stored = base.meta.get("counterfactual")
    if not isinstance(stored, dict) or "counterfactual_drop" not in base.drops:
        return "it stores no reference drops for [counterfactual] paired = true"
    want = thresholds.counterfactual_settings()
    if want["corners"] and "corner_drop" not in base.drops:
        return "it stores no corner drops for max_corner_drop"
    differ = [
        f"{k} {want[k]!r} (baseline {stored.get(k)!r})"
        for k in want
        if k != "corners" and stored.get(k) != want[k]
    ]
    if differ:
        return f"its reference drops were measured under other [counterfactual] settings: {'; '.join(differ)}"
    return None


def less_reference(values: dict[str, dict[str, np.ndarray]], base: Baseline) -> None:
    """Each method's swap drops (``values[method]``, in audit order) made paired: less the
    reference's stored drop on the same sample (a new array; the methods share the map-free
    drops)."""
    for per_method in values.values():
        for key in DROPS:
            if key in per_method:
                per_method[key] = per_method[key] - base.drops[key]
