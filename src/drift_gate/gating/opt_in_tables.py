"""The opt-in checks' tables of ``thresholds.toml``: ``[sanity]``, ``[faithfulness]`` and
``[counterfactual]`` (settings, not bound tables; :mod:`drift_gate.gating.thresholds`
assembles them)."""

from __future__ import annotations

from typing import Any

from drift_gate.evidence.counterfactual_choices import BASELINES, CONTROLS, REGIONS, one_of
from drift_gate.gating._toml import Ctx, as_number

__all__ = [
    "COUNTERFACTUAL_BORDER",
    "COUNTERFACTUAL_KEYS",
    "COUNTERFACTUAL_MIN_SAMPLES",
    "FAITHFULNESS_KEYS",
    "SANITY_KEYS",
    "counterfactual_section",
    "faithfulness_section",
    "sanity_section",
]


SANITY_KEYS = {"randomise", "max_randomised_correlation", "max_class_correlation"}
FAITHFULNESS_KEYS = {"steps", "baseline"}
COUNTERFACTUAL_KEYS = {
    "border",
    "baseline",
    "control",
    "draws",
    "max_score_drop",
    "max_corner_drop",
    "min_samples",
    "paired",
    "region",
}
#: Default smallest number of samples pointing outside the anatomy whose drop is judged.
COUNTERFACTUAL_MIN_SAMPLES = 3
#: Default width of the border band treated as outside the anatomy (share of the side).
COUNTERFACTUAL_BORDER = 0.1


def sanity_section(ctx: Ctx, raw: dict[str, Any]) -> dict[str, Any]:
    if not raw:
        return {}
    what = raw.get("randomise", "head")
    if what not in ("head", "head+block"):
        raise ctx.fail(["sanity"], "randomise", f"expected 'head' or 'head+block', got {what!r}")
    out: dict[str, Any] = {"sanity_randomise": what}
    for key, field_name in (
        ("max_randomised_correlation", "sanity_max_correlation"),
        ("max_class_correlation", "sanity_max_class_correlation"),
    ):
        if key in raw:
            bound = as_number(ctx, ["sanity"], key, raw[key])
            if not -1 <= bound <= 1:
                raise ctx.fail(["sanity"], key, f"a correlation lies in [-1, 1], not {bound:g}")
            out[field_name] = bound
    if len(out) == 1:
        raise ctx.fail(["sanity"], None, "set max_randomised_correlation and/or max_class_correlation")
    return out


def faithfulness_section(ctx: Ctx, raw: dict[str, Any]) -> dict[str, Any]:
    if not raw:
        return {}
    steps = raw.get("steps", 10)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100:
        raise ctx.fail(["faithfulness"], "steps", f"expected a whole number in [1, 100], got {steps!r}")
    baseline = raw.get("baseline", "blur")
    if baseline not in ("blur", "mean"):
        raise ctx.fail(["faithfulness"], "baseline", f"expected 'blur' or 'mean', got {baseline!r}")
    return {"faithfulness_steps": steps, "faithfulness_baseline": baseline}


def counterfactual_section(ctx: Ctx, raw: dict[str, Any]) -> dict[str, Any]:
    if not raw:
        return {}
    where = ["counterfactual"]
    border = as_number(ctx, where, "border", raw.get("border", COUNTERFACTUAL_BORDER))
    if not 0 < border < 0.5:
        raise ctx.fail(where, "border", f"a share of the side in (0, 0.5), not {border:g}")
    baseline = raw.get("baseline", "swap")
    if baseline not in BASELINES:
        raise ctx.fail(where, "baseline", f"expected {one_of(BASELINES)}, got {baseline!r}")
    region = raw.get("region", "map")
    if region not in REGIONS:
        raise ctx.fail(
            where,
            "region",
            "expected 'map' (where the maps point), 'band' (all of it) or 'corners' (each corner), "
            f"got {region!r}",
        )
    control = raw.get("control", "none")
    if control not in CONTROLS:
        raise ctx.fail(where, "control", f"expected {one_of(CONTROLS)}, got {control!r}")
    if control != "none" and baseline != "swap":
        raise ctx.fail(
            where, "control", f"'{control}' compares two swaps; baseline = {baseline!r} swaps nothing"
        )
    draws = raw.get("draws", 1)
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= 16:
        raise ctx.fail(
            where, "draws", f"expected a whole number of donors per image in [1, 16], got {draws!r}"
        )
    if draws > 1 and baseline != "swap":
        raise ctx.fail(where, "draws", f"donors are drawn for 'swap'; baseline = {baseline!r} draws none")
    drop, corner = _drop_bounds(ctx, raw, region)
    n = raw.get("min_samples", COUNTERFACTUAL_MIN_SAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ctx.fail(where, "min_samples", f"expected a whole number >= 1, got {n!r}")
    paired = _paired(ctx, raw, region)
    return {
        "counterfactual_paired": paired,
        "counterfactual_max_corner_drop": corner,
        "counterfactual_border": border,
        "counterfactual_baseline": baseline,
        "counterfactual_region": region,
        "counterfactual_control": control,
        "counterfactual_draws": draws,
        "counterfactual_max_drop": drop,
        "counterfactual_min_samples": n,
    }


def _drop_bounds(ctx: Ctx, raw: dict[str, Any], region: str) -> tuple[float, float | None]:
    """``[counterfactual]``'s ``max_score_drop`` and ``max_corner_drop`` (``None``: not set)."""
    where = ["counterfactual"]
    if "max_score_drop" not in raw:
        raise ctx.fail(where, None, "set max_score_drop (the largest mean drop of the candidate's score)")
    drop = as_number(ctx, where, "max_score_drop", raw["max_score_drop"])
    if not 0 <= drop <= 1:
        raise ctx.fail(where, "max_score_drop", f"a score drop lies in [0, 1], not {drop:g}")
    if "max_corner_drop" not in raw:
        return drop, None
    if region == "corners":
        raise ctx.fail(
            where, "max_corner_drop", "region = 'corners' judges the corners under max_score_drop already"
        )
    corner = as_number(ctx, where, "max_corner_drop", raw["max_corner_drop"])
    if not 0 <= corner <= 1:
        raise ctx.fail(where, "max_corner_drop", f"a score drop lies in [0, 1], not {corner:g}")
    return drop, corner


def _paired(ctx: Ctx, raw: dict[str, Any], region: str) -> bool:
    """``[counterfactual] paired``: a yes or no, for map-free regions only."""
    paired = raw.get("paired", False)
    if not isinstance(paired, bool):
        raise ctx.fail(["counterfactual"], "paired", f"expected true or false, got {paired!r}")
    if paired and region == "map":
        raise ctx.fail(
            ["counterfactual"],
            "paired",
            "needs a map-free region ('band' or 'corners'): under 'map' the reference's drop would be "
            "measured where the reference's maps point, not where the candidate's do",
        )
    return paired
