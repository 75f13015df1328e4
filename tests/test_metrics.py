"""Drift metrics: definitions, references (scipy), invariances, degenerate maps, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from drift_gate.evidence.metrics import (
    FORMULAS,
    concentration,
    concentration_change,
    correlation,
    displacement,
    drift_metrics,
    gini,
    iou,
    is_degenerate,
    localisation,
    peak_displacement,
    spearman,
)
from drift_gate.evidence.registry import (
    LOCALISATION_METRICS,
    METRICS,
    PAIRWISE_METRICS,
    RANK_METRICS,
    Direction,
)
from drift_gate.evidence.summary import select_samples, summarise

#: The metrics drift_metrics computes (the localisation ones need masks).
PAIRWISE = list(PAIRWISE_METRICS)


def blob(h: int, w: int, r: float, c: float, sigma: float = 2.0) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return np.exp(-((y - r) ** 2 + (x - c) ** 2) / (2 * sigma**2))


@pytest.fixture()
def maps() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((6, 16, 20)), rng.random((6, 16, 20))


def test_every_metric_declares_its_direction() -> None:
    assert METRICS["iou"].direction is Direction.HIGHER
    assert METRICS["correlation"].direction is Direction.HIGHER
    assert METRICS["displacement"].direction is Direction.LOWER
    assert METRICS["concentration_change"].direction is Direction.ZERO
    assert set(RANK_METRICS) <= set(METRICS)


def test_identity(maps: tuple[np.ndarray, np.ndarray]) -> None:
    a, _ = maps
    m = drift_metrics(a, a, ranks=True)
    for name, spec in METRICS.items():
        if name not in PAIRWISE_METRICS:
            continue
        assert spec.ideal is not None
        np.testing.assert_allclose(m[name], spec.ideal, atol=1e-9, err_msg=name)


def test_symmetry(maps: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = maps
    ab, ba = drift_metrics(a, b, ranks=True), drift_metrics(b, a, ranks=True)
    for name in ("displacement", "peak_displacement", "iou", "correlation", "spearman"):
        np.testing.assert_allclose(ab[name], ba[name], atol=1e-12, err_msg=name)
    for name in ("concentration_change", "gini_change"):
        np.testing.assert_allclose(ab[name], -ba[name], atol=1e-12, err_msg=name)


def test_invariant_to_positive_scaling_and_offset(maps: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = maps
    base = drift_metrics(a, b, ranks=True)
    scaled = drift_metrics(a * 7.5 + 2.0, b * 0.01, ranks=True)
    for name in PAIRWISE:
        np.testing.assert_allclose(scaled[name], base[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize(("dr", "dc"), [(0, 5), (3, 4), (6, 0)])
def test_moved_blob_gives_displacement_d_over_diagonal(dr: int, dc: int) -> None:
    h, w = 64, 48
    a = blob(h, w, 20, 15)[None]
    b = blob(h, w, 20 + dr, 15 + dc)[None]
    expected = math.hypot(dr, dc) / math.hypot(h, w)
    np.testing.assert_allclose(displacement(a, b), expected, rtol=1e-6)
    np.testing.assert_allclose(peak_displacement(a, b), expected, rtol=1e-12)


def test_pearson_and_spearman_equal_scipy() -> None:
    rng = np.random.default_rng(1)
    a = np.maximum(rng.normal(size=(8, 12, 9)), 0)  # many tied zeros
    b = np.round(rng.random((8, 12, 9)), 1)  # many ties
    for i in range(8):
        assert correlation(a, b)[i] == pytest.approx(pearsonr(a[i].ravel(), b[i].ravel())[0], abs=1e-7)
        assert spearman(a, b)[i] == pytest.approx(spearmanr(a[i].ravel(), b[i].ravel())[0], abs=1e-7)


def test_iou_of_known_masks() -> None:
    a = np.zeros((1, 10, 10))
    b = np.zeros((1, 10, 10))
    a[0, :2, :] = 1  # top 20 % = rows 0-1
    b[0, 1:3, :] = 1  # top 20 % = rows 1-2
    assert iou(a, b)[0] == pytest.approx(10 / 30)


def test_iou_ties_are_broken_deterministically() -> None:
    a = np.zeros((1, 5, 5))
    a[0, 0, 0] = 1.0  # 1 pixel above, 24 tied at zero: the top-5 mask takes 4 tied ones in order
    b = a.copy()
    assert iou(a, b)[0] == 1.0
    assert drift_metrics(a, b)["iou"][0] == 1.0


def test_concentration_and_gini() -> None:
    flat = np.ones((1, 10, 10))
    flat[0, 0, 0] = 0.0  # nearly uniform after normalisation: 10 % of pixels hold ~10 % of mass
    assert concentration(flat)[0] == pytest.approx(10 / 99)
    peak = np.zeros((1, 10, 10))
    peak[0, 3, 3] = 1.0
    assert concentration(peak)[0] == pytest.approx(1.0)
    assert gini(peak)[0] == pytest.approx(1 - 1 / 100)
    assert concentration_change(flat, peak)[0] == pytest.approx(1 - 10 / 99)
    rng = np.random.default_rng(2)
    x = rng.random((1, 7, 7))
    v = np.sort((x - x.min()) / (x.max() - x.min()), axis=None)
    expected = np.abs(v[:, None] - v[None, :]).sum() / (2 * v.size**2 * v.mean())
    assert gini(x)[0] == pytest.approx(expected)


def test_degenerate_maps_are_flagged_not_averaged() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((4, 8, 8))
    b = rng.random((4, 8, 8))
    a[1] = 0.0
    b[2] = 5.0
    assert is_degenerate(a).tolist() == [False, True, False, False]
    m = drift_metrics(a, b, ranks=True)
    assert m["degenerate"].tolist() == [False, True, True, False]
    for name in PAIRWISE:
        assert np.isnan(m[name][1:3]).all() and np.isfinite(m[name][[0, 3]]).all()
    s = summarise(m, np.ones(4, bool), np.array([0, 0, 1, 1]), ("x", "y"))
    assert s["iou"]["overall"].n == 2 and s["iou"]["overall"].n_degenerate == 2
    assert s["iou"]["overall"].mean == pytest.approx(m["iou"][[0, 3]].mean())
    assert s["iou"]["y"].n == 1 and s["iou"]["y"].n_degenerate == 1


def test_empty_batch() -> None:
    m = drift_metrics(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
    assert m["iou"].shape == (0,) and m["degenerate"].dtype == bool


def test_chunking_does_not_change_results(maps: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = maps
    one, many = drift_metrics(a, b, ranks=True, chunk=64), drift_metrics(a, b, ranks=True, chunk=2)
    for k in one:
        np.testing.assert_array_equal(one[k], many[k])


def test_drift_metrics_reports_every_metric_with_a_formula_and_no_other() -> None:
    """A pairwise metric is one registry entry: its declaration (direction, range) and
    its formula, which the per-metric functions and drift_metrics both evaluate."""
    rng = np.random.default_rng(3)
    out = drift_metrics(rng.random((3, 8, 8)), rng.random((3, 8, 8)), ranks=True)
    with_formula = {name for name, spec in METRICS.items() if spec.formula is not None}
    assert with_formula == set(PAIRWISE_METRICS) == set(FORMULAS)
    assert set(out) == with_formula | {"concentration_a", "concentration_b", "degenerate"}


def test_a_formula_is_what_drift_metrics_reports(maps: tuple[np.ndarray, np.ndarray], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a, b = maps
    before = drift_metrics(a, b)["displacement"]
    monkeypatch.setitem(
        FORMULAS, "displacement", lambda p: 2 * (p.a.centroid - p.b.centroid).norm(dim=1) / p.diagonal
    )
    np.testing.assert_allclose(drift_metrics(a, b)["displacement"], 2 * before)
    np.testing.assert_allclose(displacement(a, b), 2 * before, atol=1e-6)


def test_individual_functions_agree_with_drift_metrics(maps: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = maps
    m = drift_metrics(a, b, ranks=True)
    for fn in (displacement, peak_displacement, iou, correlation, spearman, concentration_change):
        np.testing.assert_allclose(fn(a, b), m[fn.__name__], atol=1e-6, err_msg=fn.__name__)


def test_sample_selection() -> None:
    y = np.array([0, 1, 2, 1])
    ref = np.array([0, 1, 0, 1])
    cand = np.array([0, 2, 2, 1])
    assert select_samples(y, ref, cand).tolist() == [True, False, False, True]
    assert select_samples(y, ref, cand, "all").all()
    with pytest.raises(ValueError, match="unknown sample selection"):
        select_samples(y, ref, cand, "some")


def test_summary_statistics_and_seeded_bootstrap() -> None:
    rng = np.random.default_rng(4)
    values = {name: rng.random(50) for name in METRICS} | {"degenerate": np.zeros(50, bool)}
    labels = np.repeat([0, 1], 25)
    s1 = summarise(values, np.ones(50, bool), labels, ("a", "b"), seed=7)
    s2 = summarise(values, np.ones(50, bool), labels, ("a", "b"), seed=7)
    assert s1 == s2
    o = s1["iou"]["overall"]
    v = values["iou"]
    assert (o.n, o.mean, o.median) == (50, pytest.approx(v.mean()), pytest.approx(np.median(v)))
    assert o.p10 == pytest.approx(np.percentile(v, 10)) and o.p90 == pytest.approx(np.percentile(v, 90))
    assert o.std == pytest.approx(v.std(ddof=1))
    assert o.ci_low is not None and o.ci_high is not None
    assert o.ci_low < o.mean < o.ci_high
    empty = summarise(values, np.zeros(50, bool), labels, ("a", "b"))["iou"]["overall"]
    assert empty.n == 0 and empty.mean is None


def test_localisation_against_hand_computed_values() -> None:
    maps = np.zeros((4, 4, 4), np.float32)
    masks = np.zeros((4, 4, 4), bool)
    masks[:, :2, :2] = True  # the top-left quarter is the finding
    maps[0, 0, 0] = 3.0  # all mass inside, peak inside
    maps[1, 3, 3], maps[1, 0, 1] = 4.0, 1.0  # peak outside, 1/5 of the mass inside
    maps[2] = 1.0  # constant: degenerate
    maps[3, 0, 0] = 1.0
    masks[3] = False  # no finding (a normal image): nothing to point at
    out = localisation(maps, masks)
    np.testing.assert_array_equal(out["pointing_game"][:2], [1.0, 0.0])
    np.testing.assert_allclose(out["mask_energy"][:2], [1.0, 0.25 / 1.25])
    assert np.isnan(out["pointing_game"][2:]).all() and np.isnan(out["mask_energy"][2:]).all()


def test_localisation_is_invariant_to_min_max_normalisation() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((5, 8, 8)).astype(np.float32)
    masks = rng.random((5, 8, 8)) < 0.3
    a, b = localisation(maps, masks), localisation(maps * 7 + 2, masks)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5)
    with pytest.raises(ValueError, match="mask shape"):
        localisation(maps, masks[:, :4])


def test_samples_without_a_mask_leave_the_localisation_summary_only() -> None:
    values = {
        "iou": np.array([0.5, 0.7, 0.9]),
        "mask_energy": np.array([0.2, np.nan, 0.6]),
        "degenerate": np.zeros(3, bool),
    }
    s = summarise(values, np.ones(3, bool), np.array([0, 1, 0]), ["a", "b"])
    assert s["iou"]["overall"].n == 3 and s["mask_energy"]["overall"].n == 2
    assert s["mask_energy"]["overall"].mean == pytest.approx(0.4)
    assert s["mask_energy"]["b"].n == 0 and s["mask_energy"]["overall"].n_degenerate == 0
    assert set(LOCALISATION_METRICS) <= set(METRICS)
