"""Training profiles: ``profiles.toml`` -> frozen dataclasses, validated once.

Unknown keys and wrong types are errors that name the key. The resolved profile
is written beside every checkpoint (``profile.json``) so a run says what it did.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from drift_gate._io import file_sha256
from drift_gate.data.preprocess import DEFAULT, Preprocess
from drift_gate.errors import ConfigError
from drift_gate.models.layers import is_module_path

__all__ = [
    "OWN_TL",
    "BackboneOverrides",
    "PhantomConfig",
    "PhaseConfig",
    "PretrainConfig",
    "Profile",
    "load_profile",
]


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

#: ``baselines = "own-tl"``: each FT checkpoint is gated against its own TL checkpoint.
OWN_TL = "own-tl"

#: learning-rate schedules of the synthetic pretraining (``pretrain.schedule``)
PRETRAIN_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class PhantomConfig:
    """The embedded phantom data set."""

    n_per_class: int = 100
    size: int = 256
    seed: int = 0


@dataclass(frozen=True)
class PretrainConfig:
    """Synthetic pretraining on the phantom source task (``weights = "synthetic"``).

    ``scale`` sets the source images' side as a fraction of each backbone's input
    size, so the target layer sees structures at a similar scale in both tasks
    (InceptionV3's unpadded stem turns 96 px into a 1x1 map but 120 px into 2x2).
    ``schedule`` is the learning rate over the steps: ``"constant"`` (``lr`` throughout) or
    ``"cosine"`` (from ``lr`` down to 0 at the last step, so the body ends at a settled point
    rather than wherever the last steps at full ``lr`` left it).
    """

    images: int = 1000
    epochs: int = 2
    lr: float = 1e-3
    scale: float = 0.75
    seed: int = 1
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.schedule not in PRETRAIN_SCHEDULES:
            raise ConfigError(
                f"schedule: expected one of {', '.join(PRETRAIN_SCHEDULES)}, got {self.schedule!r}"
            )

    def key(self) -> dict[str, Any]:
        """The settings that reach the pretrained weights, as a training key holds them: the
        default ``schedule`` is left out, so keys made before it existed stay valid."""
        doc = asdict(self)
        if self.schedule == "constant":
            del doc["schedule"]
        return doc

    def size_for(self, input_size: int) -> int:
        """Source image side for a backbone with this input size."""
        return max(8, round(self.scale * input_size))


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase."""

    epochs: int
    lr: float
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class BackboneOverrides:
    """Per-backbone settings that replace the profile's.

    ``target_layer`` moves the CAM target layer from the body's last module to an earlier
    one (a module path inside drift-gate's classifier, e.g. ``body.0.denseblock3``);
    ``output_stride = 16`` builds the body with half its own output stride, so the CAM grid
    doubles (:func:`drift_gate.models.backbones.build_classifier`). Both are written into
    the checkpoints, so baselines and gates of them use them.
    """

    input_size: int | None = None
    tl: PhaseConfig | None = None
    ft: PhaseConfig | None = None
    target_layer: str | None = None
    output_stride: int | None = None

    def __post_init__(self) -> None:
        if self.target_layer is not None and not is_module_path(self.target_layer):
            raise ConfigError(
                "target_layer: expected a module path such as 'body.0.denseblock3', "
                f"got {self.target_layer!r}"
            )


@dataclass(frozen=True)
class Profile:
    """A training profile.

    Attributes:
        name: the profile's table name.
        data: ``"phantoms"`` for the embedded generator, else a folder or manifest.
        data_dir: where phantoms are written (ignored for user data).
        backbones: registry names to train.
        input_size: square input side.
        per_backbone: overrides of ``input_size``, ``tl`` and ``ft`` for one backbone.
        weights: ``"synthetic"``, ``"imagenet"``, ``"none"`` or a path to a body's
            weights file.
        out: checkpoint folder (``out/<arch>/{tl,ft}.pt``).
        preprocess: how files become the model's input (:mod:`drift_gate.preprocess`);
            written into every checkpoint and baseline.
        baselines: where ``gate --profile`` finds the baselines: :data:`OWN_TL` (each FT
            checkpoint gated against its own TL checkpoint's maps, made by the gate in
            ``<out>/baselines`` and re-made whenever that TL changes: the study's protocol,
            valid on any machine), or a folder of stored baselines (committed, never made
            by the gate unless asked).
        reference: a folder of pinned TL checkpoints (``<reference>/<arch>/tl.pt``, committed
            beside their baselines): training copies them instead of training a TL phase,
            so what a stored baseline was made from is the same file on every machine.
    """

    name: str
    data: str = "phantoms"
    data_dir: str = "data/phantoms"
    phantoms: PhantomConfig = field(default_factory=PhantomConfig)
    backbones: tuple[str, ...] = ("densenet201", "resnet50v2", "inception_v3")
    input_size: int = 128
    per_backbone: dict[str, BackboneOverrides] = field(default_factory=dict)
    weights: str = "synthetic"
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    seed: int = 0
    batch_size: int = 16
    tl: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=100, lr=1e-3))
    ft: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=3, lr=1e-4))
    out: str = "checkpoints"
    preprocess: Preprocess = DEFAULT
    baselines: str = "baselines"
    reference: str | None = None

    @property
    def own_tl_baselines(self) -> bool:
        """Whether each FT checkpoint is gated against a baseline of its own TL checkpoint."""
        return self.baselines == OWN_TL

    def baselines_folder(self) -> Path:
        """The folder holding this profile's baselines (``<arch>/`` each)."""
        return Path(self.out) / "baselines" if self.own_tl_baselines else Path(self.baselines)

    def pinned_tl(self, arch: str) -> Path | None:
        """The pinned TL checkpoint of one backbone (``None``: its TL phase is trained)."""
        return None if self.reference is None else Path(self.reference) / arch / "tl.pt"

    def input_size_for(self, arch: str) -> int:
        """The input size of one backbone."""
        o = self.per_backbone.get(arch)
        return o.input_size if o is not None and o.input_size is not None else self.input_size

    def phase_for(self, arch: str, phase: str) -> PhaseConfig:
        """The ``tl`` or ``ft`` settings of one backbone."""
        o = self.per_backbone.get(arch)
        override: PhaseConfig | None = getattr(o, phase) if o is not None else None
        default: PhaseConfig = getattr(self, phase)
        return override if override is not None else default

    def target_layer_for(self, arch: str) -> str | None:
        """The CAM target layer of one backbone (``None``: the body's last module)."""
        o = self.per_backbone.get(arch)
        return None if o is None else o.target_layer

    def output_stride_for(self, arch: str) -> int | None:
        """The output stride one backbone is built with (``None``: its own)."""
        o = self.per_backbone.get(arch)
        return None if o is None else o.output_stride

    def training_key(self, arch: str, phase: str, *extra: str) -> str:
        """Hash of what one backbone's ``phase`` checkpoint depends on, for resuming safely.

        Only the settings that reach that backbone's weights count: its input size, seed,
        batch size, weights (a weights file by its content), the synthetic pretraining
        (for ``weights = "synthetic"``), preprocessing, target layer, output stride (where
        set) and the TL phase; the
        FT key adds the FT phase. The profile's name, ``out``, its other backbones and
        their overrides do not, so renaming a profile or adding a backbone retrains
        nothing, and changing only the FT settings keeps the TL checkpoint. ``extra``
        (the data manifest's hash, the precision) is appended.
        """
        if phase not in ("tl", "ft"):
            raise ValueError(f"phase: expected 'tl' or 'ft', got {phase!r}")
        doc: dict[str, Any] = {
            "arch": arch,
            "input_size": self.input_size_for(arch),
            "weights": self.weights,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "preprocess": asdict(self.preprocess),
            "target_layer": self.target_layer_for(arch),
            "tl": asdict(self.phase_for(arch, "tl")),
        }
        if self.output_stride_for(arch) is not None:
            doc["output_stride"] = self.output_stride_for(arch)
        if self.weights == "synthetic":
            doc["pretrain"] = self.pretrain.key()
        elif self.weights not in ("imagenet", "none") and Path(self.weights).is_file():
            doc["weights_sha256"] = file_sha256(Path(self.weights))
        if phase == "ft":
            doc["ft"] = asdict(self.phase_for(arch, "ft"))
        text = json.dumps(doc, sort_keys=True) + "\x1f" + "\x1f".join(extra)
        return hashlib.sha256(text.encode()).hexdigest()


def _check(value: Any, tp: Any, key: str) -> Any:
    """Validates ``value`` against annotation ``tp``; returns the converted value."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return _build(tp, value, key)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: unexpected value {value!r}")
        return None
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _check(value, arm, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        (arm, _) = typing.get_args(tp)
        return tuple(_check(v, arm, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        _, arm = typing.get_args(tp)
        return {k: _check(v, arm, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type[T], table: dict[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{prefix}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known - {'name'}))}"
        )
    kwargs = {k: _check(v, hints[k], f"{prefix}.{k}") for k, v in table.items()}
    for f in fields(cls):
        if f.name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{prefix}: missing key {f.name}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a dataclass's own validation (e.g. Preprocess)
        raise ConfigError(f"{prefix}: {exc}") from None


def load_profile(path: Path, name: str) -> Profile:
    """Reads profile ``name`` from the TOML file ``path``.

    Raises:
        ConfigError: unreadable file, TOML syntax error, unknown profile, unknown
            keys, wrong types or invalid values.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: profiles file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply to read") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the profiles file ({exc})") from None
    if name not in doc:
        raise ConfigError(f"{path}: no profile {name!r}; profiles: {', '.join(sorted(doc))}")
    profile = _build(Profile, {"name": name, **doc[name]}, f"{path}: [{name}]")
    from drift_gate.models.backbones import check_output_stride, get_backbone

    for arch in (*profile.backbones, *profile.per_backbone):
        spec = get_backbone(arch)
        size = profile.input_size_for(arch)
        if size < spec.min_input:
            raise ConfigError(
                f"{path}: [{name}] input size {size} is below {arch}'s minimum of {spec.min_input}"
            )
        try:
            check_output_stride(arch, profile.output_stride_for(arch))
        except ConfigError as exc:
            raise ConfigError(f"{path}: [{name}].per_backbone.{arch}.{exc}") from None
    if profile.preprocess.channels != 3:
        raise ConfigError(
            f"{path}: [{name}].preprocess.channels = {profile.preprocess.channels}: "
            "the built-in backbones take 3 channels"
        )
    for key in ("batch_size", "input_size"):
        if getattr(profile, key) <= 0:
            raise ConfigError(f"{path}: [{name}].{key} must be positive")
    return profile
