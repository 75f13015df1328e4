"""The honest runs ``drift-gate calibrate`` gates: fine-tunes of a backbone's TL with
several seeds, the same fine-tune on emulated machines (child processes), and whole
retrained TL + FT pairs (a retrained TL reference, a re-run synthetic pretraining), each
kept and reused when up to date. What is measured on them is
:mod:`drift_gate.studies.calibrate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from drift_gate._io import default_cache_dir
from drift_gate.data.datasets import DataSet
from drift_gate.errors import ConfigError
from drift_gate.gating.baseline import create_baseline
from drift_gate.gating.thresholds import Thresholds
from drift_gate.studies.calibrate_report import VARY
from drift_gate.studies.machines import Machine, MachineJob, run_jobs
from drift_gate.training.pipeline import finetune_from, train_backbone
from drift_gate.training.profiles import Profile

__all__ = ["MAX_DRAWS", "is_retrained", "machine_runs", "retrained_draws", "retrained_runs", "seed_runs"]

#: the most draws ``tl:N`` or ``pretrain:N`` may ask for (each is a whole TL + FT training)
MAX_DRAWS = 20

Log = Callable[[str], None]


def seed_runs(
    profile: Profile,
    arch: str,
    data: DataSet,
    seeds: list[int],
    *,
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
            folder / "tl.pt",
            data,
            profile.phase_for(arch, "ft"),
            out=out / arch / f"ft.seed{seed}.pt",
            seed=seed,
            batch_size=profile.batch_size,
            device=device,
            progress=progress,
            log=log,
        )
        runs.append((seed, path))
    return runs


def machine_runs(
    profile: Profile, arch: str, data: DataSet, machines: list[Machine], out: Path, log: Log
) -> list[Path]:
    """One fine-tune of ``arch``'s TL checkpoint with the profile's seed per emulated
    machine (``out/<arch>/ft.machine-<name>.pt``), side by side as the cores allow."""
    cfg = profile.phase_for(arch, "ft")
    tl = Path(profile.out) / arch / "tl.pt"
    jobs = [
        MachineJob(
            m,
            str(tl),
            str(data.root),
            str(out / arch / f"ft.machine-{m.name.replace(':', '-').replace('+', '_')}.pt"),
            profile.seed,
            profile.batch_size,
            cfg.epochs,
            cfg.lr,
            cfg.weight_decay,
        )
        for m in machines
    ]
    return run_jobs(jobs, log) if jobs else []


def retrained_draws(vary: tuple[str, ...]) -> list[tuple[str, int]]:
    """``(source, draw)`` per retrained run that ``vary`` asks for: ``tl`` and ``pretrain``
    are one draw each, ``tl:N`` and ``pretrain:N`` are draws 1..N, ``pretrain:A-B`` draws A..B
    (at most :data:`MAX_DRAWS` per entry; draw ``k`` trains with the source's seed + ``k``, so
    a later calibration that pools this one's runs asks for draws it has not made yet).
    Other entries (emulated machines) are not this function's; a draw named twice counts once.

    Raises:
        ConfigError: ``tl:0``, ``pretrain:x``, ``pretrain:4-2`` and the like.
    """
    draws: dict[str, set[int]] = {}
    for entry in vary:
        name, sep, count = entry.partition(":")
        if name not in VARY:
            continue
        first, dash, last = count.partition("-")
        if not dash:
            first, last = "1", count
        ok = not sep or (
            first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last) < int(first) + MAX_DRAWS
        )
        if not ok:
            raise ConfigError(
                f"--vary {entry}: the number of {name} draws must be a whole number from 1 to {MAX_DRAWS}, "
                f"or a range A-B of at most {MAX_DRAWS} draws from 1 on"
            )
        draws.setdefault(name, set()).update(range(int(first), int(last) + 1) if sep else {1})
    return [(name, k) for name in VARY if name in draws for k in sorted(draws[name])]


def is_retrained(entry: str) -> bool:
    """Whether ``entry`` of ``--vary`` names retrained draws (``tl``, ``pretrain:3``)
    rather than an emulated machine."""
    return entry.partition(":")[0] in VARY


def _folder(source: str, draw: int) -> str:
    """A draw's run and baseline folder: draw 1 keeps the source's bare name."""
    return source if draw == 1 else f"{source}-{draw}"


def retrained_runs(
    profile: Profile,
    arch: str,
    data: DataSet,
    *,
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
    """Per draw of :func:`retrained_draws`: ``(source, seed, FT checkpoint, its reference's
    baselines)`` of a whole retrained TL + FT pair, draw ``k`` with the source's seed + ``k``
    (kept under ``out/<source>`` for the first draw, ``out/<source>-<k>`` for the others,
    reused when up to date)."""
    runs = []
    for source, draw in retrained_draws(vary):
        folder = _folder(source, draw)
        # a retrained pair is trained whole: a profile's pinned TL reference is not its own
        if source == "tl":
            p = replace(profile, seed=profile.seed + draw, out=str(out / folder), reference=None)
            seed = p.seed
        else:
            if profile.weights != "synthetic":
                raise ConfigError(
                    f"calibrate --vary pretrain needs weights = 'synthetic', not {profile.weights!r}"
                )
            seed = profile.pretrain.seed + draw
            p = replace(
                profile,
                pretrain=replace(profile.pretrain, seed=seed),
                out=str(out / folder),
                reference=None,
            )
        log(f"[{arch}] calibration run: {VARY[source]} (seed {seed}), then its fine-tune")
        trained = train_backbone(
            p, arch, data, device, cache_dir=cache_dir or default_cache_dir(), progress=progress, log=log
        )
        base = out / "baselines" / folder
        create_baseline(
            trained.checkpoints["tl"],
            data,
            base / arch,
            thresholds.methods,
            per_class=per_class,
            device=device,
            batch_size=batch_size,
            paired=thresholds,
        )
        runs.append((source, seed, trained.checkpoints["ft"], base))
    return runs
