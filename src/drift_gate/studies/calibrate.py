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
as a comment, to switch on by hand (:data:`OPT_IN`). The same four are calibrated on
the samples each run newly gets right, where every run has ``[newly_correct]
min_samples`` of them, for the proposed ``[newly_correct]`` table. What is written, and
how, is :mod:`drift_gate.studies.calibrate_report`.

The proposed bound is ``centre -/+ k x noise`` (``centre``: the mean over runs),
on the side that is worse for the metric (``abs_max = |centre| + k x noise`` for
metrics best at 0), rounded outwards to 0.01. It is written as a
``thresholds.toml`` whose ``[drift]`` tables carry, as comments, the runs'
values, centre, both spreads and the arithmetic of every bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from drift_gate._io import default_cache_dir
from drift_gate.data.datasets import DataSet
from drift_gate.errors import ConfigError, DataError
from drift_gate.evidence.registry import METRICS, Direction
from drift_gate.evidence.summary import Summary
from drift_gate.gating.baseline import create_baseline
from drift_gate.gating.gate import CandidateResult, run_gate
from drift_gate.gating.rules import _statistic
from drift_gate.gating.thresholds import Thresholds
from drift_gate.studies.calibrate_report import (
    CALIBRATED,
    OPT_IN,
    VARY,
    Calibration,
    NoiseRow,
    write_calibration,
)
from drift_gate.training.pipeline import finetune_from, train_backbone
from drift_gate.training.profiles import Profile

__all__ = ["propose_bound", "retrained_runs", "run_calibration", "seed_runs"]


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
    group: str = "overall",
    fewest: int = 1,
) -> list[NoiseRow]:
    """One row per metric that every run has ``fewest`` or more samples of ``group`` for."""
    rows = []
    for metric in metrics:
        spec = METRICS[metric]
        summaries = [
            Summary(**c.summaries[method][metric][group])
            for _, c in results
            if group in c.summaries[method].get(metric, {})
        ]
        if len(summaries) != len(results) or any(s.n < max(fewest, 1) for s in summaries):
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
            cal.newly_rows += _noise_rows(
                arch, method, results, thresholds.statistic, k, CALIBRATED, sources,
                "newly_correct", thresholds.newly_correct_min_samples,
            )  # fmt: skip
    write_calibration(cal, thresholds, out)
    return cal
