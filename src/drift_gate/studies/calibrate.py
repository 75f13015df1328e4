"""``drift-gate calibrate``: thresholds from the noise of the metrics themselves.

A drift bound is only meaningful against the drift an *ordinary* update shows.
Calibration measures it: each backbone's TL checkpoint (the reference) is
fine-tuned several times with different seeds (or, with ``source="bootstrap"``,
only the existing FT checkpoint is used), every run is gated against the
reference's maps on the audit set exactly as ``drift-gate gate`` would, and for
every backbone x method x metric it records

* the runs' statistic (``[gate] statistic``: mean, median or the CI end);
* the seed-to-seed standard deviation of that statistic (from two runs on);
* the bootstrap standard deviation of the statistic over audit samples
  (half-width of the 95 % CI / 1.96, averaged over runs);
* ``noise = max(seed sd, bootstrap sd)``, so that a handful of seeds cannot
  make the noise look smaller than the audit set's own sampling noise.

Seeds of the fine-tune are not all that varies between two honest runs of the same
code. With ``vary`` the pool also holds, per backbone, a whole retrained pair gated
against *its own* reference's maps: ``tl``, the TL reference trained again with the next
seed and fine-tuned from; ``pretrain`` (synthetic weights only), the synthetic pretraining
run again with its next seed, then TL and FT. The proposed file says which sources each
bound covers (:data:`VARY`).

Bounds are proposed for the study's four metrics (:data:`CALIBRATED`); the
localisation change against ground-truth masks gets a calibrated bound written
as a comment, to switch on by hand (:data:`OPT_IN`).

The proposed bound is ``centre -/+ k x noise`` (``centre``: the mean over runs),
on the side that is worse for the metric (``abs_max = |centre| + k x noise`` for
metrics best at 0), rounded outwards to 0.01. It is written as a
``thresholds.toml`` whose ``[drift]`` tables carry, as comments, the runs'
values, centre, both spreads and the arithmetic of every bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_gate import __version__
from drift_gate._io import atomic_write_text, default_cache_dir
from drift_gate.data.datasets import DataSet
from drift_gate.errors import ConfigError, DataError
from drift_gate.evidence.registry import CORE_METRICS, METRICS, Direction
from drift_gate.evidence.summary import Summary
from drift_gate.gating.baseline import create_baseline
from drift_gate.gating.gate import CandidateResult, run_gate
from drift_gate.gating.rules import _statistic
from drift_gate.gating.thresholds import Thresholds, parse_thresholds
from drift_gate.training.pipeline import finetune_from, train_backbone
from drift_gate.training.profiles import Profile

__all__ = [
    "CALIBRATED",
    "OPT_IN",
    "VARY",
    "Calibration",
    "NoiseRow",
    "calibration_markdown",
    "propose_bound",
    "run_calibration",
    "seed_runs",
    "thresholds_text",
]


#: Metrics that calibration proposes bounds for: the four of the study.
CALIBRATED = CORE_METRICS
#: Metrics whose calibrated bound is written commented out, to switch on by hand:
#: the reference-based localisation change needs finding masks, and counts only
#: samples that have one, so a default rule on it could leave a small audit set
#: inconclusive.
OPT_IN = ("mask_energy_change",)
_Z95 = 1.959963984540054
#: Noise sources besides the fine-tuning seed: a retrained TL reference, a re-run of the
#: synthetic pretraining (each with its next seed, then fine-tuned and gated against its
#: own reference).
VARY = {"tl": "a retrained TL reference", "pretrain": "a re-run of the synthetic pretraining"}
Log = Callable[[str], None]


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
    #: per run: ``seed`` (a fine-tune of the profile's TL), ``tl`` or ``pretrain`` (:data:`VARY`)
    sources: list[str]

    @property
    def spread(self) -> str:
        """What the run-to-run spread is over: ``seed`` (fine-tuning seeds only) or ``run``."""
        return "seed" if set(self.sources) == {"seed"} else "run"

    def comment(self, k: float) -> str:
        """Where the bound came from, for the TOML comment."""
        runs = " ".join(
            f"{v:.3f}" if src == "seed" else f"{v:.3f} ({src})"
            for v, src in zip(self.values, self.sources, strict=True)
        )
        seed = "—" if self.seed_sd is None else f"{self.seed_sd:.3f}"
        sign = "-" if self.kind == "min" else "+"
        centre = f"|{self.centre:.3f}|" if self.kind == "abs_max" else f"{self.centre:.3f}"
        return (
            f"runs {runs}; {self.spread} sd {seed}, bootstrap sd {self.bootstrap_sd:.3f}: "
            f"{centre} {sign} {k:g} x {self.noise:.3f}"
        )


@dataclass
class Calibration:
    """What ``calibrate`` measured and proposes."""

    profile: str
    source: str
    k: float
    statistic: str
    methods: tuple[str, ...]
    n_audit: dict[str, int]
    runs: dict[str, list[dict[str, Any]]]
    rows: list[NoiseRow] = field(default_factory=list)
    #: every metric's noise (not only the calibrated ones), for the report
    all_rows: list[NoiseRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [asdict(r) for r in self.rows]
        out["all_rows"] = [asdict(r) for r in self.all_rows]
        return out


def propose_bound(
    direction: Direction,
    centre: float,
    noise: float,
    k: float,
    limits: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[str, float]:
    """``(kind, bound)`` ``k`` noise widths beyond ``centre`` on the worse side,
    rounded outwards to 0.01, and kept within the metric's ``limits`` (a bound beyond
    them could never be reached, and the thresholds parser refuses it)."""
    lo, hi = limits
    if direction is Direction.HIGHER:
        return "min", max(lo, math.floor((centre - k * noise) * 100 + 1e-9) / 100)
    if direction is Direction.LOWER:
        return "max", min(hi, math.ceil((centre + k * noise) * 100 - 1e-9) / 100)
    return "abs_max", min(max(abs(lo), abs(hi)), math.ceil((abs(centre) + k * noise) * 100 - 1e-9) / 100)


def _bootstrap_sd(s: Summary) -> float:
    if s.ci_low is None or s.ci_high is None:
        return 0.0
    return (s.ci_high - s.ci_low) / (2 * _Z95)


def seed_runs(
    profile: Profile,
    arch: str,
    data: DataSet,
    seeds: list[int],
    out: Path,
    device: torch.device,
    progress: bool,
    log: Log,
) -> list[tuple[int, Path]]:
    """Fine-tuning runs of ``arch`` from its TL checkpoint, one per seed. The
    profile's own ``ft.pt`` is the run with the profile's seed; the others are
    written to ``out/<arch>/ft.seed<k>.pt`` (kept, and reused when up to date)."""
    folder = Path(profile.out) / arch
    runs = []
    for seed in seeds:
        if seed == profile.seed and (folder / "ft.pt").is_file():
            runs.append((seed, folder / "ft.pt"))
            continue
        log(f"[{arch}] fine-tuning run with seed {seed}")
        path = finetune_from(
            folder / "tl.pt", data, profile.phase_for(arch, "ft"), out / arch / f"ft.seed{seed}.pt", seed,
            profile.batch_size, device, progress, log,
        )  # fmt: skip
        runs.append((seed, path))
    return runs


def retrained_runs(
    profile: Profile,
    arch: str,
    data: DataSet,
    vary: tuple[str, ...],
    out: Path,
    thresholds: Thresholds,
    per_class: int,
    device: torch.device,
    batch_size: int,
    progress: bool,
    log: Log,
    cache_dir: Path | None = None,
) -> list[tuple[str, int, Path, Path]]:
    """Per source in ``vary``: ``(source, seed, FT checkpoint, its reference's baselines)``
    of a whole retrained TL + FT pair (kept under ``out/<source>``, reused when up to date)."""
    runs = []
    for source in vary:
        if source == "tl":
            p = replace(profile, seed=profile.seed + 1, out=str(out / "tl"))
            seed = p.seed
        else:
            if profile.weights != "synthetic":
                raise ConfigError(
                    f"calibrate --vary pretrain needs weights = 'synthetic', not {profile.weights!r}"
                )
            seed = profile.pretrain.seed + 1
            p = replace(profile, pretrain=replace(profile.pretrain, seed=seed), out=str(out / "pretrain"))
        log(f"[{arch}] calibration run: {VARY[source]} (seed {seed}), then its fine-tune")
        trained = train_backbone(p, arch, data, device, cache_dir or default_cache_dir(), progress, log=log)
        base = out / "baselines" / source
        create_baseline(
            trained.checkpoints["tl"], data, base / arch, thresholds.methods, per_class, device, batch_size
        )
        runs.append((source, seed, trained.checkpoints["ft"], base))
    return runs


def _noise_rows(
    arch: str,
    method: str,
    results: list[tuple[int, CandidateResult]],
    statistic: str,
    k: float,
    metrics: tuple[str, ...],
    sources: list[str],
) -> list[NoiseRow]:
    rows = []
    for metric in metrics:
        spec = METRICS[metric]
        summaries = [
            Summary(**c.summaries[method][metric]["overall"])
            for _, c in results
            if metric in c.summaries[method]
        ]
        if len(summaries) != len(results) or any(s.n == 0 for s in summaries):
            continue
        kind_hint = {Direction.HIGHER: "min", Direction.LOWER: "max", Direction.ZERO: "abs_max"}[
            spec.direction
        ]
        values = [_statistic(s, statistic, spec.direction, kind_hint) for s in summaries]
        if any(v is None for v in values):
            continue
        vals = [float(v) for v in values if v is not None]
        seed_sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        boot = float(np.mean([_bootstrap_sd(s) for s in summaries]))
        noise = max(seed_sd or 0.0, boot)
        centre = float(np.mean(vals))
        kind, bound = propose_bound(spec.direction, centre, noise, k, spec.range)
        rows.append(
            NoiseRow(
                arch,
                method,
                metric,
                vals,
                [s for s, _ in results],
                centre,
                seed_sd,
                boot,
                noise,
                kind,
                bound,
                [s.n for s in summaries],
                sources,
            )
        )
    return rows


def run_calibration(
    profile: Profile,
    data: DataSet,
    thresholds: Thresholds,
    out: Path,
    seeds: list[int],
    k: float = 3.0,
    per_class: int = 10,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    progress: bool = False,
    log: Log = lambda message: None,
    vary: tuple[str, ...] = (),
    cache_dir: Path | None = None,
) -> Calibration:
    """Measures the noise of every metric and proposes bounds (see the module).

    Args:
        seeds: fine-tuning seeds; one seed (the profile's) means bootstrap only.
        vary: further noise sources (:data:`VARY`), one retrained run each.
        cache_dir: synthetic-pretraining cache of the retrained runs (default: the user's).
        k: noise widths between the centre and the bound.
        per_class: audit images per class (as for ``drift-gate baseline``).
    """
    device = torch.device(device)
    unknown = [v for v in vary if v not in VARY]
    if unknown:
        raise ConfigError(f"unknown noise source(s) {', '.join(unknown)}; known: {', '.join(VARY)}")
    source = "seeds" if len(seeds) + len(vary) > 1 else "bootstrap"
    plain = Thresholds(
        methods=thresholds.methods, samples=thresholds.samples, min_samples=1, statistic=thresholds.statistic
    )
    cal = Calibration(profile.name, source, k, thresholds.statistic, thresholds.methods, {}, {})
    for arch in profile.backbones:
        tl = Path(profile.out) / arch / "tl.pt"
        create_baseline(tl, data, out / "baselines" / arch, thresholds.methods, per_class, device, batch_size)
        runs = seed_runs(profile, arch, data, seeds, out / "runs", device, progress, log)
        pool = [("seed", seed, path, out / "baselines") for seed, path in runs]
        pool += retrained_runs(
            profile,
            arch,
            data,
            vary,
            out / "runs" / arch,
            thresholds,
            per_class,
            device,
            batch_size,
            progress,
            log,
        )
        results = []
        for what, seed, path, base in pool:
            c, _ = run_gate(path, base, plain, data.root, device, batch_size, use_onnx=False)
            results.append((seed, c))
            log(f"[{arch}] {what} {seed}: AUC {c.auc:.4f}, {c.n_selected}/{c.n_audit} true positives")
        cal.n_audit[arch] = results[0][1].n_audit
        cal.runs[arch] = [
            {"source": w, "seed": s, "checkpoint": str(p), "auc": c.auc, "n_selected": c.n_selected}
            for (w, s, p, _), (_, c) in zip(pool, results, strict=True)
        ]
        sources = [w for w, *_ in pool]
        for method in thresholds.methods:
            every = _noise_rows(arch, method, results, thresholds.statistic, k, tuple(METRICS), sources)
            if not every:
                raise DataError(
                    f"{arch}/{method}: a calibration run has no usable audit sample "
                    f"({', '.join(str(c.n_selected) for _, c in results)} selected); use more audit "
                    'images (--per-class) or [gate] samples = "all"'
                )
            cal.all_rows += every
            cal.rows += [r for r in every if r.metric in CALIBRATED + OPT_IN]
    _write(cal, thresholds, out)
    return cal


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def thresholds_text(cal: Calibration, thresholds: Thresholds) -> str:
    """A complete ``thresholds.toml``: ``[gate]``, ``[auc]`` and ``[onnx]`` as in
    ``thresholds``, and the calibrated ``[drift]`` tables with their provenance."""
    seeds = sorted({s for r in cal.rows for s, src in zip(r.seeds, r.sources, strict=True) if src == "seed"})
    how = (
        f"{len(seeds)} fine-tuning runs per backbone (seeds {', '.join(map(str, seeds))}) from its TL "
        "checkpoint"
        if cal.source == "seeds"
        else "the profile's FT checkpoint alone (bootstrap over audit samples)"
    )
    extra = sorted({src for r in cal.rows for src in r.sources if src != "seed"}, key=list(VARY).index)
    if extra:
        how += "; and " + "; ".join(f"{VARY[x]} (marked ({x})) and its fine-tune" for x in extra)
    n_audit = sorted(set(cal.n_audit.values()))
    lines = [
        f"# Proposed by `drift-gate calibrate --profile {cal.profile}` (drift-gate {__version__}, "
        f"{date.today().isoformat()}).",
        f"# Noise sources: {how}, each gated against its own TL reference's maps on the audit set",
        f"# ({'/'.join(map(str, n_audit))} test images; samples {thresholds.samples!r}; "
        f"statistic {cal.statistic!r}).",
        "# Per metric: centre = mean of the runs' statistic; "
        f"noise = max({'run-to-run' if extra else 'seed-to-seed'} sd,",
        "# bootstrap sd of the statistic over audit samples); bound = centre -/+ k x noise",
        f"# on the worse side (|centre| + k x noise for metrics best at 0), k = {cal.k:g},",
        "# rounded outwards to 0.01. An update that moves the evidence like an ordinary",
        "# run of these sources passes; one that moves it k noise widths further fails.",
        "",
        "[gate]",
        f"methods = [{', '.join(json.dumps(m) for m in thresholds.methods)}]",
        f"samples = {json.dumps(thresholds.samples)}",
        f"{'min_samples = ' + json.dumps(thresholds.as_dict()['gate']['min_samples']):<26}"
        "# fewer usable samples: inconclusive, never a pass",
        f"statistic = {json.dumps(thresholds.statistic)}",
    ]
    auc = [f"min = {thresholds.auc_min:g}"] if thresholds.auc_min is not None else []
    if thresholds.auc_max_drop is not None:
        auc.append(f"max_drop = {thresholds.auc_max_drop:g}")
    if auc:
        lines += ["", f"[auc]                     # not calibrated: kept from {thresholds.path}", *auc]
    lines += ["", "[onnx]", f"max_rel_diff = {thresholds.onnx_max_rel_diff:g}"]
    # Backbones that were not calibrated fall back to the loosest bound seen.
    loosest: dict[str, tuple[str, float]] = {}
    for r in cal.rows:
        if r.metric in OPT_IN:
            continue
        have = loosest.get(r.metric)
        looser = have is None or (r.bound < have[1] if r.kind == "min" else r.bound > have[1])
        if looser:
            loosest[r.metric] = (r.kind, r.bound)
    lines += ["", "[drift]                   # backbones not calibrated here: the loosest bound below"]
    lines += [f"{m}.{kind} = {_fmt(b)}" for m, (kind, b) in loosest.items()]
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
                    lines.append(f"# {left:<{width - 2}}# opt-in (needs masks): {r.comment(cal.k)}")
                else:
                    lines.append(f"{left:<{width}}# {r.comment(cal.k)}")
    text = "\n".join(lines) + "\n"
    parse_thresholds(text, "proposed thresholds")  # what calibrate writes must load
    return text


def calibration_markdown(cal: Calibration) -> str:
    """Every metric's noise per backbone x method (the table behind the bounds)."""
    spread = "seed" if all(r.spread == "seed" for r in cal.all_rows) else "run"
    out = [
        f"## drift-gate calibrate: profile {cal.profile} ({cal.source}, k = {cal.k:g}, "
        f"statistic {cal.statistic})",
        "",
        f"| backbone | method | metric | runs | centre | {spread} sd | bootstrap sd | proposed |",
        "|---|---|---|---|---|---|---|---|",
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
            f"{r.centre:.4f} | {seed} | {r.bootstrap_sd:.4f} | {proposed} |"
        )
    for arch, runs in cal.runs.items():
        aucs = ", ".join(
            f"{r.get('source', 'seed')} {r['seed']}: {r['auc']:.4f} ({r['n_selected']} TP)" for r in runs
        )
        out.append(f"\n{arch} AUC on the audit set: {aucs}")
    return "\n".join(out) + "\n"


def _write(cal: Calibration, thresholds: Thresholds, out: Path) -> None:
    atomic_write_text(out / "thresholds.proposed.toml", thresholds_text(cal, thresholds))
    atomic_write_text(out / "calibration.json", json.dumps(cal.to_dict(), indent=2) + "\n")
    atomic_write_text(out / "calibration.md", calibration_markdown(cal))
