"""Multi-label heads: which models have one, their operating points, and the reference's
predictions and maps on (image, positive finding) pairs of an audit set."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from drift_gate.data.datasets import ImageDataset, Sample
from drift_gate.evidence.cam import CamResult, compute_cams
from drift_gate.evidence.classification import predicted_positive
from drift_gate.gating.audit import expand_pairs, multi_hot
from drift_gate.models.checkpoint import CheckpointMeta

__all__ = ["is_multilabel", "multilabel_reference", "multilabel_summary", "operating_points"]


def is_multilabel(meta: CheckpointMeta | dict[str, Any]) -> bool:
    """Whether a model (its metadata, or a ``baseline.json``) has a multi-label head."""
    model = meta.get("model") if isinstance(meta, dict) else meta.model
    return isinstance(model, dict) and model.get("task") == "multilabel"


def operating_points(meta: CheckpointMeta | dict[str, Any]) -> list[float]:
    """A multi-label model's sigmoid threshold per class."""
    model = meta.get("model") if isinstance(meta, dict) else meta.model
    classes = meta["classes"] if isinstance(meta, dict) else meta.classes
    assert isinstance(model, dict)
    op = [float(v) for v in model.get("operating_point", [0.5])]
    return op * len(classes) if len(op) == 1 else op


def multilabel_reference(
    model: torch.nn.Module,
    meta: CheckpointMeta,
    samples: list[Sample],
    methods: tuple[str, ...],
    device: str | torch.device,
    batch_size: int,
    progress: bool,
) -> tuple[CamResult, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The reference's logits per image and its maps per (image, positive class) pair."""
    from drift_gate.models.inference import predict

    def dataset(items: list[Sample]) -> ImageDataset:
        return ImageDataset(
            items, meta.input_size, meta.mean, meta.std, cache=False, preprocess=meta.preprocess
        )

    logits, _ = predict(model, dataset(samples), torch.device(device), batch_size)
    pair_samples, pairs = expand_pairs(samples)
    cams = compute_cams(
        model, dataset(pair_samples), methods, device=device, batch_size=batch_size, progress=progress
    )
    positives = multi_hot(samples, len(meta.classes))
    predicted = predicted_positive(logits, operating_points(meta))
    correct = predicted[pairs[:, 0], pairs[:, 1]]
    return cams, logits, positives.astype(np.int8), correct, {"pairs": pairs}


def multilabel_summary(
    meta: CheckpointMeta, samples: list[Sample], pairs: np.ndarray, correct: np.ndarray, per_class: int
) -> tuple[dict[str, Any], list[str]]:
    """What a multi-label audit set holds (for ``baseline.json``), and lines that say so."""
    per = {c: int((pairs[:, 1] == i).sum()) for i, c in enumerate(meta.classes)}
    right = {c: int(correct[pairs[:, 1] == i].sum()) for i, c in enumerate(meta.classes)}
    none = sum(1 for s in samples if not s.labels)
    short = [c for c, k in per.items() if k < per_class]
    lines = [
        f"audit set: {len(samples)} test images, {len(pairs)} (image, positive class) pairs, "
        f"{none} images without findings (negatives for AUC); up to {per_class} positives per class"
        + (f"; fewer for {', '.join(short)}" if short else ""),
        f"reference: predicts {int(correct.sum())} of the {len(pairs)} positive pairs at its "
        "operating points (" + ", ".join(f"{c} {right[c]}/{per[c]}" for c in meta.classes) + ")",
    ]
    return {"requested_per_class": per_class, "pairs_per_class": per, "reference_correct": right}, lines
