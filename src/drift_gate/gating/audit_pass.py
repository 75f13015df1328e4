"""One rank's pass over its audit samples: the candidate's CAMs, predictions and
per-sample metrics, and the checks computed beside them (sanity, faithfulness,
counterfactual).

The pass walks its samples in chunks of :data:`CHUNK_BATCHES` batches. Each chunk's
images are decoded once and shared by everything that needs them (the CAMs, the
randomised copy's and the other class's maps, ONNX Runtime, the deletion / insertion
curves, the counterfactual), and only one chunk of decoded images is in memory at a
time, so memory stays flat as the audit set grows. Chunks are whole batches, so every
model call sees the same batches as an unchunked pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_gate.data.datasets import ImageDataset, Images, Sample
from drift_gate.data.masks import read_mask
from drift_gate.data.preprocess import DEFAULT, Preprocess
from drift_gate.distributed import Dist
from drift_gate.errors import CheckpointError, StaleBaselineError
from drift_gate.evidence.cam import CamResult, compute_cams, upsample
from drift_gate.evidence.counterfactual import counterfactual_metrics, donor_indices
from drift_gate.evidence.faithfulness import faithfulness_metrics
from drift_gate.evidence.metrics import drift_metrics, localisation, spearman
from drift_gate.evidence.sanity import randomised_copy
from drift_gate.gating.stored import Baseline
from drift_gate.gating.thresholds import Thresholds
from drift_gate.models.checkpoint import CheckpointMeta
from drift_gate.models.export import OnnxModel

__all__ = ["CHUNK_BATCHES", "Job", "audit_pass", "load_masks"]

#: Batches per chunk of decoded images: at batch 16, 4 MB of them at 128 px (kept as float16,
#: one channel); 77 MB where a user's transform makes float32 three-channel inputs at 224 px.
CHUNK_BATCHES = 8


@dataclass
class Job:
    """One candidate, loaded and checked against its baseline: what every rank's pass needs."""

    candidate: Path
    model: torch.nn.Module
    meta: CheckpointMeta
    base: Baseline
    samples: list[Sample]
    thresholds: Thresholds
    dist: Dist
    batch_size: int
    progress: bool
    precision: str
    session: OnnxModel | None
    exported: Path
    #: multi-label: the audit images (``samples`` are then their (image, class) pairs)
    images: list[Sample] = field(default_factory=list)
    pairs: np.ndarray | None = None
    #: each sample's counterfactual donor (:func:`_donor_images`), found once per candidate,
    #: and its same-class control's (``[counterfactual] control = "same-class"``)
    donor_index: np.ndarray | None = None
    control_index: np.ndarray | None = None


def load_masks(samples: Sequence[Sample], size: int, preprocess: Preprocess = DEFAULT) -> np.ndarray:
    """Ground-truth finding masks at the model's input size (resized like the images,
    by the same policy, then thresholded at one half). A sample without a mask gets an
    empty one, so its localisation metrics are undefined (NaN)."""
    out = np.zeros((len(samples), size, size), dtype=bool)
    for i, s in enumerate(samples):
        if s.mask is not None:
            out[i] = read_mask(s.mask, s.path, size, preprocess)
    return out


def _streamed_metrics(
    ref: np.ndarray, cand: np.ndarray, size: int, masks: np.ndarray | None = None, block: int = 64
) -> dict[str, np.ndarray]:
    """Drift metrics of native-resolution maps, upsampled to ``size`` ``block`` pairs
    at a time, so that only one block of full-size maps is ever in memory; with
    ``masks``, also the localisation of both maps against them."""
    parts = []
    for i in range(0, max(len(ref), 1), block):
        a = upsample(torch.from_numpy(ref[i : i + block]), size)
        b = upsample(torch.from_numpy(cand[i : i + block]), size)
        part = drift_metrics(a, b, ranks=True)
        if masks is not None:
            ka = localisation(a, masks[i : i + block])
            kb = localisation(b, masks[i : i + block])
            part.update(
                pointing_game=kb["pointing_game"],
                mask_energy=kb["mask_energy"],
                reference_pointing_game=ka["pointing_game"],
                reference_mask_energy=ka["mask_energy"],
                mask_energy_change=kb["mask_energy"] - ka["mask_energy"],
            )
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _OtherClass(Images):
    """The same inputs, each labelled with the next class: the class-sensitivity check's targets."""

    def __init__(self, images: ImageDataset, classes: int) -> None:
        self.images, self.classes = images, classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.images[i]
        return x, (y + 1) % self.classes


def _counterfactual(
    job: Job,
    ds: ImageDataset,
    maps: np.ndarray,
    targets: np.ndarray,
    band_drop: np.ndarray | None,
    donors: tuple[torch.Tensor, torch.Tensor | None] | None,
    region: str | None = None,
) -> dict[str, np.ndarray]:
    """The ``[counterfactual]`` check's per-sample values for one method's maps (``donors``:
    the swap's and the same-class control's images; ``region``: another than the table's,
    for ``max_corner_drop``'s corners)."""
    t = job.thresholds
    assert t.counterfactual_border is not None
    return counterfactual_metrics(
        job.model,
        ds,
        maps,
        targets,
        border=t.counterfactual_border,
        baseline=t.counterfactual_baseline,
        multilabel=job.pairs is not None,
        batch_size=job.batch_size,
        region=region or t.counterfactual_region,
        band_drop=band_drop,
        donors=None if donors is None else donors[0],
        control=t.counterfactual_control,
        controls=None if donors is None else donors[1],
        draws=t.counterfactual_draws,
    )


def _donors(
    job: Job, indices: Sequence[int], ds: ImageDataset
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The chunk's donor images for the counterfactual's ``swap`` and, with ``control =
    "same-class"``, its controls' (:func:`_donor_images`); ``None`` for another baseline."""
    t = job.thresholds
    if t.counterfactual_baseline != "swap":
        return None
    labels, paths = [s.label for s in job.samples], [s.path for s in job.samples]
    draws = range(t.counterfactual_draws)
    if job.donor_index is None:  # over the whole audit set, so once for every chunk: (D, N)
        job.donor_index = np.stack([donor_indices(labels, paths, seed=d) for d in draws])
    if t.counterfactual_control == "none":
        return _donor_images(job, job.donor_index, indices, ds), None
    if job.control_index is None:
        job.control_index = np.stack([donor_indices(labels, paths, seed=d, same_class=True) for d in draws])
    both = _donor_images(job, np.concatenate([job.donor_index, job.control_index]), indices, ds)
    return both[: len(draws)], both[len(draws) :]


def _donor_images(job: Job, donor: np.ndarray, indices: Sequence[int], ds: ImageDataset) -> torch.Tensor:
    """The chunk's donor images, ``(D, k, C, H, W)`` (``donor``: ``(D, N)``, each audit
    sample's donors, drawn from the whole audit set, not its batch or chunk, among the
    samples explained for another class, or the same class for the control, of another
    image (a multi-label image's pairs share one), the same on every rank). Donors within
    the chunk come from its decoded images; the others are decoded here, each once."""
    position = {i: k for k, i in enumerate(indices)}
    needed = {int(d) for row in donor for d in row[list(indices)]}
    outside = sorted(needed - position.keys())
    meta = job.meta
    extra = ImageDataset(
        [job.samples[d] for d in outside],
        meta.input_size,
        meta.mean,
        meta.std,
        cache=False,
        preprocess=meta.preprocess,
    )
    decoded = {d: extra[k][0] for k, d in enumerate(outside)}
    image = {d: ds[position[d]][0] for d in needed & position.keys()} | decoded
    return torch.stack([torch.stack([image[int(row[i])] for i in indices]) for row in donor])


#: Largest |value| a candidate's raw CAM may hold to be compared (as the metrics accept).
_MAX_MAP_VALUE = 1e30


def _cams(job: Job, model: torch.nn.Module, ds: Images) -> CamResult:
    """The candidate's CAMs; a map holding NaN, Inf or absurd values (a broken model's) is
    replaced by a constant one, so that it counts as degenerate (reported, never averaged)
    instead of stopping the gate: the candidate's own numbers are the evidence against it."""
    cams = compute_cams(
        model,
        ds,
        job.thresholds.methods,
        device=job.dist.device,
        batch_size=job.batch_size,
        precision=job.precision,
    )
    for method, maps in cams.maps.items():
        with np.errstate(invalid="ignore"):
            broken = ~(np.abs(maps) <= _MAX_MAP_VALUE).all(axis=(1, 2))
        if broken.any():
            fixed = maps.copy()
            fixed[broken] = 0.0
            cams.maps[method] = fixed
    return cams


def _chunk(
    job: Job, indices: Sequence[int], twin: torch.nn.Module | None, with_masks: bool
) -> dict[str, Any]:
    """Everything of :func:`audit_pass` for one chunk, its images decoded once (``twin``:
    the randomised copy; ``with_masks``: some audit sample has a finding mask)."""
    t, meta, size = job.thresholds, job.meta, job.meta.input_size
    chosen = [job.samples[i] for i in indices]
    ds = ImageDataset(chosen, size, meta.mean, meta.std, cache=True, preprocess=meta.preprocess)
    cams = _cams(job, job.model, ds)
    out: dict[str, Any] = {"logits": cams.logits, "maps": cams.maps, "metrics": {}}
    if twin is not None:  # the same maps from a randomised copy
        other = _cams(job, twin, ds)
        out["sanity"] = {m: spearman(cams.maps[m], other.maps[m]) for m in t.methods}
    if t.sanity_max_class_correlation is not None:  # the maps of another class
        shifted = _cams(job, job.model, _OtherClass(ds, len(meta.classes)))
        out["class_sanity"] = {m: spearman(cams.maps[m], shifted.maps[m]) for m in t.methods}
    masks = load_masks(chosen, size, meta.preprocess) if with_masks else None
    if job.session is not None and job.pairs is None:
        out["onnx"] = job.session.logits(ds, job.batch_size)
    multilabel = job.pairs is not None
    band_drop = corner_drop = None
    donors = _donors(job, indices, ds) if t.counterfactual_border is not None else None
    for method in t.methods:
        grid, stored = cams.maps[method].shape[1:], job.base.maps[method].shape[1:]
        if grid != stored:
            raise StaleBaselineError(
                f"{job.candidate}: its target layer gives {grid[0]}x{grid[1]} maps, the baseline in "
                f"{job.base.path} stores {stored[0]}x{stored[1]}; refresh the baseline for this model"
            )
        reference = job.base.maps[method][list(indices)]
        try:
            metrics = _streamed_metrics(reference, cams.maps[method], size, masks)
        except ValueError as exc:  # non-finite or absurd CAM values from this candidate
            raise CheckpointError(f"{job.candidate}: its {method} maps cannot be compared ({exc})") from exc
        if t.faithfulness_steps:
            faithful = faithfulness_metrics(
                job.model,
                ds,
                reference,
                cams.maps[method],
                targets=cams.targets,
                steps=t.faithfulness_steps,
                baseline=t.faithfulness_baseline,
                multilabel=multilabel,
                batch_size=job.batch_size,
            )
            metrics.update(faithful)
        if t.counterfactual_border is not None:
            perturbed = _counterfactual(job, ds, cams.maps[method], cams.targets, band_drop, donors)
            if t.counterfactual_region != "map":  # map-free: measured once for every method
                band_drop = perturbed["counterfactual_drop"]
            metrics.update(perturbed)
            if t.counterfactual_max_corner_drop is not None:  # map-free too: (N, 4), once
                if corner_drop is None:
                    corners = _counterfactual(
                        job, ds, cams.maps[method], cams.targets, None, donors, "corners"
                    )
                    corner_drop = corners["counterfactual_drop"]
                metrics["corner_drop"] = corner_drop
        out["metrics"][method] = metrics
    return out


def _joined(parts: list[Any]) -> Any:
    """The chunks' results as one (arrays concatenated, nested tables joined key by key)."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: _joined([p[k] for p in parts]) for k in first}
    return np.concatenate(parts)


def audit_pass(job: Job, indices: Sequence[int]) -> dict[str, Any] | None:
    """CAMs, predictions and per-sample metrics of the audit samples ``indices`` (one
    rank's batches), chunk by chunk (see the module); ``None`` for no samples."""
    if not indices:
        return None
    from tqdm import tqdm

    t = job.thresholds
    twin = None if t.sanity_max_correlation is None else randomised_copy(job.model, t.sanity_randomise)
    with_masks = any(s.mask is not None for s in job.samples)
    step = CHUNK_BATCHES * job.batch_size
    parts = []
    show = job.progress and job.dist.main
    with tqdm(total=len(indices), desc="audit", unit="img", disable=not show, leave=False) as bar:
        for start in range(0, len(indices), step):
            chunk = indices[start : start + step]
            parts.append(_chunk(job, chunk, twin, with_masks))
            bar.update(len(chunk))
    joined: dict[str, Any] = _joined(parts)
    return joined
