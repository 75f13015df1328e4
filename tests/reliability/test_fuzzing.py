"""Property-based tests: the thresholds parser on arbitrary text and tables, the
metrics on random and adversarial maps."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from drift_gate.errors import ConfigError
from drift_gate.evidence.metrics import drift_metrics, iou, is_degenerate, localisation
from drift_gate.evidence.registry import PAIRWISE_METRICS
from drift_gate.gating.thresholds import parse_thresholds

PAIRWISE = list(PAIRWISE_METRICS)


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200))
def test_parser_never_crashes_on_arbitrary_text(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_thresholds(text)


_VALUES = st.one_of(st.floats(allow_nan=True), st.integers(), st.text(max_size=3), st.booleans())


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["iou", "correlation", "displacement", "bogus"]),
        st.dictionaries(
            st.sampled_from(["min", "max", "abs_max", "max_drop", "mx"]), _VALUES, min_size=1, max_size=3
        ),
        min_size=1,
        max_size=3,
    ),
    st.sampled_from(["", "tiny.", "tiny.layercam.", 'densenet201."gradcam++".']),
)
def test_parser_accepts_or_rejects_cleanly(tables: dict[str, dict[str, object]], scope: str) -> None:
    lines = [f"[drift{'.' + scope.rstrip('.') if scope else ''}]"]
    for metric, bounds in tables.items():
        for kind, value in bounds.items():
            if isinstance(value, bool):
                lit = str(value).lower()
            elif isinstance(value, str):
                lit = '"' + value.replace("\\", "").replace('"', "") + '"'
            else:
                lit = repr(value)
            lit = {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(lit, lit)
            lines.append(f"{metric}.{kind} = {lit}")
    try:
        t = parse_thresholds("\n".join(lines))
    except ConfigError as exc:
        assert str(exc).startswith("thresholds.toml")
        return
    for b in t.bounds("tiny", "layercam") + t.bounds("densenet201", "gradcam++"):
        assert b.metric in ("iou", "correlation", "displacement") and isinstance(b.value, float)
        assert np.isfinite(b.value)


_ELEMENTS = st.floats(0, 1e6, allow_nan=False, allow_subnormal=False)
finite_maps = arrays(
    np.float64, st.tuples(st.integers(1, 4), st.integers(2, 9), st.integers(2, 9)), elements=_ELEMENTS
)


@settings(max_examples=60, deadline=None)
@given(finite_maps, st.data())
def test_localisation_is_a_share_or_undefined(a: np.ndarray, data: st.DataObject) -> None:
    masks = data.draw(arrays(np.bool_, a.shape))
    out = localisation(a, masks)
    undefined = is_degenerate(a) | ~masks.reshape(len(a), -1).any(1)
    for name in ("pointing_game", "mask_energy"):
        assert (np.isnan(out[name]) == undefined).all(), name
        v = out[name][~undefined]
        assert ((v >= 0) & (v <= 1 + 1e-9)).all(), name
    assert np.isin(out["pointing_game"][~undefined], (0.0, 1.0)).all()


@settings(max_examples=60, deadline=None)
@given(finite_maps, st.data())
def test_properties_hold_for_random_maps(a: np.ndarray, data: st.DataObject) -> None:
    b = data.draw(arrays(np.float64, a.shape, elements=_ELEMENTS))
    m = drift_metrics(a, b, ranks=True)
    ok = ~m["degenerate"]
    assert (m["degenerate"] == (is_degenerate(a) | is_degenerate(b))).all()
    for name in ("iou", "displacement", "peak_displacement"):
        assert ((m[name][ok] >= 0) & (m[name][ok] <= 1)).all(), name
    for name in ("correlation", "spearman", "concentration_change", "gini_change"):
        assert (np.abs(m[name][ok]) <= 1 + 1e-12).all(), name
    assert all(np.isnan(m[name][~ok]).all() for name in PAIRWISE)
    same = drift_metrics(a, a)
    ok_a = ~same["degenerate"]
    assert (same["iou"][ok_a] == 1).all() and (same["displacement"][ok_a] < 1e-6).all()


def _adversarial(kind: str, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    n, h, w = shape
    if kind == "constant":
        return np.full(shape, 0.7)
    if kind == "zeros":
        return np.zeros(shape)
    if kind == "one hot pixel":
        out = np.zeros(shape)
        out[np.arange(n), rng.integers(0, h, n), rng.integers(0, w, n)] = 1.0
        return out
    if kind == "tiny range":
        return 1.0 + rng.random(shape) * 1e-12
    if kind == "huge values":
        return rng.random(shape) * 1e30
    if kind == "checkerboard":
        return np.indices((h, w)).sum(0)[None].repeat(n, 0) % 2 * 1.0
    raise AssertionError(kind)


KINDS = ["constant", "zeros", "one hot pixel", "tiny range", "huge values", "checkerboard"]


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(KINDS), st.sampled_from(KINDS), st.integers(1, 3), st.integers(2, 12), st.integers(0, 99)
)
def test_adversarial_maps_are_flagged_or_bounded(ka: str, kb: str, n: int, side: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = _adversarial(ka, (n, side, side), rng), _adversarial(kb, (n, side, side), rng)
    m = drift_metrics(a, b, ranks=True)
    constant = {"constant", "zeros"}
    if ka in constant or kb in constant:
        assert m["degenerate"].all(), "a constant map is degenerate, never averaged"
    ok = ~m["degenerate"]
    for name in PAIRWISE:
        values = m[name][ok]
        assert np.isfinite(values).all(), (name, ka, kb)
    assert ((m["iou"][ok] >= 0) & (m["iou"][ok] <= 1)).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_maps_are_rejected(bad: float) -> None:
    a = np.random.default_rng(0).random((3, 5, 5))
    a[1, 2, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        drift_metrics(a, np.ones_like(a))
    with pytest.raises(ValueError, match="NaN or Inf"):
        drift_metrics(np.ones_like(a), a)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="map shapes differ"):
        drift_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match=r"expected maps of shape \(N, H, W\)"):
        iou(np.zeros((4, 4)), np.zeros((4, 4)))


@pytest.mark.parametrize("scale", [1e31, 1e300])
def test_values_too_large_are_rejected_not_overflowed(scale: float) -> None:
    a = np.random.default_rng(0).random((2, 5, 5)) * scale + scale
    with pytest.raises(ValueError, match=r"beyond the float32 range|beyond ±1e\+30"):
        drift_metrics(a, np.random.default_rng(1).random((2, 5, 5)))
