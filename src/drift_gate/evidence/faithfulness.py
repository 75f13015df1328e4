"""Faithfulness of a map to a model: deletion and insertion curves (Petsiuk et al. 2018,
RISE; as in Quantus and pytorch-grad-cam's ROAD family).

The pixels are ranked by the map (upsampled to the input). *Deletion* replaces the most
salient fraction ``k / steps`` of them by a baseline (a blurred copy of the image, or its
mean, zero after normalisation) for ``k = 0 … steps`` and records the model's score for
the explained class (softmax probability; sigmoid for a multi-label head); *insertion*
starts from the baseline and reveals them. The area under each curve (trapezoid rule over
the fraction) is in ``[0, 1]``: a map the model relies on has a low deletion and a high
insertion area, so ``faithfulness = insertion − deletion`` is in ``[-1, 1]``, higher is
better. Cost: ``2 × (steps + 1)`` forward passes per image and map, batched.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from drift_gate.data.datasets import Images

__all__ = ["BASELINES", "deletion_insertion", "faithfulness_metrics", "replacement"]

#: What removed pixels are replaced with.
BASELINES = ("blur", "mean")


def replacement(x: torch.Tensor, kind: str) -> torch.Tensor:
    """What removed pixels of ``x`` become: its blurred copy, or the mean (zero after
    normalisation)."""
    if kind == "mean":
        return torch.zeros_like(x)
    from torchvision.transforms.functional import gaussian_blur

    side = x.shape[-1]
    kernel = max(3, (side // 8) | 1)
    blurred: torch.Tensor = gaussian_blur(x, [kernel, kernel], [side / 16.0, side / 16.0])
    return blurred


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: np.ndarray,
    targets: np.ndarray,
    *,
    steps: int = 10,
    baseline: str = "blur",
    multilabel: bool = False,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion areas of ``maps`` (``(N, h, w)``) on ``model`` for the inputs
    ``x`` (``(N, C, H, W)``, normalised as the model expects) and the classes ``targets``.

    Returns:
        ``(deletion, insertion)``, each ``(N,)`` in ``[0, 1]``.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline {baseline!r}: expected one of {', '.join(BASELINES)}")
    model.eval()
    device = next(model.parameters()).device
    n, _, h, w = x.shape
    sal = torch.nn.functional.interpolate(
        torch.as_tensor(maps, dtype=torch.float32)[:, None], size=(h, w), mode="bilinear", align_corners=False
    )[:, 0].reshape(n, -1)
    order = torch.argsort(sal, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w).expand(n, -1).contiguous())
    rank = rank.reshape(n, 1, h, w)
    base = replacement(x, baseline)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    scores = np.zeros((2, n, steps + 1))
    jobs = [(i, k) for i in range(n) for k in range(steps + 1)]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        idx = torch.tensor([i for i, _ in chunk])
        cut = torch.tensor([round(fractions[k] * h * w) for _, k in chunk]).view(-1, 1, 1, 1)
        top = (rank[idx] < cut).to(x.dtype)  # the most salient pixels, per job
        xi, bi = x[idx], base[idx]
        deleted = xi * (1 - top) + bi * top
        inserted = bi * (1 - top) + xi * top
        logits = model(torch.cat([deleted, inserted]).to(device)).float().cpu()
        probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
        t = torch.as_tensor(targets)[idx]
        chosen = probs[torch.arange(len(logits)), torch.cat([t, t])].numpy()
        for j, (i, k) in enumerate(chunk):
            scores[0, i, k], scores[1, i, k] = chosen[j], chosen[len(chunk) + j]
    trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009 - NumPy 1.26: trapz
    area = trapezoid(scores, fractions, axis=2)
    return np.asarray(area[0], dtype=np.float64), np.asarray(area[1], dtype=np.float64)


def faithfulness_metrics(
    model: nn.Module,
    dataset: Images,
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    targets: np.ndarray,
    steps: int,
    baseline: str,
    multilabel: bool = False,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Per sample of ``dataset``: ``faithfulness`` (insertion − deletion) of the
    ``candidate`` maps and ``reference_faithfulness`` of the ``reference`` maps, both on
    ``model``, and their difference ``faithfulness_change``; ``batch_size`` images at a time."""
    parts: dict[str, list[np.ndarray]] = {"faithfulness": [], "reference_faithfulness": []}
    n = len(dataset)
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        x = torch.stack([dataset[i][0] for i in range(rows.start, rows.stop)])
        for key, maps in (("faithfulness", candidate), ("reference_faithfulness", reference)):
            deletion, insertion = deletion_insertion(
                model,
                x,
                maps[rows],
                targets[rows],
                steps=steps,
                baseline=baseline,
                multilabel=multilabel,
                batch_size=batch_size,
            )
            parts[key].append(insertion - deletion)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["faithfulness_change"] = out["faithfulness"] - out["reference_faithfulness"]
    return out
