"""The bound tables of ``thresholds.toml``: ``[drift]`` (defaults, per model, per model and
method, per class) and ``[newly_correct]``, checked key by key (:mod:`drift_gate.gating.thresholds`
assembles them)."""

from __future__ import annotations

from typing import Any

from drift_gate.errors import ConfigError
from drift_gate.evidence.methods import METHODS
from drift_gate.evidence.registry import METRICS
from drift_gate.gating._toml import Ctx, as_number, table_line
from drift_gate.gating.kinds import KINDS
from drift_gate.models.backbones import BACKBONES

__all__ = [
    "BOUND_KINDS",
    "NEWLY_CORRECT_MIN_SAMPLES",
    "check_contradictions",
    "drift_section",
    "drift_table",
    "newly_correct_section",
]


#: Bound kinds (:data:`~drift_gate.gating.kinds.KINDS`, read at each use): absolute
#: (min, max, abs_max) and relative to the approved value (max_drop, max_rise).
BOUND_KINDS = KINDS.keys()


def _absolute() -> str:
    """The absolute kinds' keys, for a message that refuses a relative one."""
    return ", ".join(k for k, kind in KINDS.items() if not kind.relative)


#: Default smallest "newly correct" group whose rules are checked.
NEWLY_CORRECT_MIN_SAMPLES = 5


def _model_scope(ctx: Ctx, name: str, spec: Any) -> bool:
    """Whether ``[drift.<name>]`` is a model's table: a registered backbone, or a model
    spec's name whose table holds metrics or methods. A name this close to a backbone's
    is taken for a misspelling of it."""
    import difflib

    if name in BACKBONES:
        return True
    if name in METRICS or not isinstance(spec, dict):
        return False
    close = difflib.get_close_matches(name, list(BACKBONES), n=1, cutoff=0.8)
    if close and _is_table_of_tables(spec):
        raise ConfigError(
            f"{ctx.path}:{table_line(ctx.text, ['drift', name])}: drift.{name}: unknown backbone "
            f"{name!r} (did you mean {close[0]}?); known: {', '.join(BACKBONES)}"
        )
    return any(k in METRICS or k in METHODS or k == "labels" for k in spec)


def _is_table_of_tables(spec: Any) -> bool:
    """A value that holds tables (a backbone's or method's), not ``kind = number`` bounds."""
    return isinstance(spec, dict) and any(isinstance(v, dict) for v in spec.values())


def drift_table(ctx: Ctx, table: list[str], raw: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric, spec in raw.items():
        if metric not in METRICS and table == ["drift"] and _is_table_of_tables(spec):
            raise ConfigError(
                f"{ctx.path}:{table_line(ctx.text, ['drift', metric])}: drift.{metric}: neither a metric "
                f"nor a model's table (backbones: {', '.join(BACKBONES)}, or a model spec's name "
                "holding metric or method tables)"
            )
        if metric not in METRICS and len(table) == 2 and _is_table_of_tables(spec):
            raise ConfigError(
                f"{ctx.path}:{table_line(ctx.text, [*table, metric])}: {'.'.join(table)}.{metric}: "
                f"unknown method {metric!r}; known: {', '.join(METHODS)}"
            )
        if metric not in METRICS:
            raise ctx.fail(table, metric, f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        if not isinstance(spec, dict):
            raise ctx.fail(
                table, metric, f"expected bounds such as {metric}.min = 0.3 (kinds: {', '.join(BOUND_KINDS)})"
            )
        for kind, value in spec.items():
            if kind not in BOUND_KINDS:
                raise ctx.fail(
                    table, f"{metric}.{kind}", f"unknown bound {kind!r}; known: {', '.join(BOUND_KINDS)}"
                )
            number = as_number(ctx, table, f"{metric}.{kind}", value)
            low, high = KINDS[kind].allowed(*METRICS[metric].range)
            if KINDS[kind].non_negative and number < 0:
                raise ctx.fail(table, f"{metric}.{kind}", f"{kind} must be >= 0, got {number}")
            if not low <= number <= high:
                allowed = f"[{low:g}, {high:g}]"
                raise ctx.fail(
                    table,
                    f"{metric}.{kind}",
                    f"{number:g} is outside what {metric} can take: {kind} must lie in {allowed}",
                )
            out[f"{metric}.{kind}"] = number
    return out


def check_contradictions(ctx: Ctx, table: list[str], merged: dict[str, float]) -> None:
    for metric in METRICS:
        lo, hi = merged.get(f"{metric}.min"), merged.get(f"{metric}.max")
        if lo is not None and hi is not None and lo > hi:
            raise ctx.fail(
                table, f"{metric}.min", f"contradictory bounds: {metric}.min = {lo} > {metric}.max = {hi}"
            )


def drift_section(ctx: Ctx, drift: dict[str, Any]) -> dict[str, Any]:
    """The bound tables by (backbone, method), and where each bound was set."""
    tables: dict[tuple[str | None, str | None], dict[str, float]] = {}
    sources: dict[tuple[str | None, str | None, str], str] = {}

    def add(arch: str | None, method: str | None, raw: dict[str, Any]) -> None:
        table = ["drift", *(p for p in (arch, method) if p)]
        tables[(arch, method)] = drift_table(ctx, table, raw)
        for key in tables[(arch, method)]:
            sources[(arch, method, key)] = ctx.where(table, key).rsplit(": ", 1)[0]

    labels: dict[tuple[str, str], dict[str, float]] = {}
    scopes = {k for k, v in drift.items() if _model_scope(ctx, k, v)}
    add(None, None, {k: v for k, v in drift.items() if k not in scopes})
    for arch, table in drift.items():
        if arch not in scopes:
            continue
        if not isinstance(table, dict):
            raise ctx.fail(["drift"], arch, "expected a table of bounds")
        add(arch, None, {k: v for k, v in table.items() if k not in METHODS and k != "labels"})
        per_class = table.get("labels", {})
        if not isinstance(per_class, dict):
            raise ctx.fail(["drift", arch], "labels", "expected tables [drift.<model>.labels.<class>]")
        for cls, bounds in per_class.items():
            where = ["drift", arch, "labels", cls]
            if not isinstance(bounds, dict):
                raise ctx.fail(["drift", arch, "labels"], cls, "expected a table of bounds")
            labels[(arch, cls)] = drift_table(ctx, where, bounds)
            for key in labels[(arch, cls)]:
                if KINDS[key.rsplit(".", 1)[1]].relative:
                    raise ctx.fail(where, key, f"per-class bounds are absolute ({_absolute()})")
                sources[(arch, f"labels.{cls}", key)] = ctx.where(where, key).rsplit(": ", 1)[0]
        for method, mtable in table.items():
            if method in METHODS:
                if not isinstance(mtable, dict):
                    raise ctx.fail(["drift", arch], method, "expected a table of bounds")
                add(arch, method, mtable)
    return {"tables": tables, "sources": sources, "labels": labels}


def newly_correct_section(ctx: Ctx, raw: Any) -> dict[str, Any]:
    """``[newly_correct]``: ``min_samples`` and absolute bounds on that group."""
    if not isinstance(raw, dict):
        raise ctx.fail([], "newly_correct", f"expected a table [newly_correct], got {type(raw).__name__}")
    n = raw.get("min_samples", NEWLY_CORRECT_MIN_SAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ctx.fail(["newly_correct"], "min_samples", f"expected a whole number >= 1, got {n!r}")
    bounds = drift_table(ctx, ["newly_correct"], {k: v for k, v in raw.items() if k != "min_samples"})
    sources = {}
    for key in bounds:
        if KINDS[key.rsplit(".", 1)[1]].relative:
            raise ctx.fail(["newly_correct"], key, f"newly-correct bounds are absolute ({_absolute()})")
        sources[(None, "newly_correct", key)] = ctx.where(["newly_correct"], key).rsplit(": ", 1)[0]
    check_contradictions(ctx, ["newly_correct"], bounds)
    return {"newly_correct": bounds, "newly_correct_min_samples": n, "sources": sources}
