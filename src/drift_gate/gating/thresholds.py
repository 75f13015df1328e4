"""``thresholds.toml`` -> validated, frozen rules. Errors name the key and its line.

Shape::

    [gate]
    methods = ["layercam", "gradcam++"]
    samples = "true-positive"      # or "all"
    min_samples = 30               # fewer usable samples: inconclusive, never a pass (a fail
                                   # only if 10 or more break a bound with their whole 95 % CI);
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
    min_samples = 3                # the selected and newly-correct samples must stay below the bound;
    region = "map"                 # or "band": the whole band of every image, whatever the maps
                                   # show (one rule per backbone, 2 forward passes per image); or
                                   # "corners": each corner square on its own, the costliest judged
                                   # (one rule per backbone, 5 forward passes per image)
    paired = false                 # true (map-free regions): each drop less the reference's on the
                                   # same image and donors, stored in the baseline when it is made

    [newly_correct]                # samples the candidate newly gets right (the reference got
    min_samples = 5                # them wrong): where a new shortcut would carry the prediction.
    displacement.max = 0.15        # Absolute bounds on that group (every backbone x method);
                                   # with fewer samples its rules are skipped, not failed

Size: this docstring is the file format's reference; the bound tables are parsed in
:mod:`~drift_gate.gating.bound_tables`, the opt-in tables in
:mod:`~drift_gate.gating.opt_in_tables`, the kinds in :mod:`~drift_gate.gating.kinds`.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drift_gate.errors import ConfigError
from drift_gate.evidence.methods import METHODS
from drift_gate.gating._toml import Ctx, as_number, section
from drift_gate.gating.bound_tables import (
    BOUND_KINDS,
    NEWLY_CORRECT_MIN_SAMPLES,
    check_contradictions,
    drift_section,
    newly_correct_section,
)
from drift_gate.gating.opt_in_tables import (
    COUNTERFACTUAL_BORDER,
    COUNTERFACTUAL_KEYS,
    COUNTERFACTUAL_MIN_SAMPLES,
    FAITHFULNESS_KEYS,
    SANITY_KEYS,
    counterfactual_section,
    faithfulness_section,
    sanity_section,
)
from drift_gate.models.backbones import BACKBONES

__all__ = [
    "BOUND_KINDS",
    "COUNTERFACTUAL_BORDER",
    "COUNTERFACTUAL_MIN_SAMPLES",
    "NEWLY_CORRECT_MIN_SAMPLES",
    "ONNX_MAX_REL_DIFF",
    "Bound",
    "Thresholds",
    "load_thresholds",
    "parse_thresholds",
]


_GATE_KEYS = {"methods", "samples", "min_samples", "statistic"}
_AUC_KEYS = {"min", "max_drop", "min_support", "labels"}
#: Default fewest positives and negatives of a class for its AUC to be judged.
AUC_MIN_SUPPORT = 5
_ONNX_KEYS = {"max_rel_diff"}
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
    #: fewest positives and negatives a class's AUC must rest on; fewer: inconclusive
    auc_min_support: int = AUC_MIN_SUPPORT
    #: class -> {"min": ..., "max_drop": ...}: one finding's (class's) own AUC rules
    auc_labels: dict[str, dict[str, float]] = field(default_factory=dict)
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
    #: ``map`` (the band's part a map points at) or ``band`` (the whole band, map-free)
    counterfactual_region: str = "map"
    #: ``same-class``: each swap's drop less the drop when the region comes from another
    #: image of the same class (``none``: the drop itself)
    counterfactual_control: str = "none"
    #: ``swap``: donors per image (and controls), their drops averaged
    counterfactual_draws: int = 1
    counterfactual_max_drop: float = 0.1
    #: ``max_corner_drop``: a second, map-free rule beside the region's: the band's four
    #: corner squares swapped one at a time, the costliest judged (None: not checked)
    counterfactual_max_corner_drop: float | None = None
    counterfactual_min_samples: int = COUNTERFACTUAL_MIN_SAMPLES
    #: ``paired``: each drop less the reference's on the same sample and donors (stored in
    #: the baseline, :func:`~drift_gate.gating.paired.reference_drops`); map-free regions only
    counterfactual_paired: bool = False

    def counterfactual_settings(self) -> dict[str, Any]:
        """What the reference's stored drops depend on (``paired``): a baseline whose
        drops were measured with other settings cannot be paired with this file's."""
        return {
            "border": self.counterfactual_border,
            "baseline": self.counterfactual_baseline,
            "region": self.counterfactual_region,
            "control": self.counterfactual_control,
            "draws": self.counterfactual_draws,
            "corners": self.counterfactual_max_corner_drop is not None,
        }

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

    def _counterfactual(self) -> dict[str, Any]:
        """``[counterfactual]`` as :meth:`as_dict` echoes it."""
        corner = self.counterfactual_max_corner_drop
        return {
            "border": self.counterfactual_border,
            "baseline": self.counterfactual_baseline,
            "region": self.counterfactual_region,
            **({"control": self.counterfactual_control} if self.counterfactual_control != "none" else {}),
            **({"draws": self.counterfactual_draws} if self.counterfactual_draws != 1 else {}),
            "max_score_drop": self.counterfactual_max_drop,
            "min_samples": self.counterfactual_min_samples,
            **({"max_corner_drop": corner} if corner is not None else {}),
            **({"paired": True} if self.counterfactual_paired else {}),
        }

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
                **{
                    k: v for k, v in (("min", self.auc_min), ("max_drop", self.auc_max_drop)) if v is not None
                },
                "min_support": self.auc_min_support,
                **({"labels": {c: dict(b) for c, b in self.auc_labels.items()}} if self.auc_labels else {}),
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
            **({"counterfactual": self._counterfactual()} if self.counterfactual_border is not None else {}),
            **(
                {"newly_correct": {"min_samples": self.newly_correct_min_samples, **self.newly_correct}}
                if self.newly_correct
                else {}
            ),
        }


_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _min_samples(ctx: Ctx, value: Any) -> tuple[int, float | None]:
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


def _gate_section(ctx: Ctx, gate: dict[str, Any]) -> dict[str, Any]:
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


def _auc_section(ctx: Ctx, auc: dict[str, Any]) -> dict[str, Any]:
    auc_min = as_number(ctx, ["auc"], "min", auc["min"]) if "min" in auc else None
    auc_drop = as_number(ctx, ["auc"], "max_drop", auc["max_drop"]) if "max_drop" in auc else None
    if auc_min is not None and not 0 <= auc_min <= 1:
        raise ctx.fail(["auc"], "min", f"an AUC bound must lie in [0, 1], got {auc_min}")
    if auc_drop is not None and auc_drop < 0:
        raise ctx.fail(["auc"], "max_drop", f"max_drop must be >= 0, got {auc_drop}")
    support = auc.get("min_support", AUC_MIN_SUPPORT)
    if isinstance(support, bool) or not isinstance(support, int) or support < 1:
        raise ctx.fail(["auc"], "min_support", f"expected an integer >= 1, got {support!r}")
    labels = auc.get("labels", {})
    if not isinstance(labels, dict):
        raise ctx.fail(
            ["auc"], "labels", f"expected tables [auc.labels.<class>], got {type(labels).__name__}"
        )
    per_label: dict[str, dict[str, float]] = {}
    for cls, table in labels.items():
        where = ["auc", "labels", cls]
        if not isinstance(table, dict):
            raise ctx.fail(
                ["auc", "labels"], cls, f"expected a table of min / max_drop, got {type(table).__name__}"
            )
        for key, value in table.items():
            if key not in ("min", "max_drop"):
                raise ctx.fail(where, key, "unknown key; known: max_drop, min")
            number = as_number(ctx, where, key, value)
            if not 0 <= number <= 1:
                raise ctx.fail(where, key, f"an AUC bound must lie in [0, 1], got {number}")
            per_label.setdefault(cls, {})[key] = number
    return {"auc_min": auc_min, "auc_max_drop": auc_drop, "auc_min_support": support, "auc_labels": per_label}


def _onnx_section(ctx: Ctx, onnx: dict[str, Any]) -> dict[str, Any]:
    rel = as_number(ctx, ["onnx"], "max_rel_diff", onnx.get("max_rel_diff", ONNX_MAX_REL_DIFF))
    if rel < 0:
        raise ctx.fail(["onnx"], "max_rel_diff", f"max_rel_diff must be >= 0, got {rel}")
    return {"onnx_max_rel_diff": rel}


def _check_applicable(ctx: Ctx, result: Thresholds) -> None:
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
            check_contradictions(ctx, scope, merged)
    if (
        not any(result.tables.values())
        and result.auc_min is None
        and result.auc_max_drop is None
        and not result.auc_labels
    ):
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
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply to read") from None
    ctx = Ctx(text, path)
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
    drift_rules = drift_section(ctx, drift)
    newly = newly_correct_section(ctx, doc.get("newly_correct", {}))
    drift_rules["sources"].update(newly.pop("sources"))
    result = Thresholds(
        **_gate_section(ctx, section(ctx, doc, "gate", _GATE_KEYS)),
        **_auc_section(ctx, section(ctx, doc, "auc", _AUC_KEYS)),
        **_onnx_section(ctx, section(ctx, doc, "onnx", _ONNX_KEYS)),
        **drift_rules,
        **newly,
        **sanity_section(ctx, section(ctx, doc, "sanity", SANITY_KEYS)),
        **faithfulness_section(ctx, section(ctx, doc, "faithfulness", FAITHFULNESS_KEYS)),
        **counterfactual_section(ctx, section(ctx, doc, "counterfactual", COUNTERFACTUAL_KEYS)),
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
