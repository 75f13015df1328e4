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
* ``noise``: whichever of the two gives the wider margin, each with its own tolerance
  factor (:func:`_margin`), so that a handful of seeds cannot make the noise look
  smaller than the audit set's own sampling noise;
* with re-run pretrainings among the runs, a third candidate: the sd between the
  pretraining draws, one run each (:func:`draw_runs`), with the tolerance factor for the
  number of draws. The other runs share one pretraining, so their spread misses the
  draw-to-draw part, and a fresh clone on another CPU is a new draw.

Seeds of the fine-tune are not all that varies between two honest runs of the same
code. With ``vary`` the pool also holds, per backbone, a whole retrained pair gated
against *its own* reference's maps: ``tl``, the TL reference trained again with the next
seed and fine-tuned from; ``pretrain`` (synthetic weights only), the synthetic pretraining
run again with its next seed, then TL and FT. The proposed file says which sources each
bound covers (:data:`VARY`).

Bounds are proposed for the study's four metrics (:data:`CALIBRATED`); the
localisation change against ground-truth masks gets a calibrated bound written
as a comment, to switch on by hand (:data:`OPT_IN`). The same four are calibrated on
the samples each run newly gets right, where every run has ``[newly_correct]
min_samples`` of them, for the proposed ``[newly_correct]`` table. What is written, and
how, is :mod:`drift_gate.studies.calibrate_report`.

The proposed bound is ``centre -/+ k x noise`` (``centre``: the mean over runs),
on the side that is worse for the metric (``abs_max = |centre| + k x noise`` for
metrics best at 0), rounded outwards to 0.01. It is written as a
``thresholds.toml`` whose ``[drift]`` tables carry, as comments, the runs'
values, centre, both spreads and the arithmetic of every bound.

Size: the tolerance factor, the noise rows and the AUC drop belong to one procedure; the
runs it measures (seeds, emulated machines, a retrained TL and pretraining) are made by
:mod:`drift_gate.studies.calibrate_runs`, kept as numbers and pooled across calls by
:mod:`drift_gate.studies.calibrate_store`, its report and proposed file written by
:mod:`drift_gate.studies.calibrate_report`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_gate._machine import machine_line
from drift_gate.data.datasets import DataSet
from drift_gate.errors import ConfigError, DataError
from drift_gate.evidence.registry import METRICS, Direction
from drift_gate.evidence.summary import Summary
from drift_gate.gating.baseline import create_baseline
from drift_gate.gating.gate import CandidateResult, run_gate
from drift_gate.gating.kinds import for_direction
from drift_gate.gating.rules import _statistic
from drift_gate.gating.stored import read_baseline
from drift_gate.gating.thresholds import Thresholds
from drift_gate.studies.calibrate_report import (
    CALIBRATED,
    OPT_IN,
    AucDropRow,
    Calibration,
    NoiseRow,
    write_calibration,
)
from drift_gate.studies.calibrate_runs import (
    is_retrained,
    machine_runs,
    retrained_draws,
    retrained_runs,
    seed_runs,
)
from drift_gate.studies.calibrate_store import (
    StoredRun,
    differences,
    pool_runs,
    read_runs,
    runs_key,
    stored_run,
)
from drift_gate.studies.machines import Machine, parse_machine
from drift_gate.training.profiles import Profile

__all__ = [
    "auc_drop_row",
    "draw_runs",
    "drop_row",
    "margin_drop_row",
    "propose_bound",
    "propose_from_runs",
    "run_calibration",
    "tolerance_factor",
]


Log = Callable[[str], None]
_Z95 = 1.959963984540054


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
    kind = for_direction(direction)
    return kind.name, kind.propose(centre, noise, k, limits)


#: What a proposed bound is meant to hold for: ``COVERAGE`` of the next honest runs'
#: statistics lie on the good side of it, with ``CONFIDENCE`` (so an honest run fails one
#: rule with probability at most ``1 - COVERAGE``, given normally distributed run statistics).
COVERAGE, CONFIDENCE = 0.99, 0.95


def tolerance_factor(n: int, coverage: float = COVERAGE, confidence: float = CONFIDENCE) -> float:
    """The one-sided normal tolerance factor ``k`` for ``n`` runs: with probability
    ``confidence`` over the draw of the runs, ``centre - k x sd`` lies below the ``coverage``
    quantile of the next run's value (NIST/SEMATECH e-Handbook 7.2.6.3; from the
    noncentral t distribution). It grows as ``n`` shrinks: 5.74 for 5 runs, 3.98 for 10,
    against 2.33 for a known distribution.

    Raises:
        ConfigError: fewer than two runs (no spread to scale).
    """
    from scipy.stats import nct, norm

    if n < 2:
        raise ConfigError(f"a tolerance bound needs two or more runs, got {n}")
    root = math.sqrt(n)
    return float(nct.ppf(confidence, df=n - 1, nc=norm.ppf(coverage) * root) / root)


def _bootstrap_sd(s: Summary) -> float:
    if s.ci_low is None or s.ci_high is None:
        return 0.0
    return (s.ci_high - s.ci_low) / (2 * _Z95)


def _moved_most(vals: list[float], sources: list[str], noise: float) -> str:
    """The source whose runs lie farthest from the fine-tuning seeds' mean, in noise widths."""
    seeds = [v for v, s in zip(vals, sources, strict=True) if s == "seed"]
    others = {s for s in sources if s != "seed"}
    if not seeds or not others or noise <= 0:
        return ""
    base = float(np.mean(seeds))
    shift = {
        s: float(np.mean([v for v, t in zip(vals, sources, strict=True) if t == s])) - base for s in others
    }
    name = max(shift, key=lambda s: abs(shift[s]))
    return f"{name} {shift[name] / noise:+.1f}"


def draw_runs(sources: list[str]) -> list[int]:
    """The runs that stand for one synthetic pretraining draw each: the profile's own fine-tune
    (the first ``seed`` run: the seeds, the emulated machines and a retrained TL all share its
    pretraining) and every ``pretrain`` run; empty where there are fewer than two draws. Runs
    on one pretraining are not independent of each other, and a fresh clone on another CPU is
    a new draw (its pretraining takes other kernels), so the draws are the units whose
    spread a new machine's run has to be judged by."""
    first = [i for i, s in enumerate(sources) if s == "seed"][:1]
    draws = first + [i for i, s in enumerate(sources) if s == "pretrain"]
    return draws if len(draws) > 1 and first else []


def _draw_spread(values: list[float], draws: list[int]) -> tuple[float, int] | None:
    """``(sd, draws)`` of ``values`` over the runs ``draws`` (one per pretraining draw,
    :func:`draw_runs`), or ``None`` with fewer than two."""
    if len(draws) < 2:
        return None
    return float(np.std([values[i] for i in draws], ddof=1)), len(draws)


def _draws(runs: list[StoredRun]) -> list[int]:
    """The runs that stand for a pretraining draw each: each calibration's own (the profile's
    fine-tune and its ``pretrain`` runs, :func:`draw_runs`), pooled ones included."""
    return [i for i, r in enumerate(runs) if r.draw]


def _margin(
    seed_sd: float | None,
    runs: int,
    boot: float,
    samples: int,
    k: float | None,
    draw: tuple[float, int] | None = None,
) -> tuple[float, float]:
    """``(noise, k)`` of the widest margin: the runs' sd with the tolerance factor for the
    number of runs, the bootstrap sd with the factor for the number of audit samples it was
    estimated from (a sd from 40 samples is known far better than one from 4 runs, so it
    takes 2.9 widths, not 7.0), and, with ``draw`` = ``(sd, draws)``, the spread between
    pretraining draws with the factor for their number. ``k`` given: that many widths of
    the largest sd."""
    if k is not None:
        return max(seed_sd or 0.0, boot, draw[0] if draw else 0.0), k
    options = [(boot, tolerance_factor(max(samples, 2)))]
    if seed_sd is not None:
        options.append((seed_sd, tolerance_factor(runs)))
    if draw is not None:
        options.append((draw[0], tolerance_factor(draw[1])))
    return max(reversed(options), key=lambda o: o[0] * o[1])


def _noise_rows(
    arch: str,
    method: str,
    results: list[StoredRun],
    *,
    statistic: str,
    k: float | None,
    metrics: tuple[str, ...],
    group: str = "overall",
    fewest: int = 1,
) -> list[NoiseRow]:
    """One row per metric that every run has ``fewest`` or more samples of ``group`` for."""
    rows = []
    sources = [r.source for r in results]
    for metric in metrics:
        spec = METRICS[metric]
        summaries = [
            Summary(**r.summaries[method][metric][group])
            for r in results
            if group in r.summaries.get(method, {}).get(metric, {})
        ]
        if len(summaries) != len(results) or any(s.n < max(fewest, 1) for s in summaries):
            continue
        kind_hint = for_direction(spec.direction).name
        values = [_statistic(s, statistic, kind_hint) for s in summaries]
        if any(v is None for v in values):
            continue
        vals = [float(v) for v in values if v is not None]
        seed_sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        boot = float(np.mean([_bootstrap_sd(s) for s in summaries]))
        draw = _draw_spread(vals, _draws(results))
        noise, width = _margin(seed_sd, len(vals), boot, min(s.n for s in summaries), k, draw)
        centre = float(np.mean(vals))
        kind, bound = propose_bound(spec.direction, centre, noise, width, spec.range)
        rows.append(
            NoiseRow(
                arch,
                method,
                metric,
                vals,
                [r.seed for r in results],
                centre,
                seed_sd,
                boot,
                noise,
                kind,
                bound,
                [s.n for s in summaries],
                sources,
                width,
                _moved_most(vals, sources, noise),
                None if draw is None else draw[0],
                0 if draw is None else draw[1],
            )
        )
    return rows


def run_calibration(
    profile: Profile,
    data: DataSet,
    thresholds: Thresholds,
    out: Path,
    *,
    seeds: list[int],
    k: float | None = None,
    per_class: int = 10,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    progress: bool = False,
    log: Log = lambda message: None,
    vary: tuple[str, ...] = (),
    cache_dir: Path | None = None,
    write: bool = True,
    add_runs: tuple[Path, ...] = (),
) -> Calibration:
    """Measures the noise of every metric and proposes bounds (see the module); with
    ``write``, writes the proposal, the report and ``runs.json`` into ``out``.

    Args:
        seeds: fine-tuning seeds; one seed (the profile's) means bootstrap only.
        vary: further noise sources: :data:`VARY` (one retrained run each; ``tl:N`` and
            ``pretrain:N`` retrain ``N``, with the next ``N`` seeds; ``pretrain:A-B`` draws
            ``A`` to ``B``), and emulated machines
            (:func:`~drift_gate.studies.machines.parse_machine`, e.g. ``aten:default``,
            ``threads:1``): one fine-tune of the TL each, in a process of its own, as many at
            once as the cores allow.
        cache_dir: synthetic-pretraining cache of the retrained runs (default: the user's).
        k: noise widths between the centre and the bound (default: the tolerance factor
            for the number of runs, :func:`tolerance_factor`).
        per_class: audit images per class (as for ``drift-gate baseline``).
        add_runs: ``runs.json`` files of earlier calibrations (:mod:`~drift_gate.studies.
            calibrate_store`), pooled with this call's runs; checked before any training.
    """
    device = torch.device(device)
    machines = [parse_machine(v) for v in vary if not is_retrained(v)]
    vary = tuple(v for v in vary if is_retrained(v))
    draws = retrained_draws(vary)  # a malformed draw count is refused before any training
    stored = [(Path(f), *read_runs(Path(f))) for f in add_runs]
    trainings = {arch: profile.training_key(arch, "ft", data.manifest_sha256) for arch in profile.backbones}
    _check_stored(stored, trainings, thresholds, per_class)
    source = "seeds" if len(seeds) + len(draws) + len(machines) > 1 or stored else "bootstrap"
    if source == "bootstrap" and k is None:
        k = 3.0  # one run has no spread to scale: the bootstrap alone, 3 widths
    plain = _plain_rules(thresholds)
    cal = Calibration(
        profile.name, source, k, thresholds.statistic, thresholds.methods, {}, {}, COVERAGE, CONFIDENCE
    )
    backbones: dict[str, dict[str, str]] = {}
    for arch in profile.backbones:
        tl = Path(profile.out) / arch / "tl.pt"
        create_baseline(
            tl,
            data,
            out / "baselines" / arch,
            thresholds.methods,
            per_class=per_class,
            device=device,
            batch_size=batch_size,
            paired=thresholds,
        )
        backbones[arch] = {
            "training": trainings[arch],
            "audit": read_baseline(out / "baselines" / arch).audit.sha256,
        }
        key = runs_key(thresholds, per_class, {arch: backbones[arch]})
        pool_runs(key, [], stored)  # the audit set, before this backbone's training
        pool = _pool(
            profile,
            arch,
            data,
            seeds=seeds,
            machines=machines,
            vary=vary,
            thresholds=thresholds,
            out=out,
            per_class=per_class,
            device=device,
            batch_size=batch_size,
            progress=progress,
            log=log,
            cache_dir=cache_dir,
        )
        own = _stored(pool, _gate_pool(arch, pool, plain, data, device, batch_size, log))
        runs, pooled = pool_runs(key, own, stored)
        cal.stored += own
        cal.pooled += [{"arch": arch, **p} for p in pooled]
        _record(cal, arch, runs, thresholds, k)
    cal.key = runs_key(thresholds, per_class, backbones)
    if write:
        write_calibration(cal, thresholds, out)
    return cal


def _check_stored(
    stored: list[tuple[Path, dict[str, Any], list[StoredRun]]],
    trainings: dict[str, str],
    thresholds: Thresholds,
    per_class: int,
) -> None:
    """Refuses, before any training, stored runs of other code, rules or training settings
    (``trainings``: arch -> the profile's FT training key); their audit sets are checked per
    backbone once its baseline is made."""
    for path, other, runs in stored:
        shared = {
            arch: {"training": trainings[arch], "audit": v["audit"]}
            for arch, v in other["backbones"].items()
            if arch in trainings
        }
        pool_runs(runs_key(thresholds, per_class, shared), [], [(path, other, runs)])


def _pool(
    profile: Profile,
    arch: str,
    data: DataSet,
    *,
    seeds: list[int],
    machines: list[Machine],
    vary: tuple[str, ...],
    thresholds: Thresholds,
    out: Path,
    per_class: int,
    device: torch.device,
    batch_size: int,
    progress: bool,
    log: Log,
    cache_dir: Path | None,
) -> list[tuple[str, int, Path, Path]]:
    """``arch``'s honest runs, trained where not up to date: ``(source, seed, FT checkpoint,
    its reference's baselines)``, the fine-tuning seeds first (the profile's own first)."""
    runs = seed_runs(profile, arch, data, seeds, out=out / "runs", device=device, progress=progress, log=log)
    pool = [("seed", seed, path, out / "baselines") for seed, path in runs]
    pool += [
        (m.name, profile.seed, path, out / "baselines")
        for m, path in zip(
            machines, machine_runs(profile, arch, data, machines, out / "runs", log), strict=True
        )
    ]
    return pool + retrained_runs(
        profile,
        arch,
        data,
        vary=vary,
        out=out / "runs" / arch,
        thresholds=thresholds,
        per_class=per_class,
        device=device,
        batch_size=batch_size,
        progress=progress,
        log=log,
        cache_dir=cache_dir,
    )


def _stored(pool: list[tuple[str, int, Path, Path]], results: list[CandidateResult]) -> list[StoredRun]:
    """This call's gated runs as :class:`StoredRun` rows, each pretraining draw marked."""
    draws = set(draw_runs([w for w, *_ in pool]) or [0])
    return [
        stored_run(w, s, i in draws and w in ("seed", "pretrain"), p, c)
        for i, ((w, s, p, _), c) in enumerate(zip(pool, results, strict=True))
    ]


def propose_from_runs(
    name: str,
    thresholds: Thresholds,
    files: tuple[Path, ...],
    *,
    k: float | None = None,
    per_class: int = 10,
    stale_ok: bool = False,
) -> Calibration:
    """The proposal from stored runs alone (``runs.json`` files, :mod:`~drift_gate.studies.
    calibrate_store`): no training, no gating. The files must agree with each other and, unless
    ``stale_ok``, with this code and ``thresholds``' rules (``per_class`` audit images per
    class): a proposal from runs that other code measured would be that code's. ``stale_ok``
    re-does the arithmetic on them all the same (to check what a committed file was proposed
    from); the proposal's header says which code measured them. Nothing new is measured, so
    nothing is written to ``runs.json``.

    Raises:
        ConfigError: no file, or files (or this code and rules) that measured other things.
    """
    if not files:
        raise ConfigError("proposing from stored runs needs at least one runs.json (--add-runs)")
    stored = [(Path(f), *read_runs(Path(f))) for f in files]
    first = stored[0][1]
    current = runs_key(thresholds, per_class, {})
    if not stale_ok:
        pool_runs(current, [], stored)
    backbones: dict[str, dict[str, str]] = {}
    for _, key, _ in stored:
        for arch, value in key["backbones"].items():
            backbones.setdefault(arch, value)
    cal = Calibration(
        name, "seeds", k, thresholds.statistic, thresholds.methods, {}, {}, COVERAGE, CONFIDENCE
    )
    cal.key = {**first, "backbones": backbones}
    stale = differences(current, cal.key)
    if stale:
        cal.notes.append(
            f"the runs were measured by other code or rules than this proposal's ({'; '.join(stale)})"
        )
    for arch in backbones:
        runs, pooled = pool_runs(cal.key, [], stored, arches={arch})
        cal.pooled += [{"arch": arch, **p} for p in pooled]
        if len(runs) > 0:
            _record(cal, arch, runs, thresholds, k)
    return cal


def drop_row(
    arch: str, drops: list[float], sources: list[str], k: float | None, draws: list[int] | None = None
) -> AucDropRow:
    """A bound on one number per run that should not grow (an AUC drop, the counterfactual's
    band drop): ``centre + k x sd`` over the runs (``k``: the tolerance factor for their
    number unless given), or over the pretraining draws where that is wider, rounded up to
    0.01 and kept within [0, 1]. One number per run, so unlike the map metrics there is no
    per-sample bootstrap to weigh against. ``draws``: the runs that are pretraining draws
    (default: :func:`draw_runs` of ``sources``)."""
    centre, sd = float(np.mean(drops)), float(np.std(drops, ddof=1))
    draw = _draw_spread(drops, draw_runs(sources) if draws is None else draws)
    noise, width = _margin(sd, len(drops), 0.0, 2, k, draw)
    _, bound = propose_bound(Direction.LOWER, centre, noise, width, (0.0, 1.0))
    draw_sd = None if draw is None else draw[0]
    return AucDropRow(
        arch, drops, sources, centre, sd, width, bound, draw_sd, noise, 0 if draw is None else draw[1]
    )


def auc_drop_row(
    arch: str,
    results: Sequence[StoredRun | CandidateResult],
    sources: list[str],
    k: float | None,
    draws: list[int] | None = None,
) -> AucDropRow:
    """The runs' audit macro AUC drops below their own references' (a distance between two
    AUCs) and the ``[auc] max_drop`` they imply (:func:`drop_row`)."""
    return drop_row(arch, [c.reference_auc - c.auc for c in results], sources, k, draws)


def _plain_rules(thresholds: Thresholds) -> Thresholds:
    """The rules the runs are gated under: no bounds, ``min_samples`` 1, and the map-free
    counterfactual's rules where ``thresholds`` has them (one number per run, calibrated)."""
    plain = Thresholds(
        methods=thresholds.methods, samples=thresholds.samples, min_samples=1, statistic=thresholds.statistic
    )
    if not _map_free(thresholds):
        return plain
    # every setting of the table (border, region, control, draws, paired, ...), its bounds open
    settings = {
        f.name: getattr(thresholds, f.name)
        for f in fields(Thresholds)
        if f.name.startswith("counterfactual_")
    }
    settings["counterfactual_max_drop"], settings["counterfactual_min_samples"] = 1.0, 1
    if thresholds.counterfactual_max_corner_drop is not None:
        settings["counterfactual_max_corner_drop"] = 1.0
    return replace(plain, **settings)


def _map_free(thresholds: Thresholds) -> bool:
    """Whether ``thresholds`` has a map-free counterfactual rule (one number per run)."""
    return thresholds.counterfactual_border is not None and (
        thresholds.counterfactual_region != "map" or thresholds.counterfactual_max_corner_drop is not None
    )


def margin_drop_row(
    arch: str, results: list[StoredRun], k: float | None, metric: str = "counterfactual_drop"
) -> AucDropRow | None:
    """The runs' mean score drops with the whole border band swapped (``[counterfactual]
    region = "band"``; ``metric="corner_drop"``: with its costliest corner swapped, for
    ``max_corner_drop``) and the bound they imply (:func:`drop_row`); ``None`` where a
    run's rule was not checked."""
    drops = [r.drops.get(metric) for r in results]
    if any(d is None for d in drops):
        return None
    sources = [r.source for r in results]
    return drop_row(arch, [float(d) for d in drops if d is not None], sources, k, _draws(results))


def _record(
    cal: Calibration, arch: str, runs: list[StoredRun], thresholds: Thresholds, k: float | None
) -> None:
    """``arch``'s runs (source, seed, checkpoint, AUCs, machine, the file a pooled one came
    from), noise rows and AUC drop into ``cal``."""
    cal.n_audit[arch] = runs[0].n_audit
    cal.runs[arch] = [
        {
            "source": r.source,
            "seed": r.seed,
            "checkpoint": r.checkpoint,
            "auc": r.auc,
            "reference_auc": r.reference_auc,
            "n_selected": r.n_selected,
            "draw": r.draw,
            "machine": machine_line(r.machine),
            "file": r.origin,
        }
        for r in runs
    ]
    _add_rows(cal, arch, runs, thresholds, k)
    if len(runs) > 1:
        cal.auc_rows.append(auc_drop_row(arch, runs, [r.source for r in runs], k, _draws(runs)))
        if thresholds.counterfactual_border is not None and thresholds.counterfactual_region != "map":
            margin = margin_drop_row(arch, runs, k)
            cal.margin_rows += [margin] if margin is not None else []
        if (
            thresholds.counterfactual_border is not None
            and thresholds.counterfactual_max_corner_drop is not None
        ):
            corner = margin_drop_row(arch, runs, k, "corner_drop")
            cal.corner_rows += [corner] if corner is not None else []


def _gate_pool(
    arch: str,
    pool: list[tuple[str, int, Path, Path]],
    plain: Thresholds,
    data: DataSet,
    device: torch.device,
    batch_size: int,
    log: Log,
) -> list[CandidateResult]:
    """Each run of ``pool`` (source, seed, checkpoint, baselines) gated against its own
    TL reference's maps under ``plain`` rules (no bounds, ``min_samples`` 1)."""
    results = []
    for what, seed, path, base in pool:
        c, _ = run_gate(
            path,
            baselines=base,
            thresholds=plain,
            data_root=data.root,
            device=device,
            batch_size=batch_size,
            use_onnx=False,
        )
        results.append(c)
        log(f"[{arch}] {what} {seed}: AUC {c.auc:.4f}, {c.n_selected}/{c.n_audit} true positives")
    return results


def _add_rows(
    cal: Calibration, arch: str, results: list[StoredRun], thresholds: Thresholds, k: float | None
) -> None:
    """``arch``'s noise rows for every method into ``cal``: over the runs' overall
    summaries, and over their newly-correct groups."""
    for method in thresholds.methods:
        every = _noise_rows(
            arch,
            method,
            results,
            statistic=thresholds.statistic,
            k=k,
            metrics=tuple(METRICS),
        )
        if not every:
            raise DataError(
                f"{arch}/{method}: a calibration run has no usable audit sample "
                f"({', '.join(str(r.n_selected) for r in results)} selected); use more audit "
                'images (--per-class) or [gate] samples = "all"'
            )
        cal.all_rows += every
        cal.rows += [r for r in every if r.metric in CALIBRATED + OPT_IN]
        cal.newly_rows += _noise_rows(
            arch,
            method,
            results,
            statistic=thresholds.statistic,
            k=k,
            metrics=CALIBRATED,
            group="newly_correct",
            fewest=thresholds.newly_correct_min_samples,
        )


def merged(cals: list[Calibration]) -> Calibration:
    """Several profiles' calibrations as one (their backbones differ): one proposal for a
    thresholds file that serves them all."""
    first = cals[0]
    out = Calibration(
        "+".join(c.profile for c in cals),
        first.source,
        first.k,
        first.statistic,
        first.methods,
        {},
        {},
        first.coverage,
        first.confidence,
    )
    for c in cals:
        out.n_audit.update(c.n_audit)
        out.runs.update(c.runs)
        out.stored += c.stored
        out.pooled += c.pooled
        if c.key:
            backbones = {**out.key.get("backbones", {}), **c.key["backbones"]}
            out.key = {**c.key, "backbones": backbones}
        out.rows += c.rows
        out.all_rows += c.all_rows
        out.newly_rows += c.newly_rows
    return out
