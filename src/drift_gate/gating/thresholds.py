"""``thresholds.toml`` -> validated, frozen rules. Errors name the key and its line.

Shape::

    [gate]
    methods = ["layercam", "gradcam++"]
    samples = "true-positive"      # or "all"
    min_samples = 30               # fewer usable samples: inconclusive, never a pass;
                                   # or a share of the audit set: "40%"
    statistic = "mean"             # "median", or "ci" (the conservative end of the 95 % CI)

    [auc]
    min = 0.95                     # candidate macro AUC on the audit set
    max_drop = 0.01                # vs the approved (else the reference) AUC

    [drift]                        # defaults for every backbone x method
    iou.min = 0.30                 # absolute bounds: min, max, abs_max
    iou.max_drop = 0.05            # relative to the approved value: max_drop, max_rise
    correlation.min = 0.50

    [drift.resnet50v2]             # per backbone, every method
    [drift.resnet50v2."gradcam++"] # per backbone and method (most specific wins)
    iou.min = 0.20
    [drift.my-convnext]            # a model spec's name (model.toml) works the same way
    [drift.my-convnext.labels.Effusion]  # one class (a multi-label head's label): its maps only
    iou.min = 0.25                 # (absolute bounds; every method)

    [onnx]                         # when a candidate has an exported model.onnx beside it
    max_rel_diff = 1e-4            # ONNX Runtime vs torch logits, relative to the largest logit

    [sanity]                       # opt-in: maps must depend on the model (Adebayo et al. 2018)
    randomise = "head"             # or "head+block": what is re-initialised in a copy of the candidate
    max_randomised_correlation = 0.5  # median rank correlation of the candidate's maps with the
                                   # copy's; above it the verdict is inconclusive, never a pass
    max_class_correlation = 0.9    # optional: its maps for the true class vs for another class

    [faithfulness]                 # opt-in: deletion / insertion curves of both maps on the
    steps = 10                     # candidate; faithfulness_change usable in [drift] rules;
    baseline = "blur"              # 2 x (steps + 1) forward passes per image, map and method

    [counterfactual]               # opt-in: where a candidate map's maximum lies in the band
    border = 0.1                   # along the edges (outside the anatomy: markers, text), that
    baseline = "swap"              # region is replaced (by another image's; or "edge", "mean",
    max_score_drop = 0.1           # "blur") and the candidate's score drop measured; its mean over
    min_samples = 3                # the selected and newly-correct samples must stay below the bound

    [newly_correct]                # samples the candidate newly gets right (the reference got
    min_samples = 5                # them wrong): where a new shortcut would carry the prediction.
    displacement.max = 0.15        # Absolute bounds on that group (every backbone x method);
                                   # with fewer samples its rules are skipped, not failed
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drift_gate.errors import ConfigError
from drift_gate.evidence.cam import METHODS
from drift_gate.evidence.registry import METRICS
from drift_gate.models.backbones import BACKBONES

__all__ = ["BOUND_KINDS", "ONNX_MAX_REL_DIFF", "Bound", "Thresholds", "load_thresholds", "parse_thresholds"]


#: Bound kinds: absolute (min, max, abs_max) and relative to the approved value.
BOUND_KINDS = ("min", "max", "abs_max", "max_drop", "max_rise")
_GATE_KEYS = {"methods", "samples", "min_samples", "statistic"}
_AUC_KEYS = {"min", "max_drop"}
_ONNX_KEYS = {"max_rel_diff"}
_SANITY_KEYS = {"randomise", "max_randomised_correlation", "max_class_correlation"}
_FAITHFULNESS_KEYS = {"steps", "baseline"}
_COUNTERFACTUAL_KEYS = {"border", "baseline", "max_score_drop", "min_samples"}
#: Default smallest number of samples pointing outside the anatomy whose drop is judged.
COUNTERFACTUAL_MIN_SAMPLES = 3
#: Default width of the border band treated as outside the anatomy (share of the side).
COUNTERFACTUAL_BORDER = 0.1
#: Default smallest "newly correct" group whose rules are checked.
NEWLY_CORRECT_MIN_SAMPLES = 5
#: Default bound on ONNX Runtime vs torch logits (relative to the largest |logit|).
ONNX_MAX_REL_DIFF = 1e-4
_STATISTICS = ("mean", "median", "ci")
_SAMPLES = ("true-positive", "all")


@dataclass(frozen=True)
class Bound:
    """One numeric bound on one metric, with where it was set."""

    metric: str
    kind: str
    value: float
    source: str  # e.g. "thresholds.toml:14 [drift.resnet50v2."gradcam++"]"


@dataclass(frozen=True)
class Thresholds:
    """The resolved rules of a thresholds file."""

    methods: tuple[str, ...] = ("layercam", "gradcam++")
    samples: str = "true-positive"
    min_samples: int = 30
    statistic: str = "mean"
    auc_min: float | None = None
    auc_max_drop: float | None = None
    #: (backbone or None, method or None) -> {"metric.kind": value}; (None, None) = defaults
    #: ``min_samples`` given as a share of the audit set (``"40%"`` -> 0.4), else None
    min_samples_share: float | None = None
    tables: dict[tuple[str | None, str | None], dict[str, float]] = field(default_factory=dict)
    #: (backbone, method, "metric.kind") -> "file:line" where the value was set
    sources: dict[tuple[str | None, str | None, str], str] = field(default_factory=dict)
    path: str = "thresholds.toml"
    onnx_max_rel_diff: float = ONNX_MAX_REL_DIFF
    #: (model, class) -> {"metric.kind": value}: absolute bounds on one class's maps
    labels: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    #: ``[sanity]``: what a copy of the candidate has re-initialised, and the largest median
    #: rank correlation its maps may keep with the candidate's (None: not checked)
    sanity_randomise: str = "head"
    sanity_max_correlation: float | None = None
    sanity_max_class_correlation: float | None = None
    #: ``[faithfulness]``: deletion/insertion steps (0: not computed) and the baseline
    faithfulness_steps: int = 0
    faithfulness_baseline: str = "blur"
    #: ``[newly_correct]``: absolute bounds on the samples the candidate newly gets right
    newly_correct: dict[str, float] = field(default_factory=dict)
    newly_correct_min_samples: int = NEWLY_CORRECT_MIN_SAMPLES
    #: ``[counterfactual]``: the border band (None: not computed), the replacement, the
    #: largest mean score drop and the fewest samples pointing outside that are judged
    counterfactual_border: float | None = None
    counterfactual_baseline: str = "swap"
    counterfactual_max_drop: float = 0.1
    counterfactual_min_samples: int = COUNTERFACTUAL_MIN_SAMPLES

    def newly_correct_bounds(self) -> list[Bound]:
        """The ``[newly_correct]`` bounds (every backbone x method)."""
        out = []
        for key, value in sorted(self.newly_correct.items()):
            metric, kind = key.rsplit(".", 1)
            out.append(Bound(metric, kind, value, self.sources.get((None, "newly_correct", key), self.path)))
        return out

    def label_bounds(self, arch: str) -> dict[str, list[Bound]]:
        """Per-class bounds of one model: class name -> bounds."""
        out: dict[str, list[Bound]] = {}
        for (a, cls), table in sorted(self.labels.items()):
            if a != arch:
                continue
            out[cls] = []
            for key, value in sorted(table.items()):
                metric, kind = key.rsplit(".", 1)
                out[cls].append(
                    Bound(metric, kind, value, self.sources.get((a, f"labels.{cls}", key), self.path))
                )
        return out

    def required_samples(self, n_audit: int) -> int:
        """The usable samples a rule needs on an audit set of ``n_audit`` images."""
        if self.min_samples_share is None:
            return self.min_samples
        return max(1, math.ceil(self.min_samples_share * n_audit - 1e-9))

    @property
    def min_samples_text(self) -> str:
        """``min_samples`` as written: ``20`` or ``40%``."""
        if self.min_samples_share is None:
            return str(self.min_samples)
        return f"{self.min_samples_share * 100:g}%"

    def bounds(self, arch: str, method: str) -> list[Bound]:
        """Bounds for one backbone x method: defaults, then backbone, then backbone+method."""
        merged: dict[str, Bound] = {}
        for scope in ((None, None), (arch, None), (arch, method)):
            for key, value in self.tables.get(scope, {}).items():
                metric, kind = key.rsplit(".", 1)
                merged[key] = Bound(metric, kind, value, self.sources.get((*scope, key), self.path))
        return [merged[k] for k in sorted(merged)]

    def as_dict(self) -> dict[str, Any]:
        """The resolved rules, for echoing into reports."""
        return {
            "gate": {
                "methods": list(self.methods),
                "samples": self.samples,
                "min_samples": self.min_samples if self.min_samples_share is None else self.min_samples_text,
                "statistic": self.statistic,
            },
            "auc": {
                k: v for k, v in (("min", self.auc_min), ("max_drop", self.auc_max_drop)) if v is not None
            },
            "drift": {
                f"{a or '*'}/{m or '*'}": dict(v)
                for (a, m), v in sorted(self.tables.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or ""))
            },
            "onnx": {"max_rel_diff": self.onnx_max_rel_diff},
            **(
                {"labels": {f"{a}/{c}": dict(v) for (a, c), v in sorted(self.labels.items())}}
                if self.labels
                else {}
            ),
            **(
                {
                    "sanity": {
                        "randomise": self.sanity_randomise,
                        "max_randomised_correlation": self.sanity_max_correlation,
                        "max_class_correlation": self.sanity_max_class_correlation,
                    }
                }
                if self.sanity_max_correlation is not None or self.sanity_max_class_correlation is not None
                else {}
            ),
            **(
                {"faithfulness": {"steps": self.faithfulness_steps, "baseline": self.faithfulness_baseline}}
                if self.faithfulness_steps
                else {}
            ),
            **(
                {
                    "counterfactual": {
                        "border": self.counterfactual_border,
                        "baseline": self.counterfactual_baseline,
                        "max_score_drop": self.counterfactual_max_drop,
                        "min_samples": self.counterfactual_min_samples,
                    }
                }
                if self.counterfactual_border is not None
                else {}
            ),
            **(
                {"newly_correct": {"min_samples": self.newly_correct_min_samples, **self.newly_correct}}
                if self.newly_correct
                else {}
            ),
        }


def _header_re(parts: list[str]) -> re.Pattern[str]:
    inner = r"\s*\.\s*".join(rf'(?:"{re.escape(p)}"|{re.escape(p)})' for p in parts)
    return re.compile(rf"^\s*\[\s*{inner}\s*\]\s*(#.*)?$")


def _line_of(text: str, table: list[str], key: str | None = None) -> int:
    """1-based line of ``key`` inside table ``table`` (or of the table header)."""
    lines = text.splitlines()
    header = _header_re(table) if table else None
    start = 0
    if header is not None:
        for i, line in enumerate(lines):
            if header.match(line):
                start = i + 1
                break
        else:
            start = 0
    if key is None:
        return max(start, 1)
    first = key.split(".")[0]
    key_re = re.compile(rf'^\s*(?:"{re.escape(first)}"|{re.escape(first)})\s*[.=]')
    for i in range(start, len(lines)):
        if i > start and lines[i].lstrip().startswith("[") and header is not None:
            break
        if key_re.match(lines[i]):
            return i + 1
    return max(start, 1)


def _table_line(text: str, table: list[str]) -> int:
    """1-based line of the first header ``[table]`` or ``[table.<more>]``, else of the
    first dotted key that starts with the table's last part."""
    inner = r"\s*\.\s*".join(rf'(?:"{re.escape(p)}"|{re.escape(p)})' for p in table)
    header = re.compile(rf"^\s*\[\s*{inner}\s*[\].]")
    for i, line in enumerate(text.splitlines()):
        if header.match(line):
            return i + 1
    return _line_of(text, table[:-1], table[-1])


class _Ctx:
    def __init__(self, text: str, path: str) -> None:
        self.text, self.path = text, path

    def where(self, table: list[str], key: str | None = None) -> str:
        name = ".".join(f'"{p}"' if not re.fullmatch(r"[A-Za-z0-9_-]+", p) else p for p in table)
        full = f"{name}.{key}" if key and name else (key or name)
        return f"{self.path}:{_line_of(self.text, table, key)}: {full}"

    def fail(self, table: list[str], key: str | None, message: str) -> ConfigError:
        return ConfigError(f"{self.where(table, key)}: {message}")


def _number(ctx: _Ctx, table: list[str], key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ctx.fail(table, key, f"expected a finite number, got {type(value).__name__} {value!r}")
    return float(value)


_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _min_samples(ctx: _Ctx, value: Any) -> tuple[int, float | None]:
    """``min_samples``: an integer >= 1, or a share of the audit set such as ``"40%"``."""
    if isinstance(value, str):
        m = _SHARE.match(value)
        if m and 0 < float(m.group(1)) <= 100:
            return 1, float(m.group(1)) / 100
        raise ctx.fail(
            ["gate"], "min_samples", f'expected a share of the audit set such as "40%", got {value!r}'
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ctx.fail(
            ["gate"], "min_samples", f'expected an integer >= 1 or a share such as "40%", got {value!r}'
        )
    return value, None


def _model_scope(ctx: _Ctx, name: str, spec: Any) -> bool:
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
            f"{ctx.path}:{_table_line(ctx.text, ['drift', name])}: drift.{name}: unknown backbone "
            f"{name!r} (did you mean {close[0]}?); known: {', '.join(BACKBONES)}"
        )
    return any(k in METRICS or k in METHODS or k == "labels" for k in spec)


def _is_table_of_tables(spec: Any) -> bool:
    """A value that holds tables (a backbone's or method's), not ``kind = number`` bounds."""
    return isinstance(spec, dict) and any(isinstance(v, dict) for v in spec.values())


def _drift_table(ctx: _Ctx, table: list[str], raw: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric, spec in raw.items():
        if metric not in METRICS and table == ["drift"] and _is_table_of_tables(spec):
            raise ConfigError(
                f"{ctx.path}:{_table_line(ctx.text, ['drift', metric])}: drift.{metric}: neither a metric "
                f"nor a model's table (backbones: {', '.join(BACKBONES)}, or a model spec's name "
                "holding metric or method tables)"
            )
        if metric not in METRICS and len(table) == 2 and _is_table_of_tables(spec):
            raise ConfigError(
                f"{ctx.path}:{_table_line(ctx.text, [*table, metric])}: {'.'.join(table)}.{metric}: "
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
            number = _number(ctx, table, f"{metric}.{kind}", value)
            if kind in ("abs_max", "max_drop", "max_rise") and number < 0:
                raise ctx.fail(table, f"{metric}.{kind}", f"{kind} must be >= 0, got {number}")
            lo, hi = METRICS[metric].range
            widest = hi - lo if kind in ("max_drop", "max_rise") else max(abs(lo), abs(hi))
            if (kind in ("min", "max") and not lo <= number <= hi) or (
                kind not in ("min", "max") and number > widest
            ):
                allowed = f"[{lo:g}, {hi:g}]" if kind in ("min", "max") else f"[0, {widest:g}]"
                raise ctx.fail(
                    table,
                    f"{metric}.{kind}",
                    f"{number:g} is outside what {metric} can take: {kind} must lie in {allowed}",
                )
            out[f"{metric}.{kind}"] = number
    return out


def _check_contradictions(ctx: _Ctx, table: list[str], merged: dict[str, float]) -> None:
    for metric in METRICS:
        lo, hi = merged.get(f"{metric}.min"), merged.get(f"{metric}.max")
        if lo is not None and hi is not None and lo > hi:
            raise ctx.fail(
                table, f"{metric}.min", f"contradictory bounds: {metric}.min = {lo} > {metric}.max = {hi}"
            )


def _section(ctx: _Ctx, doc: dict[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
    """A top-level table, checked for type and unknown keys."""
    table = doc.get(name, {})
    if not isinstance(table, dict):
        raise ctx.fail([], name, f"expected a table [{name}], got {type(table).__name__}")
    for key in table:
        if key not in keys:
            raise ctx.fail([name], key, f"unknown key; known: {', '.join(sorted(keys))}")
    return table


def _gate_section(ctx: _Ctx, gate: dict[str, Any]) -> dict[str, Any]:
    methods = gate.get("methods", ["layercam", "gradcam++"])
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise ctx.fail(["gate"], "methods", "expected a non-empty list of method names")
    for m in methods:
        if m not in METHODS:
            raise ctx.fail(["gate"], "methods", f"unknown method {m!r}; known: {', '.join(METHODS)}")
    samples = gate.get("samples", "true-positive")
    if samples not in _SAMPLES:
        raise ctx.fail(["gate"], "samples", f"expected one of {', '.join(_SAMPLES)}, got {samples!r}")
    statistic = gate.get("statistic", "mean")
    if statistic not in _STATISTICS:
        raise ctx.fail(["gate"], "statistic", f"expected one of {', '.join(_STATISTICS)}, got {statistic!r}")
    min_samples, share = _min_samples(ctx, gate.get("min_samples", 30))
    return {
        "methods": tuple(dict.fromkeys(methods)),
        "samples": samples,
        "statistic": statistic,
        "min_samples": min_samples,
        "min_samples_share": share,
    }


def _auc_section(ctx: _Ctx, auc: dict[str, Any]) -> dict[str, Any]:
    auc_min = _number(ctx, ["auc"], "min", auc["min"]) if "min" in auc else None
    auc_drop = _number(ctx, ["auc"], "max_drop", auc["max_drop"]) if "max_drop" in auc else None
    if auc_min is not None and not 0 <= auc_min <= 1:
        raise ctx.fail(["auc"], "min", f"an AUC bound must lie in [0, 1], got {auc_min}")
    if auc_drop is not None and auc_drop < 0:
        raise ctx.fail(["auc"], "max_drop", f"max_drop must be >= 0, got {auc_drop}")
    return {"auc_min": auc_min, "auc_max_drop": auc_drop}


def _onnx_section(ctx: _Ctx, onnx: dict[str, Any]) -> dict[str, Any]:
    rel = _number(ctx, ["onnx"], "max_rel_diff", onnx.get("max_rel_diff", ONNX_MAX_REL_DIFF))
    if rel < 0:
        raise ctx.fail(["onnx"], "max_rel_diff", f"max_rel_diff must be >= 0, got {rel}")
    return {"onnx_max_rel_diff": rel}


def _drift_section(ctx: _Ctx, drift: dict[str, Any]) -> dict[str, Any]:
    """The bound tables by (backbone, method), and where each bound was set."""
    tables: dict[tuple[str | None, str | None], dict[str, float]] = {}
    sources: dict[tuple[str | None, str | None, str], str] = {}

    def add(arch: str | None, method: str | None, raw: dict[str, Any]) -> None:
        table = ["drift", *(p for p in (arch, method) if p)]
        tables[(arch, method)] = _drift_table(ctx, table, raw)
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
            labels[(arch, cls)] = _drift_table(ctx, where, bounds)
            for key in labels[(arch, cls)]:
                if key.rsplit(".", 1)[1] in ("max_drop", "max_rise"):
                    raise ctx.fail(where, key, "per-class bounds are absolute (min, max, abs_max)")
                sources[(arch, f"labels.{cls}", key)] = ctx.where(where, key).rsplit(": ", 1)[0]
        for method, mtable in table.items():
            if method in METHODS:
                if not isinstance(mtable, dict):
                    raise ctx.fail(["drift", arch], method, "expected a table of bounds")
                add(arch, method, mtable)
    return {"tables": tables, "sources": sources, "labels": labels}


def _sanity_section(ctx: _Ctx, raw: dict[str, Any]) -> dict[str, Any]:
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
            bound = _number(ctx, ["sanity"], key, raw[key])
            if not -1 <= bound <= 1:
                raise ctx.fail(["sanity"], key, f"a correlation lies in [-1, 1], not {bound:g}")
            out[field_name] = bound
    if len(out) == 1:
        raise ctx.fail(["sanity"], None, "set max_randomised_correlation and/or max_class_correlation")
    return out


def _faithfulness_section(ctx: _Ctx, raw: dict[str, Any]) -> dict[str, Any]:
    if not raw:
        return {}
    steps = raw.get("steps", 10)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100:
        raise ctx.fail(["faithfulness"], "steps", f"expected a whole number in [1, 100], got {steps!r}")
    baseline = raw.get("baseline", "blur")
    if baseline not in ("blur", "mean"):
        raise ctx.fail(["faithfulness"], "baseline", f"expected 'blur' or 'mean', got {baseline!r}")
    return {"faithfulness_steps": steps, "faithfulness_baseline": baseline}


def _counterfactual_section(ctx: _Ctx, raw: dict[str, Any]) -> dict[str, Any]:
    if not raw:
        return {}
    where = ["counterfactual"]
    border = _number(ctx, where, "border", raw.get("border", COUNTERFACTUAL_BORDER))
    if not 0 < border < 0.5:
        raise ctx.fail(where, "border", f"a share of the side in (0, 0.5), not {border:g}")
    baseline = raw.get("baseline", "swap")
    if baseline not in ("swap", "edge", "mean", "blur"):
        raise ctx.fail(where, "baseline", f"expected 'swap', 'edge', 'mean' or 'blur', got {baseline!r}")
    if "max_score_drop" not in raw:
        raise ctx.fail(where, None, "set max_score_drop (the largest mean drop of the candidate's score)")
    drop = _number(ctx, where, "max_score_drop", raw["max_score_drop"])
    if not 0 <= drop <= 1:
        raise ctx.fail(where, "max_score_drop", f"a score drop lies in [0, 1], not {drop:g}")
    n = raw.get("min_samples", COUNTERFACTUAL_MIN_SAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ctx.fail(where, "min_samples", f"expected a whole number >= 1, got {n!r}")
    return {
        "counterfactual_border": border,
        "counterfactual_baseline": baseline,
        "counterfactual_max_drop": drop,
        "counterfactual_min_samples": n,
    }


def _newly_correct_section(ctx: _Ctx, raw: Any) -> dict[str, Any]:
    """``[newly_correct]``: ``min_samples`` and absolute bounds on that group."""
    if not isinstance(raw, dict):
        raise ctx.fail([], "newly_correct", f"expected a table [newly_correct], got {type(raw).__name__}")
    n = raw.get("min_samples", NEWLY_CORRECT_MIN_SAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ctx.fail(["newly_correct"], "min_samples", f"expected a whole number >= 1, got {n!r}")
    bounds = _drift_table(ctx, ["newly_correct"], {k: v for k, v in raw.items() if k != "min_samples"})
    sources = {}
    for key in bounds:
        if key.rsplit(".", 1)[1] in ("max_drop", "max_rise"):
            raise ctx.fail(["newly_correct"], key, "newly-correct bounds are absolute (min, max, abs_max)")
        sources[(None, "newly_correct", key)] = ctx.where(["newly_correct"], key).rsplit(": ", 1)[0]
    _check_contradictions(ctx, ["newly_correct"], bounds)
    return {"newly_correct": bounds, "newly_correct_min_samples": n, "sources": sources}


def _check_applicable(ctx: _Ctx, result: Thresholds) -> None:
    """Contradictions are judged on what applies to each backbone x method."""
    models = dict.fromkeys([*BACKBONES, *(a for a, _ in result.tables if a is not None)])
    for arch in models:
        for method in result.methods:
            merged = {f"{b.metric}.{b.kind}": b.value for b in result.bounds(arch, method)}
            scope = ["drift"]
            if result.tables.get((arch, method)):
                scope = ["drift", arch, method]
            elif result.tables.get((arch, None)):
                scope = ["drift", arch]
            _check_contradictions(ctx, scope, merged)
    if not any(result.tables.values()) and result.auc_min is None and result.auc_max_drop is None:
        raise ConfigError(
            f"{ctx.path}: no rules: set at least one [drift] or [auc] bound "
            "(a gate that checks nothing must not pass)"
        )


def parse_thresholds(text: str, path: str = "thresholds.toml") -> Thresholds:
    """Parses and validates the text of a thresholds file.

    Raises:
        ConfigError: TOML syntax errors (with line and column), unknown keys,
            misspelled metric, method or backbone names, wrong types,
            contradictory bounds, and files with no rule at all.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    ctx = _Ctx(text, path)
    tables = ("gate", "auc", "drift", "onnx", "newly_correct", "sanity", "faithfulness", "counterfactual")
    unknown = sorted(set(doc) - set(tables))
    if unknown:
        raise ctx.fail(
            [unknown[0]],
            None,
            "unknown table; expected [gate], [auc], [drift], [sanity], [faithfulness], [counterfactual], "
            "[newly_correct] or [onnx]",
        )
    drift = doc.get("drift", {})
    if not isinstance(drift, dict):
        raise ctx.fail([], "drift", f"expected a table [drift], got {type(drift).__name__}")
    drift_rules = _drift_section(ctx, drift)
    newly = _newly_correct_section(ctx, doc.get("newly_correct", {}))
    drift_rules["sources"].update(newly.pop("sources"))
    result = Thresholds(
        **_gate_section(ctx, _section(ctx, doc, "gate", _GATE_KEYS)),
        **_auc_section(ctx, _section(ctx, doc, "auc", _AUC_KEYS)),
        **_onnx_section(ctx, _section(ctx, doc, "onnx", _ONNX_KEYS)),
        **drift_rules,
        **newly,
        **_sanity_section(ctx, _section(ctx, doc, "sanity", _SANITY_KEYS)),
        **_faithfulness_section(ctx, _section(ctx, doc, "faithfulness", _FAITHFULNESS_KEYS)),
        **_counterfactual_section(ctx, _section(ctx, doc, "counterfactual", _COUNTERFACTUAL_KEYS)),
        path=path,
    )
    _check_applicable(ctx, result)
    return result


def load_thresholds(path: Path) -> Thresholds:
    """Reads and validates a thresholds file.

    Raises:
        ConfigError: missing file or any error of :func:`parse_thresholds`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: thresholds file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read thresholds file ({exc})") from exc
    return parse_thresholds(text, str(path))
