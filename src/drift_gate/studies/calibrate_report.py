"""What ``drift-gate calibrate`` measured, and what it writes: the noise rows, the proposed
``thresholds.toml`` (``[drift]`` and ``[newly_correct]`` tables with each bound's arithmetic),
``calibration.md`` and ``calibration.json``. The measuring is :mod:`drift_gate.studies.calibrate`.

Size: the rows, the proposed file with each bound's arithmetic and the Markdown report are
one record written three ways; they share the row types and their formatting helpers.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from drift_gate._io import atomic_write_text
from drift_gate._version import __version__
from drift_gate.evidence.registry import CORE_METRICS
from drift_gate.gating.kinds import KINDS
from drift_gate.gating.thresholds import Thresholds, parse_thresholds

__all__ = [
    "CALIBRATED",
    "OPT_IN",
    "VARY",
    "AucDropRow",
    "Calibration",
    "NoiseRow",
    "calibration_markdown",
    "thresholds_text",
    "write_calibration",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

#: Metrics that calibration proposes bounds for: the four of the study.
CALIBRATED = CORE_METRICS
#: Metrics whose calibrated bound is written commented out, to switch on by hand:
#: the reference-based localisation change needs finding masks, and counts only
#: samples that have one, so a default rule on it could leave a small audit set
#: inconclusive.
OPT_IN = ("mask_energy_change",)
#: Noise sources besides the fine-tuning seed: a retrained TL reference, a re-run of the
#: synthetic pretraining (each with its next seed, then fine-tuned and gated against its
#: own reference).
VARY = {"tl": "a retrained TL reference", "pretrain": "a re-run of the synthetic pretraining"}


def _runs(values: list[float], sources: list[str], fmt: str) -> str:
    """The runs' values in ``fmt``, each marked with its source unless a fine-tuning seed."""
    return " ".join(
        fmt.format(v) if src == "seed" else f"{fmt.format(v)} ({src})"
        for v, src in zip(values, sources, strict=True)
    )


def _draw(sd: float | None, sources: list[str], draws: int = 0) -> str:
    """``, draw sd X (N draws)`` where the runs hold several pretraining draws, else ``""``
    (``draws``: their number; by default the profile's fine-tune and each ``pretrain`` run)."""
    if sd is None:
        return ""
    return f", draw sd {sd:.3f} ({draws or 1 + sources.count('pretrain')} draws)"


def _spread(sources: list[str]) -> str:
    """What a run-to-run spread is over: ``seed`` (fine-tuning seeds only) or ``run``."""
    return "seed" if set(sources) == {"seed"} else "run"


@dataclass(frozen=True)
class NoiseRow:
    """The noise of one metric for one backbone x method, and the bound it gives."""

    arch: str
    method: str
    metric: str
    values: list[float]
    seeds: list[int]
    centre: float
    seed_sd: float | None
    bootstrap_sd: float
    noise: float
    kind: str
    bound: float
    n: list[int]
    #: per run: ``seed`` (a fine-tune of the profile's TL), ``tl`` or ``pretrain`` (:data:`VARY`),
    #: or an emulated machine (``aten:default``, ``threads:1``: the TL fine-tuned there)
    sources: list[str]
    #: noise widths between centre and bound: the tolerance factor for ``len(values)`` runs
    #: (noise = the runs' sd) or for ``min(n)`` audit samples (noise = the bootstrap sd)
    k: float = 3.0
    #: the source whose runs lie farthest from the seeds' mean, and how far in noise widths
    moved_most: str = ""
    #: the sd between pretraining draws (one run each, :func:`~drift_gate.studies.calibrate.
    #: draw_runs`), where the runs hold two draws or more
    draw_sd: float | None = None
    #: how many draws ``draw_sd`` is over (pooled calibrations' included)
    draws: int = 0

    @property
    def spread(self) -> str:
        """What the run-to-run spread is over: ``seed`` (fine-tuning seeds only) or ``run``."""
        return _spread(self.sources)

    def comment(self, k: float | None = None) -> str:
        """Where the bound came from, for the TOML comment."""
        k = self.k if k is None else k
        runs = _runs(self.values, self.sources, "{:.3f}")
        seed = "—" if self.seed_sd is None else f"{self.seed_sd:.3f}"
        kind = KINDS[self.kind]
        sign = "-" if kind.lower else "+"
        centre = f"|{self.centre:.3f}|" if kind.magnitude else f"{self.centre:.3f}"
        return (
            f"runs {runs}; {self.spread} sd {seed}{_draw(self.draw_sd, self.sources, self.draws)}, "
            "bootstrap sd "
            f"{self.bootstrap_sd:.3f}: {centre} {sign} {k:.2f} x {self.noise:.3f}"
        )


@dataclass(frozen=True)
class AucDropRow:
    """How far one backbone's audit macro AUC fell below its own reference's across the
    calibration runs (``reference - candidate``; a rise is negative), and the ``[auc]
    max_drop`` bound it gives: ``centre + k x run sd``, rounded up to 0.01, never below 0.
    The same for the runs' score drop with the border band swapped (``margin_rows``)."""

    arch: str
    drops: list[float]
    sources: list[str]
    centre: float
    sd: float
    k: float
    bound: float
    #: the drops' sd between pretraining draws, where there are two or more
    draw_sd: float | None = None
    #: the sd the bound was scaled from (``sd`` or ``draw_sd``, whichever gives the wider margin)
    noise: float | None = None
    #: how many draws ``draw_sd`` is over
    draws: int = 0

    def comment(self) -> str:
        runs = _runs(self.drops, self.sources, "{:+.3f}")
        noise = self.sd if self.noise is None else self.noise
        return (
            f"{self.arch}: drops {runs}; {_spread(self.sources)} sd {self.sd:.3f}"
            f"{_draw(self.draw_sd, self.sources, self.draws)}: "
            f"{self.centre:+.3f} + {self.k:.2f} x {noise:.3f}"
        )


@dataclass
class Calibration:
    """What ``calibrate`` measured and proposes."""

    profile: str
    source: str
    #: a fixed number of noise widths, or ``None``: each row's tolerance factor
    k: float | None
    statistic: str
    methods: tuple[str, ...]
    n_audit: dict[str, int]
    runs: dict[str, list[dict[str, Any]]]
    coverage: float = 0.99
    confidence: float = 0.95
    rows: list[NoiseRow] = field(default_factory=list)
    #: every metric's noise (not only the calibrated ones), for the report
    all_rows: list[NoiseRow] = field(default_factory=list)
    #: the calibrated metrics' noise on the samples each run newly gets right (reference
    #: wrong, candidate right), where every run has ``[newly_correct] min_samples`` of them
    newly_rows: list[NoiseRow] = field(default_factory=list)
    #: per backbone, the runs' audit AUC drops below their reference's (two runs or more)
    auc_rows: list[AucDropRow] = field(default_factory=list)
    #: per backbone, the runs' mean score drops with the whole border band swapped
    #: (``[counterfactual] region = "band"`` only)
    margin_rows: list[AucDropRow] = field(default_factory=list)
    #: per backbone, the runs' mean score drops with the costliest corner swapped
    #: (``[counterfactual] max_corner_drop`` only)
    corner_rows: list[AucDropRow] = field(default_factory=list)
    #: this call's runs as numbers (:class:`~drift_gate.studies.calibrate_store.StoredRun`),
    #: written to ``runs.json`` under ``key`` (:func:`~drift_gate.studies.calibrate_store.runs_key`)
    stored: list[Any] = field(default_factory=list)
    key: dict[str, Any] = field(default_factory=dict)
    #: per backbone and ``--add-runs`` file: ``arch``, ``file``, ``runs``, ``pooled``, ``duplicates``
    pooled: list[dict[str, Any]] = field(default_factory=list)
    #: what a reader of the proposal must know about its runs (e.g. measured by other code)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("stored", "key")}
        out["rows"] = [asdict(r) for r in self.rows]
        out["all_rows"] = [asdict(r) for r in self.all_rows]
        out["newly_rows"] = [asdict(r) for r in self.newly_rows]
        out["auc_rows"] = [asdict(r) for r in self.auc_rows]
        out["margin_rows"] = [asdict(r) for r in self.margin_rows]
        out["corner_rows"] = [asdict(r) for r in self.corner_rows]
        return out

    @property
    def auc_max_drop(self) -> float | None:
        """The proposed ``[auc] max_drop``: the loosest backbone's bound (one key serves all)."""
        return max((r.bound for r in self.auc_rows), default=None)

    @property
    def margin_max_drop(self) -> float | None:
        """The proposed ``[counterfactual] max_score_drop`` (map-free band only): the
        loosest backbone's bound."""
        return max((r.bound for r in self.margin_rows), default=None)

    @property
    def corner_max_drop(self) -> float | None:
        """The proposed ``[counterfactual] max_corner_drop``: the loosest backbone's bound."""
        return max((r.bound for r in self.corner_rows), default=None)


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def thresholds_text(cal: Calibration, thresholds: Thresholds) -> str:
    """A complete ``thresholds.toml``: ``[gate]``, ``[auc]`` and ``[onnx]`` as in
    ``thresholds``, and the calibrated ``[drift]`` tables with their provenance."""
    lines = _provenance(cal, thresholds) + _kept_tables(thresholds, cal) + _drift_tables(cal)
    lines += _newly_correct_lines(cal, thresholds)
    lines += _kept_checks(thresholds, cal)
    text = "\n".join(lines) + "\n"
    parse_thresholds(text, "proposed thresholds")  # what calibrate writes must load
    return text


def _provenance(cal: Calibration, thresholds: Thresholds) -> list[str]:
    """The proposal's opening comment: which runs the noise came from and how a bound
    follows from it."""
    seeds = sorted({s for r in cal.rows for s, src in zip(r.seeds, r.sources, strict=True) if src == "seed"})
    how = (
        f"{len(seeds)} fine-tuning runs per backbone (seeds {', '.join(map(str, seeds))}) from its TL "
        "checkpoint"
        if cal.source == "seeds"
        else "the profile's FT checkpoint alone (bootstrap over audit samples)"
    )
    extra = sorted(
        {src for r in cal.rows for src in r.sources if src != "seed"},
        key=lambda x: (x not in VARY, list(VARY).index(x) if x in VARY else 0, x),
    )
    if extra:
        how += "; and " + "; ".join(
            f"{VARY[x]} (marked ({x})) and its fine-tune"
            if x in VARY
            else f"the TL fine-tuned on an emulated machine {x} (marked ({x}))"
            for x in extra
        )
    n_audit = sorted(set(cal.n_audit.values()))
    ks = sorted({round(r.k, 2) for r in cal.rows})
    if cal.k is not None:
        rule = f"k = {cal.k:g} fixed"
    else:
        rule = (
            f"k = the one-sided normal tolerance factor for the number of runs (run sd) or of audit\n"
            f"# samples (bootstrap sd) the noise was estimated from ({', '.join(map(str, ks))}): "
            f"with {cal.confidence:.0%} confidence,"
        )
    return [
        f"# Proposed by `drift-gate calibrate --profile {cal.profile}` (drift-gate {__version__}, "
        f"{date.today().isoformat()}).",
        *_where(cal),
        f"# Noise sources: {how}, each gated against its own TL reference's maps on the audit set",
        f"# ({'/'.join(map(str, n_audit))} test images; samples {thresholds.samples!r}; "
        f"statistic {cal.statistic!r}).",
        "# Per metric: centre = mean of the runs' statistic; "
        f"noise = the {'run-to-run' if extra else 'seed-to-seed'} sd or the",
        "# bootstrap sd of the statistic over audit samples"
        + (
            ", or the draw sd (between pretraining draws, one run each:\n# "
            + ("each pooled calibration's fine-tune" if cal.pooled else "the profile's fine-tune")
            + " and each re-run pretraining; the factor for their number),"
            if any(r.draw_sd is not None for r in cal.rows)
            else ","
        )
        + " whichever gives the wider margin;",
        "# bound = centre -/+ k x noise",
        "# on the worse side (|centre| + k x noise for metrics best at 0), rounded outwards",
        f"# to 0.01; {rule}",
        *(
            [
                f"# {cal.coverage:.0%} of the next honest runs' statistics lie on the good side of each",
                f"# bound (an honest run fails a given rule with probability <= {1 - cal.coverage:.0%}).",
            ]
            if cal.k is None
            else ["# An update that moves the evidence like an ordinary run passes; k widths further fails."]
        ),
    ]


def _where(cal: Calibration) -> list[str]:
    """The machines the runs were trained on, and the ``--add-runs`` files pooled, as comments."""
    counts = Counter(r.get("machine", "unknown") for runs in cal.runs.values() for r in runs)
    lines = [f"# Runs trained on: {'; '.join(f'{m} ({n} runs)' for m, n in counts.most_common())}."]
    files: dict[str, list[int]] = {}
    for p in cal.pooled:
        files.setdefault(p["file"], [0, 0])
        files[p["file"]][0] += p["pooled"]
        files[p["file"]][1] += p["duplicates"]
    lines += [
        f"# Pooled from {name}: {new} runs"
        + (f" ({dup} already in the pool, counted once)" if dup else "")
        + "."
        for name, (new, dup) in files.items()
    ]
    lines += [f"# Note: {note}" for note in cal.notes]
    return [_CONTROL.sub("?", line) for line in lines]  # a path or record cannot end the comment


def _kept_tables(thresholds: Thresholds, cal: Calibration) -> list[str]:
    """``[gate]``, ``[auc]`` (and its per-class tables) and ``[onnx]``, as ``thresholds`` has
    them, but for ``[auc] max_drop`` where the runs calibrated it."""
    lines = [
        "",
        "[gate]",
        f"methods = [{', '.join(json.dumps(m) for m in thresholds.methods)}]",
        f"samples = {json.dumps(thresholds.samples)}",
        f"{'min_samples = ' + json.dumps(thresholds.as_dict()['gate']['min_samples']):<26}"
        "# fewer usable samples: inconclusive, never a pass",
        f"statistic = {json.dumps(thresholds.statistic)}",
    ]
    auc = [f"min = {thresholds.auc_min:g}"] if thresholds.auc_min is not None else []
    drop = cal.auc_max_drop
    if drop is not None:
        auc.append(f"max_drop = {_fmt(drop):<16}# calibrated: the loosest backbone's bound below")
        auc += [f"#   {r.comment()}" for r in cal.auc_rows]
    elif thresholds.auc_max_drop is not None:
        auc.append(f"max_drop = {thresholds.auc_max_drop:g}")
    auc.append(f"min_support = {thresholds.auc_min_support}")
    kept = "min and min_support kept" if drop is not None else "not calibrated: kept"
    lines += ["", f"[auc]                     # {kept} from {thresholds.path}", *auc]
    for cls, bounds in thresholds.auc_labels.items():
        lines += ["", f"[auc.labels.{json.dumps(cls)}]", *(f"{k} = {v:g}" for k, v in bounds.items())]
    return [*lines, "", "[onnx]", f"max_rel_diff = {thresholds.onnx_max_rel_diff:g}"]


def _drift_tables(cal: Calibration) -> list[str]:
    """``[drift]`` (the loosest bound seen, for backbones not calibrated) and a table per
    calibrated backbone x method, each bound with its arithmetic as a comment."""
    lines = ["", "[drift]                   # backbones not calibrated here: the loosest bound below"]
    lines += [f"{m}.{kind} = {_fmt(b)}" for m, (kind, b) in _loosest(cal.rows).items()]
    for arch in dict.fromkeys(r.arch for r in cal.rows):
        for method in cal.methods:
            rows = [r for r in cal.rows if r.arch == arch and r.method == method]
            if not rows:
                continue
            lines += ["", f'[drift.{arch}."{method}"]' if "+" in method else f"[drift.{arch}.{method}]"]
            width = max(len(f"{r.metric}.{r.kind} = {_fmt(r.bound)}") for r in rows) + 2
            for r in rows:
                left = f"{r.metric}.{r.kind} = {_fmt(r.bound)}"
                if r.metric in OPT_IN:
                    lines.append(f"# {left:<{width - 2}}# opt-in (needs masks): {r.comment()}")
                else:
                    lines.append(f"{left:<{width}}# {r.comment()}")
    return lines


#: Tables of checks that calibration does not propose, carried over unchanged.
KEPT = ("sanity", "faithfulness", "counterfactual")


def _kept_checks(thresholds: Thresholds, cal: Calibration) -> list[str]:
    """``[sanity]``, ``[faithfulness]`` and ``[counterfactual]`` as ``thresholds`` sets them,
    so that adopting the proposal does not switch a check off; but for the map-free
    counterfactual's ``max_score_drop`` and ``max_corner_drop`` where the runs calibrated
    them."""
    doc = thresholds.as_dict()
    lines: list[str] = []
    calibrated = {
        "max_score_drop": (cal.margin_max_drop, cal.margin_rows),
        "max_corner_drop": (cal.corner_max_drop, cal.corner_rows),
    }
    calibrated = {k: v for k, v in calibrated.items() if v[0] is not None}
    for table in KEPT:
        if table not in doc:
            continue
        values = {k: v for k, v in doc[table].items() if v is not None}
        if table == "counterfactual" and calibrated:
            names = " and ".join(calibrated)
            lines += ["", f"[{table}]{'':<{24 - len(table)}}# {names} calibrated, the rest kept"]
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if k not in calibrated]
            for key, (bound, rows) in calibrated.items():
                assert bound is not None
                lines.append(f"{key} = {_fmt(bound):<10}# the loosest backbone's bound below")
                if thresholds.counterfactual_paired:
                    lines.append(
                        "#   paired: each run's drops less its own reference's on the same images and donors"
                    )
                lines += [f"#   {r.comment()}" for r in rows]
            continue
        lines += ["", f"[{table}]{'':<{24 - len(table)}}# not calibrated: kept from {thresholds.path}"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return lines


def _loosest(rows: list[NoiseRow]) -> dict[str, tuple[str, float]]:
    """Per calibrated metric, the loosest of the rows' bounds (``(kind, bound)``)."""
    loosest: dict[str, tuple[str, float]] = {}
    for r in rows:
        if r.metric in OPT_IN:
            continue
        have = loosest.get(r.metric)
        if have is None or (r.bound < have[1] if KINDS[r.kind].lower else r.bound > have[1]):
            loosest[r.metric] = (r.kind, r.bound)
    return loosest


def _newly_correct_lines(cal: Calibration, thresholds: Thresholds) -> list[str]:
    """``[newly_correct]``: one table for every backbone x method (the gate's format), so
    the loosest of their bounds, each row's arithmetic as a comment; none without rows, and
    none where a calibrated backbone has no rows: the table would apply to it with bounds
    that other backbones' runs set (an honest InceptionV3 fine-tune broke such a bound)."""
    if not cal.newly_rows:
        return []
    n = thresholds.newly_correct_min_samples
    missing = [
        a for a in dict.fromkeys(r.arch for r in cal.rows) if a not in {r.arch for r in cal.newly_rows}
    ]
    if missing:
        return [
            "",
            f"# [newly_correct] is not proposed: the runs of {', '.join(missing)} did not all newly get",
            f"# {n} or more audit samples right, and its one table would apply to every backbone.",
        ]
    lines = [
        "",
        "[newly_correct]           # the samples a run newly gets right (reference wrong), where every",
        f"min_samples = {n:<12}# run had {n} or more; one table for every backbone x method: the",
        "                          # loosest of the bounds below",
    ]
    lines += [f"{m}.{kind} = {_fmt(b)}" for m, (kind, b) in _loosest(cal.newly_rows).items()]
    for r in cal.newly_rows:
        lines.append(
            f"# {r.arch} {r.method} {r.metric}.{r.kind} {_fmt(r.bound)} (n {'/'.join(map(str, r.n))}): "
            f"{r.comment()}"
        )
    return lines


def calibration_markdown(cal: Calibration) -> str:
    """Every metric's noise per backbone x method (the table behind the bounds)."""
    spread = "seed" if all(r.spread == "seed" for r in cal.all_rows) else "run"
    width = (
        f"k = {cal.k:g}"
        if cal.k is not None
        else f"tolerance k for {cal.coverage:.0%} / {cal.confidence:.0%}"
    )
    out = [
        f"## drift-gate calibrate: profile {cal.profile} ({cal.source}, {width}, statistic {cal.statistic})",
        "",
        f"| backbone | method | metric | runs | centre | {spread} sd | draw sd | bootstrap sd | k "
        "| moved most | proposed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cal.all_rows:
        proposed = (
            f"{r.kind} {r.bound:.2f}"
            if r.metric in CALIBRATED
            else f"{r.kind} {r.bound:.2f} (opt-in)"
            if r.metric in OPT_IN
            else "(not calibrated)"
        )
        seed = "—" if r.seed_sd is None else f"{r.seed_sd:.4f}"
        out.append(
            f"| {r.arch} | {r.method} | {r.metric} | {' '.join(f'{v:.3f}' for v in r.values)} | "
            f"{r.centre:.4f} | {seed} | {'—' if r.draw_sd is None else f'{r.draw_sd:.4f}'} | "
            f"{r.bootstrap_sd:.4f} | {r.k:.2f} | {r.moved_most or '—'} "
            f"| {proposed} |"
        )
    if cal.newly_rows:
        out += [
            "",
            "Newly correct samples (reference wrong, candidate right; `[newly_correct]`):",
            "",
            f"| backbone | method | metric | runs | samples | centre | {spread} sd | bootstrap sd | bound |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in cal.newly_rows:
            seed = "—" if r.seed_sd is None else f"{r.seed_sd:.4f}"
            out.append(
                f"| {r.arch} | {r.method} | {r.metric} | {' '.join(f'{v:.3f}' for v in r.values)} | "
                f"{' '.join(map(str, r.n))} | {r.centre:.4f} | {seed} | {r.bootstrap_sd:.4f} | "
                f"{r.kind} {r.bound:.2f} |"
            )
    for arch, runs in cal.runs.items():
        aucs = ", ".join(
            f"{r.get('source', 'seed')} {r['seed']}: {r['auc']:.4f} ({r['n_selected']} TP)" for r in runs
        )
        out.append(f"\n{arch} AUC on the audit set: {aucs}")
    out += ["", *(line.removeprefix("# ") for line in _where(cal))]
    for drop in cal.auc_rows:
        out.append(f"\nAUC drop below the reference, {drop.comment()} -> max_drop {_fmt(drop.bound)}")
    swapped = [("the border band", "max_score_drop", r) for r in cal.margin_rows]
    swapped += [("the costliest corner", "max_corner_drop", r) for r in cal.corner_rows]
    out += [
        f"\nScore drop with {what} swapped, {r.comment()} -> {key} {_fmt(r.bound)}"
        for what, key, r in swapped
    ]
    return "\n".join(out) + "\n"


def write_calibration(cal: Calibration, thresholds: Thresholds, out: Path) -> None:
    """``thresholds.proposed.toml``, ``calibration.json``, ``calibration.md`` and, where the
    calibration measured runs of its own, ``runs.json`` (for ``calibrate --add-runs``) in ``out``."""
    from drift_gate.studies.calibrate_store import write_runs

    atomic_write_text(out / "thresholds.proposed.toml", thresholds_text(cal, thresholds))
    atomic_write_text(out / "calibration.json", json.dumps(cal.to_dict(), indent=2) + "\n")
    atomic_write_text(out / "calibration.md", calibration_markdown(cal))
    if cal.stored and cal.key:
        write_runs(out / "runs.json", cal.key, cal.stored)
