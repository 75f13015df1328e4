"""AUC from logits: the ranking of the logits, in float64, never of saturated probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from drift_gate.evidence.classification import classification_metrics, ovr_log_odds, predicted_class


def test_multiclass_auc_matches_sklearn_on_exact_probabilities() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    logits = rng.normal(size=(30, 3)) * 2
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()  # float64: no ties
    m = classification_metrics(logits, labels, ("a", "b", "c"))
    assert m["auc_macro"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert m["accuracy"] == pytest.approx((logits.argmax(1) == labels).mean())


def test_log_odds_rank_like_the_softmax() -> None:
    logits = np.random.default_rng(1).normal(size=(50, 4))
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    odds = ovr_log_odds(logits)
    for c in range(4):
        np.testing.assert_array_equal(np.argsort(odds[:, c]), np.argsort(probs[:, c]))
    np.testing.assert_allclose(odds, np.log(probs / (1 - probs)), rtol=1e-9)


def _saturated_binary() -> tuple[np.ndarray, np.ndarray]:
    """A confident binary model: logit differences of 20 to 40, where float32 softmax
    rounds every winning probability to 1.0, but the logits still rank the images."""
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 10)
    margin = rng.uniform(20, 40, size=20) * np.where(rng.random(20) < 0.8, 1, -1)
    diff = np.where(labels == 1, margin, -margin)
    logits = np.stack([-diff / 2, diff / 2], axis=1).astype(np.float32)
    return logits, labels


def test_binary_auc_is_the_logit_difference_auc_where_softmax_saturates() -> None:
    logits, labels = _saturated_binary()
    p32 = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert (p32 == 1.0).sum() == 20  # the old way: every winning probability tied at 1.0
    m = classification_metrics(logits, labels, ("normal", "tb"))
    want = roc_auc_score(labels, logits[:, 1].astype(np.float64) - logits[:, 0])
    assert m["auc_per_class"]["normal"] == pytest.approx(want)
    assert m["auc_per_class"]["tb"] == pytest.approx(want)
    assert m["auc_macro"] == pytest.approx(want)
    old = np.mean([roc_auc_score(labels == c, p32[:, c]) for c in (0, 1)])
    assert abs(old - want) > 0.01  # what the old computation got wrong


def test_single_logit_binary_head() -> None:
    logits, labels = _saturated_binary()
    one = (logits[:, 1] - logits[:, 0])[:, None]
    m = classification_metrics(one, labels, ("normal", "tb"))
    assert m["auc_macro"] == pytest.approx(
        classification_metrics(logits, labels, ("normal", "tb"))["auc_macro"]
    )
    np.testing.assert_array_equal(predicted_class(one), predicted_class(logits))


def test_multiclass_ties_of_float32_softmax_are_resolved() -> None:
    # two images whose class-2 probabilities tie in float32 (both round to 1.0) but not in the logits
    logits = np.array([[0, 0, 30], [0, 0, 40], [0, 5, 0], [5, 0, 0]], dtype=np.float32)
    scores = ovr_log_odds(logits)
    assert scores[1, 2] > scores[0, 2]
    p32 = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert p32[0, 2] == p32[1, 2] == 1.0


def test_classes_without_both_outcomes_are_left_out() -> None:
    m = classification_metrics(np.zeros((3, 2)), np.zeros(3, int), ("a", "b"))
    assert m["auc_per_class"] == {} and np.isnan(m["auc_macro"])
    with pytest.raises(ValueError, match="3 score columns for 2 classes"):
        classification_metrics(np.zeros((3, 3)), np.zeros(3, int), ("a", "b"))
