"""Classification metrics from logits: pure functions, float64, no saturation.

AUC is a ranking metric, so it must be computed from a score that keeps the
model's ranking. Softmax probabilities in float32 do not: for a confident model
(logits around ±27) ``p(normal)`` rounds to 0 or 1 for most images, ties appear
that the logits do not have, and a binary task's two per-class AUCs, which must be
equal, come out different. Each class is therefore scored by its one-vs-rest
log-odds in float64,

    s_c = z_c - log sum_{j != c} exp(z_j),

which is a strictly increasing function of the softmax probability ``p_c`` (so the
AUC is the one the probabilities would give in exact arithmetic) and never
saturates. For two classes it is the logit difference ``z_1 - z_0`` (and its
negative), so both per-class AUCs are equal; a single-logit binary head is scored
by its logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "classification_metrics",
    "multilabel_metrics",
    "ovr_log_odds",
    "predicted_class",
    "predicted_positive",
]


def ovr_log_odds(logits: ArrayLike) -> NDArray[np.float64]:
    """One-vs-rest log-odds of every class, ``(N, K)`` float64.

    Args:
        logits: ``(N, K)`` logits of a softmax head, or ``(N, 1)`` of a single-logit
            binary head (class 1 positive), which gives ``(N, 2)``.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise ValueError(f"expected (N, K) logits, got shape {z.shape}")
    if z.shape[1] == 1:
        return np.concatenate([-z, z], axis=1)
    from scipy.special import logsumexp

    out = np.empty_like(z)
    for c in range(z.shape[1]):
        out[:, c] = z[:, c] - logsumexp(np.delete(z, c, axis=1), axis=1)
    return out


def predicted_class(logits: ArrayLike) -> NDArray[np.int64]:
    """The predicted class of each row (a single logit predicts class 1 when positive); a
    row with a NaN or infinite logit predicts nothing (``-1``, never a class)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2 and z.shape[1] == 1:
        out = (z[:, 0] > 0).astype(np.int64)
    else:
        out = np.asarray(np.nan_to_num(z).argmax(1), dtype=np.int64)
    if z.ndim == 2:
        out[~np.isfinite(z).all(1)] = -1
    return out


def _support(positive: NDArray[np.bool_]) -> int:
    """How many positives and negatives a class's AUC rests on: the smaller count."""
    return int(min(positive.sum(), (~positive).sum()))


def _non_finite(z: NDArray[np.float64]) -> int:
    return int((~np.isfinite(z)).any(axis=1).sum()) if z.ndim == 2 else 0


def classification_metrics(logits: ArrayLike, labels: ArrayLike, classes: Sequence[str]) -> dict[str, Any]:
    """Macro one-vs-rest AUC, accuracy and per-class AUC, from logits.

    Classes absent from ``labels`` (or the only class present) get no AUC and are
    left out of the macro mean, which is then NaN if no class has one. Logits that are
    NaN or infinite give no AUC at all (NaN; ``non_finite`` counts the rows): a broken
    model has no ranking to score. ``support`` gives each class's smaller count of
    positives and negatives, what its AUC rests on.
    """
    from sklearn.metrics import roc_auc_score

    z = np.asarray(logits, dtype=np.float64)
    broken = _non_finite(z)
    scores = ovr_log_odds(np.nan_to_num(z)) if broken else ovr_log_odds(z)
    y = np.asarray(labels)
    if scores.shape[1] != len(classes):
        raise ValueError(f"{scores.shape[1]} score columns for {len(classes)} classes")
    per_class: dict[str, float] = {}
    support: dict[str, int] = {}
    for c, name in enumerate(classes):
        positive = y == c
        support[name] = _support(positive)
        if positive.any() and not positive.all():
            per_class[name] = float("nan") if broken else float(roc_auc_score(positive, scores[:, c]))
    macro = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {
        "auc_macro": macro,
        "accuracy": float((predicted_class(z) == y).mean()) if len(y) else float("nan"),
        "auc_per_class": per_class,
        "support": support,
        "non_finite": broken,
        "n": len(y),
    }


def predicted_positive(logits: ArrayLike, operating_points: Sequence[float]) -> NDArray[np.bool_]:
    """Multi-label predictions ``(N, K)``: ``sigmoid(z_c) >= p_c`` for each class, compared
    as ``z_c >= log(p_c / (1 - p_c))`` in float64 (no saturation)."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.broadcast_to(np.asarray(operating_points, dtype=np.float64), (z.shape[1],))
    return np.asarray(z >= np.log(p / (1 - p)), dtype=bool)


def multilabel_metrics(
    logits: ArrayLike, positives: ArrayLike, classes: Sequence[str], operating_points: Sequence[float]
) -> dict[str, Any]:
    """Per-label AUC of each class's logit (the sigmoid's ranking), their macro mean, and
    the accuracy over every (image, label) at the operating points. A label that is
    positive for all images or for none has no AUC."""
    from sklearn.metrics import roc_auc_score

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    if z.shape != y.shape or z.shape[1] != len(classes):
        raise ValueError(f"logits {z.shape} and labels {y.shape} do not fit {len(classes)} classes")
    broken = _non_finite(z)
    per_class = {
        name: float("nan") if broken else float(roc_auc_score(y[:, c], z[:, c]))
        for c, name in enumerate(classes)
        if y[:, c].any() and not y[:, c].all()
    }
    macro = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    correct = predicted_positive(z, operating_points) == y
    correct[~np.isfinite(z)] = False
    return {
        "auc_macro": macro,
        "accuracy": float(correct.mean()) if y.size else float("nan"),
        "auc_per_class": per_class,
        "support": {name: _support(y[:, c]) for c, name in enumerate(classes)},
        "non_finite": broken,
        "n": len(y),
    }
