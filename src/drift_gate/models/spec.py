"""Model specs: what the gate needs to know about a model drift-gate did not train.

A spec is a small TOML file (``--model model.toml``)::

    [model]
    arch = "timm:convnext_nano"      # torchvision:<name> | timm:<name> | hf:<folder>
                                     # | xrv:densenet121 | python:<module>:<factory>
    classes = ["normal", "pneumonia"]
    task = "multiclass"              # multiclass | binary | multilabel
    input_size = 224
    channels = 3                     # 1 or 3
    mean = [0.485, 0.456, 0.406]     # one value per channel
    std = [0.229, 0.224, 0.225]
    target_layer = "auto"            # a module path ("stages.3", "blocks.11.norm1") or auto
    # name = "convnext"              # the baseline folder and [drift.<name>] table
    # operating_point = 0.5          # multilabel: sigmoid threshold, one or one per class
    # layout = "auto"                # auto | nchw | nhwc | tokens (the target's layout)

    [model.kwargs]                   # keyword arguments for the architecture's factory
    drop_rate = 0.0

    [model.preprocess]               # as for drift-gate's own checkpoints (channels above)
    resize = "letterbox"

The spec is stored in every baseline made with it and a candidate's spec must equal
its baseline's. Architectures are built from code the user names (a registry name,
a local Hugging Face folder's ``config.json``, or ``module:factory`` imported by
name); weights come only from the candidate file, read without running code.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drift_gate.data.preprocess import DEFAULT, Preprocess
from drift_gate.errors import ConfigError

__all__ = ["FAMILIES", "LAYOUTS", "TASKS", "ModelSpec", "load_spec"]


FAMILIES = ("torchvision", "timm", "hf", "xrv", "python")
TASKS = ("multiclass", "binary", "multilabel")
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_CLASSES = 10_000
_KEYS = {
    "arch",
    "classes",
    "task",
    "input_size",
    "channels",
    "mean",
    "std",
    "target_layer",
    "name",
    "operating_point",
    "layout",
    "kwargs",
    "preprocess",
}


@dataclass(frozen=True)
class ModelSpec:
    """A validated model spec (see the module docstring for the fields)."""

    arch: str
    classes: tuple[str, ...]
    task: str = "multiclass"
    input_size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    target_layer: str = "auto"
    name: str = ""
    operating_point: tuple[float, ...] = (0.5,)
    layout: str = "auto"
    kwargs: dict[str, Any] = field(default_factory=dict)
    preprocess: Preprocess = DEFAULT

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", default_name(self.arch))

    @property
    def family(self) -> str:
        return self.arch.split(":", 1)[0]

    @property
    def target(self) -> str:
        """What follows the family: a registry name, a folder, or ``module:factory``."""
        return self.arch.split(":", 1)[1]

    def threshold(self, label: int) -> float:
        """The multi-label operating point (sigmoid probability) of one class."""
        op = self.operating_point
        return op[0] if len(op) == 1 else op[label]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields, as stored in baselines and compared with a candidate's."""
        doc = asdict(self)
        for key in ("classes", "mean", "std", "operating_point"):
            doc[key] = list(doc[key])
        return doc

    @classmethod
    def from_dict(cls, raw: object, source: str) -> ModelSpec:
        """Validates a spec table (a TOML ``[model]`` table or a stored one)."""
        return _parse(raw, source)


def default_name(arch: str) -> str:
    """``timm:convnext_nano`` -> ``timm-convnext_nano``; a folder or factory -> its last part."""
    family, _, rest = arch.partition(":")
    last = re.split(r"[/\\:]", rest.rstrip("/\\"))[-1] or family
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{family}-{last}")[:64]


def _fail(source: str, key: str, why: str) -> ConfigError:
    return ConfigError(f"{source}: model.{key}: {why}")


def _floats(source: str, key: str, value: object, n: int | None) -> tuple[float, ...]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _fail(source, key, f"expected a number or a list of numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _fail(source, key, f"expected finite numbers, got {v!r}")
        out.append(float(v))
    if n is not None and len(out) != n:
        raise _fail(source, key, f"expected {n} values (one per channel), got {len(out)}")
    return tuple(out)


def _arch(source: str, arch: object) -> str:
    if not isinstance(arch, str) or ":" not in arch or "\x00" in arch or len(arch) > 4096:
        raise _fail(
            source,
            "arch",
            f"expected '<family>:<name>' with family one of {', '.join(FAMILIES)}, got {arch!r}",
        )
    family, _, rest = arch.partition(":")
    if family not in FAMILIES:
        raise _fail(source, "arch", f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if not rest:
        raise _fail(source, "arch", f"{family}: needs a name after the colon")
    if family == "python" and (rest.count(":") != 1 or rest.startswith(":") or rest.endswith(":")):
        raise _fail(source, "arch", f"expected 'python:<module>:<factory>', got {arch!r}")
    return arch


def _parse(raw: object, source: str) -> ModelSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the model spec must be a table, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown model key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )
    for key in ("arch", "classes"):
        if key not in raw:
            raise _fail(source, key, "missing (required)")
    arch = _arch(source, raw["arch"])
    classes, task = _classes_and_task(source, raw)
    size = raw.get("input_size", 224)
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
        raise _fail(source, "input_size", f"expected an integer from 8 to 4096, got {size!r}")
    channels, mean, std = _normalisation(source, raw)
    layer = raw.get("target_layer", "auto")
    if not isinstance(layer, str) or not layer or len(layer) > 512 or "\x00" in layer:
        raise _fail(source, "target_layer", f"expected a module path or 'auto', got {layer!r}")
    name = raw.get("name", default_name(arch))
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(source, "name", f"expected 1-64 letters, digits, '.', '_' or '-', got {name!r}")
    op = _floats(source, "operating_point", raw.get("operating_point", 0.5), None)
    if len(op) not in (1, len(classes)) or not all(0 < p < 1 for p in op):
        raise _fail(
            source,
            "operating_point",
            f"expected one probability in (0, 1) or one per class ({len(classes)}), got {list(op)}",
        )
    layout = raw.get("layout", "auto")
    if layout not in LAYOUTS:
        raise _fail(source, "layout", f"expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in kwargs.items()
    ):
        raise _fail(source, "kwargs", "expected a table of strings, numbers and booleans")
    pre = raw.get("preprocess", {})
    if not isinstance(pre, dict):
        raise _fail(source, "preprocess", f"expected a table, got {type(pre).__name__}")
    if "channels" in pre and pre["channels"] != channels:
        raise _fail(source, "preprocess", "channels are set by model.channels")
    preprocess = Preprocess.from_dict({**pre, "channels": channels}, f"{source}: model")
    return ModelSpec(
        arch=arch,
        classes=tuple(classes),
        task=task,
        input_size=size,
        channels=channels,
        mean=mean,
        std=std,
        target_layer=layer,
        name=name,
        operating_point=op,
        layout=layout,
        kwargs=dict(kwargs),
        preprocess=preprocess,
    )


def _classes_and_task(source: str, raw: dict[str, Any]) -> tuple[list[str], str]:
    """``classes`` and ``task``, checked against each other."""
    classes = raw["classes"]
    if (
        not isinstance(classes, list)
        or not 1 <= len(classes) <= _MAX_CLASSES
        or not all(isinstance(c, str) and c and "\x00" not in c and len(c) <= 200 for c in classes)
    ):
        raise _fail(source, "classes", "expected a non-empty list of class names")
    if len(set(classes)) != len(classes):
        raise _fail(source, "classes", "class names must be unique")
    task = raw.get("task", "multiclass")
    if task not in TASKS:
        raise _fail(source, "task", f"expected one of {', '.join(TASKS)}, got {task!r}")
    if task == "binary" and len(classes) != 2:
        raise _fail(
            source, "classes", f"a binary task has two classes (negative, positive), got {len(classes)}"
        )
    if task == "multiclass" and len(classes) < 2:
        raise _fail(source, "classes", "a multiclass task needs at least two classes")
    return classes, str(task)


def _normalisation(source: str, raw: dict[str, Any]) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """``channels``, ``mean`` and ``std`` (ImageNet's for 3 channels, 0.5 for 1 by default)."""
    channels = raw.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise _fail(source, "channels", f"expected 1 or 3, got {channels!r}")
    default_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    default_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    if channels == 1:
        default_mean, default_std = ((0.5,), (0.5,))
    mean = _floats(source, "mean", raw.get("mean", list(default_mean)), channels)
    std = _floats(source, "std", raw.get("std", list(default_std)), channels)
    if any(s <= 0 for s in std):
        raise _fail(source, "std", f"every value must be > 0, got {list(std)}")
    return int(channels), mean, std


def load_spec(path: Path | str) -> ModelSpec:
    """Reads ``--model model.toml`` (its ``[model]`` table).

    Raises:
        ConfigError: unreadable file, TOML errors, unknown keys or bad values; the
            message names the file and the key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the model spec ({exc})") from None
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    if "model" not in doc:
        raise ConfigError(f"{path}: no [model] table")
    extra = sorted(k for k in doc if k != "model")
    if extra:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(extra)}; a model spec has only [model]")
    return _parse(doc["model"], str(path))
