"""What a command is given, resolved: a profile by name, its data (the embedded phantoms
made on first use), the rules file, the model spec. Shared by the public functions of
:mod:`drift_gate.api` and :mod:`drift_gate.studies.api`, which sit above it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from drift_gate.errors import DataError

if TYPE_CHECKING:
    from drift_gate.gating.thresholds import Thresholds
    from drift_gate.models.spec import ModelSpec
    from drift_gate.training.profiles import Profile

__all__ = [
    "Log",
    "PathLike",
    "missing_checkpoint",
    "profile_data",
    "profile_from",
    "quiet",
    "rules_from",
    "spec_from",
]


PathLike = str | os.PathLike[str]
Log = Callable[[str], None]


def quiet(message: str) -> None:
    """The default ``log``: say nothing."""


def rules_from(thresholds: PathLike | Thresholds) -> Thresholds:
    from drift_gate.gating.thresholds import Thresholds, load_thresholds

    return thresholds if isinstance(thresholds, Thresholds) else load_thresholds(Path(thresholds))


def spec_from(model: PathLike | ModelSpec | None) -> ModelSpec | None:
    """A model spec from its TOML file (``--model``), or as given."""
    from drift_gate.models.spec import ModelSpec, load_spec

    if model is None or isinstance(model, ModelSpec):
        return model
    return load_spec(Path(model))


def missing_checkpoint(path: Path, profile: Profile, what: str = "checkpoint") -> DataError:
    return DataError(
        f"{path}: no {what}; run `drift-gate train --profile {profile.name}` (or `nox -s train`) first"
    )


def profile_data(profile: Profile, *, progress: bool = False, log: Log = quiet) -> Path:
    """A profile's data source; the embedded phantoms are (re)generated when missing,
    made with other settings or by other generator code."""
    from drift_gate._io import atomic_write_text, code_sha256
    from drift_gate.data.phantom_set import generate_dataset

    if profile.data != "phantoms":
        return Path(profile.data)
    root = Path(profile.data_dir)
    stamp = root / ".phantoms.json"
    cfg = profile.phantoms
    code = code_sha256(("data/phantoms.py", "data/phantom_set.py"))  # what made them, too
    want = json.dumps(
        {"n_per_class": cfg.n_per_class, "size": cfg.size, "seed": cfg.seed, "code": code}, sort_keys=True
    )
    if not ((root / "manifest.csv").is_file() and stamp.is_file() and stamp.read_text() == want):
        log(f"generating the phantom data set in {root} ...")
        generate_dataset(root, cfg.n_per_class, seed=cfg.seed, size=cfg.size, progress=progress)
        atomic_write_text(stamp, want)
    return root


def profile_from(profile: str | Profile, profiles: PathLike) -> Profile:
    from drift_gate.training.profiles import Profile, load_profile

    return profile if isinstance(profile, Profile) else load_profile(Path(profiles), profile)
