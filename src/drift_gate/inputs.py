"""What a command is given, resolved: a profile by name, its data (the embedded phantoms
made on first use), the rules file, the model spec, and a profile's part of a gate (its FT
checkpoints, and the baselines they are gated against, made where due). Shared by the public functions of
:mod:`drift_gate.api` and :mod:`drift_gate.studies.api`, which sit above it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drift_gate.errors import ConfigError, DataError

if TYPE_CHECKING:
    from drift_gate.distributed import Dist
    from drift_gate.gating.thresholds import Thresholds
    from drift_gate.models.spec import ModelSpec
    from drift_gate.training.profiles import Profile

__all__ = [
    "Log",
    "PathLike",
    "ProfileGate",
    "missing_checkpoint",
    "profile_data",
    "profile_from",
    "profile_gate",
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


def _made_from(base: Path, reference: Path, rules: Thresholds) -> bool:
    """Whether the baseline in ``base`` is intact, has maps for the ``rules``' methods (and
    the reference drops their ``[counterfactual] paired`` needs) and was made from the file
    ``reference`` (an own-TL baseline is re-made otherwise)."""
    from drift_gate._io import file_sha256
    from drift_gate.errors import DriftGateError
    from drift_gate.gating.paired import paired_mismatch
    from drift_gate.gating.stored import load_baseline

    if not (base / "baseline.json").is_file() or not reference.is_file():
        return False
    try:
        stored = load_baseline(base)
    except DriftGateError:
        return False
    return (
        stored.meta["reference"]["sha256"] == file_sha256(reference)
        and all(m in stored.maps for m in rules.methods)
        and paired_mismatch(stored, rules) is None
    )


@dataclass(frozen=True)
class ProfileGate:
    """A profile's part of a gate: its FT checkpoints (of ``archs``), the baselines root,
    and whether their baselines are made here from the TL checkpoints beside them."""

    prof: Profile
    archs: tuple[str, ...]
    root: Path
    own_tl: bool

    def ft(self, arch: str) -> Path:
        """``arch``'s FT checkpoint (its TL checkpoint, ``tl.pt``, lies beside it)."""
        return Path(self.prof.out) / arch / "ft.pt"

    @property
    def candidates(self) -> list[Path]:
        return [self.ft(arch) for arch in self.archs]

    @property
    def references(self) -> dict[Path, Path]:
        """Each FT checkpoint descends from the TL checkpoint beside it: its baseline must
        have been made from exactly that one."""
        return {ft: ft.parent / "tl.pt" for ft in self.candidates}

    def prepare(
        self,
        source: Path | None,
        rules: Thresholds,
        *,
        create_missing: bool,
        dist: Dist,
        progress: bool,
        log: Log,
        signer: Any,
    ) -> Path:
        """The data root (``source``, else the profile's data, made if needed) after the
        baselines the profile gates against are there: rank 0 makes them, the other ranks
        then find them."""
        from drift_gate.data.datasets import load_dataset
        from drift_gate.distributed import main_first
        from drift_gate.gating.baseline import create_baseline

        def make() -> Path:
            data_root = source or profile_data(self.prof, progress=progress and dist.main, log=log)
            made, data = [], None
            for arch in self.archs:
                if self._due(arch, rules, create_missing, log) and dist.main:
                    if data is None:  # read and verified once for every backbone
                        data = load_dataset(data_root)
                    create_baseline(
                        self.ft(arch).parent / "tl.pt",
                        data,
                        self.root / arch,
                        rules.methods,
                        device=dist.device,
                        progress=progress,
                        rules=rules,
                        log=quiet if self.own_tl else log,
                        signer=signer,
                    )
                    made.append(arch)
            if made and self.own_tl:
                log(
                    f"baselines: made from the TL checkpoints just trained ({self.prof.out}/<arch>/tl.pt, "
                    f"{', '.join(made)}) in {self.root}; each FT checkpoint is gated against its own TL"
                )
            return data_root

        return main_first(dist, make)

    def _due(self, arch: str, rules: Thresholds, create_missing: bool, log: Log) -> bool:
        """Whether ``arch``'s baseline is to be made: own-TL, when it is missing or was not
        made from the TL checkpoint beside the FT one; else when it is missing and
        ``create_missing`` (and it says so)."""
        ft = self.ft(arch)
        if not ft.is_file():
            raise missing_checkpoint(ft, self.prof, "FT checkpoint")
        base, tl = self.root / arch, ft.parent / "tl.pt"
        if self.own_tl:
            return not _made_from(base, tl, rules)
        if create_missing and not (base / "baseline.json").is_file():
            log(f"baseline {base} is missing: creating it from {tl}")
            return True
        return False


def profile_gate(
    profile: str | Profile, profiles: PathLike, backbones: Sequence[str] | None, baselines: PathLike | None
) -> ProfileGate:
    """The profile's part of ``gate(profile=...)``: its backbones (or ``backbones`` of
    them), its baselines folder unless ``baselines`` is given, own-TL or committed."""
    prof = profile_from(profile, profiles)
    unknown = sorted(set(backbones or ()) - set(prof.backbones))
    if unknown:
        raise ConfigError(
            f"--backbone {', '.join(unknown)}: not a backbone of profile {prof.name!r} "
            f"({', '.join(prof.backbones)})"
        )
    root = prof.baselines_folder() if baselines is None else Path(baselines)
    return ProfileGate(
        prof, tuple(backbones or prof.backbones), root, prof.own_tl_baselines and baselines is None
    )
