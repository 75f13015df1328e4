"""The studies' public functions (re-exported as ``drift_gate.study`` and friends): the
paper's protocol, drift across epochs, calibration and validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from drift_gate._io import default_cache_dir
from drift_gate.errors import ConfigError
from drift_gate.inputs import Log, PathLike, missing_checkpoint, profile_data, profile_from, quiet, rules_from

if TYPE_CHECKING:
    from drift_gate.gating.thresholds import Thresholds
    from drift_gate.studies.calibrate_report import Calibration
    from drift_gate.studies.study import StudyResult
    from drift_gate.studies.track import TrackResult
    from drift_gate.studies.validate_report import ValidationResult
    from drift_gate.training.profiles import Profile

__all__ = ["calibrate", "study", "track", "validate"]


def _trained(profile: str | Profile, profiles: PathLike, phases: tuple[str, ...]) -> Profile:
    prof = profile_from(profile, profiles)
    for arch in prof.backbones:
        for phase in phases:
            path = Path(prof.out) / arch / f"{phase}.pt"
            if not path.is_file():
                raise missing_checkpoint(path, prof)
    return prof


def study(
    *,
    profile: str | Profile = "demo",
    profiles: PathLike = "profiles.toml",
    methods: Sequence[str] = ("layercam", "gradcam++", "ablationcam"),
    per_class: int = 1000,
    out: PathLike = "reports/study",
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = False,
    log: Log = quiet,
) -> StudyResult:
    """The study's protocol for a profile's TL and FT checkpoints: drift per backbone x
    method with bootstrap CIs, stability rankings; writes ``study.{md,json,png,html}``."""
    from drift_gate.data.datasets import load_dataset
    from drift_gate.evidence.cam import METHODS
    from drift_gate.models.inference import resolve_device
    from drift_gate.studies.study import run_study

    chosen = tuple(methods)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise ConfigError(f"unknown method(s) {', '.join(unknown) or '(none)'}; known: {', '.join(METHODS)}")
    prof = _trained(profile, profiles, ("tl", "ft"))
    folders = {arch: Path(prof.out) / arch for arch in prof.backbones}
    dataset = load_dataset(profile_data(prof, progress=progress, log=log))
    return run_study(
        folders,
        dataset,
        chosen,
        Path(out),
        per_class=per_class,
        device=resolve_device(device),
        batch_size=batch_size,
        progress=progress,
    )


def track(
    *,
    checkpoints: PathLike,
    data: PathLike,
    thresholds: PathLike | Thresholds = "thresholds.toml",
    baselines: PathLike | None = None,
    per_class: int = 10,
    out: PathLike = "reports/track",
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = False,
) -> TrackResult:
    """Drift of every fine-tuning epoch (``train(keep_epochs=True)``) against TL and
    against the epoch before; writes ``track.{md,json,png}``."""
    from drift_gate.data.datasets import load_dataset
    from drift_gate.models.checkpoint import load_checkpoint
    from drift_gate.models.inference import resolve_device
    from drift_gate.studies.track import run_track

    folder = Path(checkpoints)
    _, meta = load_checkpoint(folder / "tl.pt")
    return run_track(
        folder,
        load_dataset(Path(data), meta.classes),
        rules_from(thresholds),
        Path(out),
        per_class=per_class,
        device=resolve_device(device),
        batch_size=batch_size,
        baselines=None if baselines is None else Path(baselines),
        progress=progress,
    )


def calibrate(
    *,
    profile: str | Profile = "demo",
    profiles: PathLike = "profiles.toml",
    thresholds: PathLike | Thresholds = "thresholds.toml",
    runs: int = 3,
    vary: Sequence[str] = (),
    k: float | None = None,
    per_class: int = 10,
    out: PathLike = "reports/calibrate",
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = False,
    log: Log = quiet,
    add_runs: Sequence[PathLike] = (),
    stored_only: bool = False,
) -> Calibration:
    """Each metric's noise over ``runs`` seed-to-seed fine-tunes (and the bootstrap), and
    the bounds it implies: writes ``thresholds.proposed.toml`` and ``calibration.{md,json}``.
    ``vary`` adds noise sources: ``tl`` (a retrained TL reference), ``pretrain`` (a re-run
    of the synthetic pretraining; ``tl:N``, ``pretrain:N``: ``N`` draws), and emulated
    machines (``aten:default``, ``cpu:sse41``, ``threads:1``, ``gpu``; combined with ``+``),
    each a fine-tune of the TL in a process of its own, side by side as the cores allow.
    Bounds are tolerance bounds for the number of runs (``k=None``), or ``k`` noise widths
    from the centre. ``profile`` may name several profiles (``"demo,ci"``): their
    backbones' bounds go into one proposal. The runs are also written as numbers to
    ``runs.json``; ``add_runs`` pools earlier ``runs.json`` files (another session's or
    machine's) with this call's, where the code, rules, training settings and audit set match;
    ``stored_only`` proposes from those files alone (no training, gating, checkpoints or data)."""
    from drift_gate.data.datasets import load_dataset
    from drift_gate.models.inference import resolve_device
    from drift_gate.studies.calibrate import merged, propose_from_runs, run_calibration
    from drift_gate.studies.calibrate_report import write_calibration

    rules = rules_from(thresholds)
    if stored_only:
        label = profile if isinstance(profile, str) else profile.name
        files = tuple(Path(f) for f in add_runs)
        stored = propose_from_runs(label, rules, files, k=k, per_class=per_class)
        write_calibration(stored, rules, Path(out))
        return stored
    names = [p.strip() for p in profile.split(",")] if isinstance(profile, str) else [profile]
    cals = []
    for name in names:  # several profiles (their backbones differ): one proposal for all
        prof = _trained(name, profiles, ("tl",))
        dataset = load_dataset(profile_data(prof, progress=progress, log=log))
        seeds = [prof.seed + i for i in range(runs)]
        cals.append(
            run_calibration(
                prof,
                dataset,
                rules,
                Path(out),
                seeds=seeds,
                k=k,
                per_class=per_class,
                device=resolve_device(device),
                batch_size=batch_size,
                progress=progress,
                log=log,
                vary=tuple(vary),
                write=False,
                add_runs=tuple(Path(f) for f in add_runs),
            )
        )
    cal = cals[0] if len(cals) == 1 else merged(cals)
    write_calibration(cal, rules, Path(out))
    return cal


def validate(
    *,
    profile: str | Profile = "demo",
    profiles: PathLike = "profiles.toml",
    thresholds: PathLike | Thresholds = "thresholds.toml",
    controls: Sequence[str] | None = None,
    seed: int | None = None,
    shortcut: float = 0.95,
    occult: float = 0.5,
    per_class: int = 10,
    shortcut_per_class: int = 60,
    out: PathLike = "reports/validate",
    device: str = "auto",
    batch_size: int = 16,
    cache_dir: PathLike | None = None,
    progress: bool = False,
    log: Log = quiet,
) -> ValidationResult:
    """Runs the gate on controls with known verdicts (the reference against itself, a
    channel-permuted twin, another seed, a planted shortcut); ``result.ok`` says
    whether every control got its expected verdict."""
    from drift_gate.data.datasets import load_dataset
    from drift_gate.models.inference import resolve_device
    from drift_gate.studies.validate import CONTROLS, run_validation

    chosen = tuple(CONTROLS if controls is None else controls)
    unknown = [c for c in chosen if c not in CONTROLS]
    if unknown or not chosen:
        raise ConfigError(
            f"unknown control(s) {', '.join(unknown) or '(none)'}; known: {', '.join(CONTROLS)}"
        )
    rules = rules_from(thresholds)
    prof = _trained(profile, profiles, ("tl",))
    dataset = load_dataset(profile_data(prof, progress=progress, log=log))
    return run_validation(
        prof,
        dataset,
        rules,
        Path(out),
        seed=prof.seed + 10 if seed is None else seed,
        shortcut=shortcut,
        occult=occult,
        per_class=per_class,
        device=resolve_device(device),
        batch_size=batch_size,
        progress=progress,
        log=log,
        controls=chosen,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        shortcut_per_class=shortcut_per_class,
    )
