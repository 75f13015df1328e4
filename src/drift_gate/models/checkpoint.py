"""Checkpoints: weights plus the metadata needed to use them, loaded without code.

On disk a checkpoint is a ``torch.save`` archive of a plain dict::

    {"format": "drift-gate-checkpoint", "schema_version": 1,
     "meta": "<JSON of CheckpointMeta>", "state_dict": {name: tensor}}

It is read with ``torch.load(weights_only=True)``, so a file that would run code
when unpickled is refused rather than executed.

Size: the metadata's fields, the check of each field's type and range when a file is
read (every checkpoint is hostile input) and the save and load paths are one format; kept
in one module, a new field cannot be added without its check.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import math
import pickle
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from drift_gate._io import atomic_write_bytes
from drift_gate._machine import is_machine
from drift_gate.data.preprocess import DEFAULT, Preprocess
from drift_gate.errors import CheckpointError, ConfigError
from drift_gate.models.backbones import Classifier, build_classifier
from drift_gate.models.layers import find_layer, is_module_path

__all__ = [
    "SCHEMA_VERSION",
    "CheckpointMeta",
    "check_tensors",
    "foreign_format",
    "is_safetensors",
    "library_versions",
    "load_checkpoint",
    "save_checkpoint",
    "weights_only_load",
]


#: Newest checkpoint schema this version reads: 1, or 2 naming a CAM target layer, 3 an
#: output stride; a drift-gate predating the field would ignore it, computing maps elsewhere.
SCHEMA_VERSION = 3
_FORMAT = "drift-gate-checkpoint"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape weights and maps."""
    import numpy
    import torchvision

    from drift_gate._version import __version__

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "drift_gate": __version__,
    }
    # from its metadata: importing timm costs a second of every command's start
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # timm is a dependency
        out["timm"] = importlib.metadata.version("timm")
    return out


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself.

    Attributes:
        arch: backbone registry name.
        classes: class names, in logit order.
        input_size: square input side in pixels.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        phase: ``tl`` (frozen backbone, head trained), ``ft`` (all layers) or another tag.
        seed: training seed.
        data_manifest_sha256: :attr:`drift_gate.data.DataSet.manifest_sha256` of the
            training data.
        weights: where the backbone's initial weights came from.
        metrics: evaluation results per split (``val``, ``test``).
        config_sha256: hash of the training configuration (for resuming).
        epoch: the selected (best) epoch.
        versions: :func:`library_versions` at training time.
        schema_version: checkpoint schema.
        preprocess: how files become the model's input (:mod:`drift_gate.preprocess`);
            stored only when it is not the default, so older checkpoints read as before.
        model: the model spec (:class:`drift_gate.models.spec.ModelSpec` as a dict) of a
            model drift-gate did not train; ``None`` for drift-gate's own.
        target_layer: the CAM target layer inside a drift-gate backbone (a module path
            such as ``body.0.denseblock3``, from the profile's ``per_backbone`` table);
            ``None``: the body's last module. Stored only when set.
        output_stride: the output stride the backbone was built with (the profile's
            ``per_backbone.<arch>.output_stride``); ``None``: its own. Stored only when set.
        machine: the machine that trained it (:func:`drift_gate._machine.machine`: CPU,
            kernels, threads, GPU), shown in reports; ``None`` (not stored) for a model
            drift-gate did not train and for checkpoints written before it was recorded.
    """

    arch: str
    classes: tuple[str, ...]
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    phase: str
    seed: int
    data_manifest_sha256: str
    weights: str = "none"
    metrics: dict[str, Any] = field(default_factory=dict)
    config_sha256: str = ""
    epoch: int = -1
    versions: dict[str, str] = field(default_factory=library_versions)
    schema_version: int = 1
    preprocess: Preprocess = DEFAULT
    model: dict[str, Any] | None = None
    target_layer: str | None = None
    output_stride: int | None = None
    machine: dict[str, Any] | None = None

    def to_json(self) -> str:
        """Canonical JSON (sorted keys)."""
        doc = asdict(self)
        if self.preprocess == DEFAULT:
            del doc["preprocess"]
        for optional in ("model", "target_layer", "output_stride", "machine"):
            if doc[optional] is None:
                del doc[optional]
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: object, source: Path) -> CheckpointMeta:
        """Parses and validates metadata read from ``source``: a JSON string of bounded
        size whose fields have the documented types and ranges (nothing else is used or
        printed before this check)."""
        if not isinstance(text, str):
            raise CheckpointError(
                f"{source}: checkpoint metadata is {type(text).__name__}, not a JSON string"
            )
        if len(text) > _MAX_META:
            raise CheckpointError(
                f"{source}: checkpoint metadata is {len(text):,} characters; refused unread"
            )
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CheckpointError(f"{source}: checkpoint metadata is not valid JSON") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: checkpoint metadata is not a JSON object")
        names = {f.name for f in fields(cls)}
        missing = sorted(
            n
            for n in ("arch", "classes", "input_size", "mean", "std", "phase", "seed", "data_manifest_sha256")
            if n not in raw
        )
        if missing:
            raise CheckpointError(f"{source}: checkpoint metadata lacks {', '.join(missing)}")
        # a drift-gate checkpoint is built from its registry arch, never from a stored spec
        raw = {k: v for k, v in raw.items() if k in names and k != "model"}
        bad = _bad_fields(raw)
        if bad:
            raise CheckpointError(f"{source}: checkpoint metadata field {bad}")
        for key in ("classes", "mean", "std"):
            raw[key] = tuple(raw[key])
        try:
            raw["preprocess"] = Preprocess.from_dict(raw.get("preprocess", {}), f"{source}: metadata")
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
        return cls(**raw)


#: Largest metadata string read (a drift-gate checkpoint's is about 2 KB).
_MAX_META = 1 << 20


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _bad_fields(raw: dict[str, Any]) -> str | None:
    """The first field of checkpoint metadata with the wrong type or range, described."""
    checks: dict[str, tuple[Any, str]] = {
        "arch": (lambda v: isinstance(v, str) and 0 < len(v) <= 64, "a backbone name"),
        "classes": (
            lambda v: (
                isinstance(v, list)
                and 1 <= len(v) <= 10_000
                and all(isinstance(c, str) and 0 < len(c) <= 200 for c in v)
            ),
            "a list of 1 to 10,000 class names",
        ),
        "input_size": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 4096,
            "an integer from 8 to 4096",
        ),
        "mean": (
            lambda v: isinstance(v, list) and len(v) in (1, 3) and all(map(_is_number, v)),
            "1 or 3 numbers",
        ),
        "std": (
            lambda v: isinstance(v, list) and len(v) in (1, 3) and all(_is_number(x) and x > 0 for x in v),
            "1 or 3 positive numbers",
        ),
        "phase": (lambda v: isinstance(v, str) and len(v) <= 64, "a short string"),
        "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "data_manifest_sha256": (lambda v: isinstance(v, str) and len(v) <= 128, "a hash"),
        "weights": (lambda v: isinstance(v, str) and len(v) <= 4096, "a string"),
        "config_sha256": (lambda v: isinstance(v, str) and len(v) <= 128, "a hash"),
        "epoch": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "schema_version": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "metrics": (lambda v: isinstance(v, dict), "a table"),
        "versions": (
            lambda v: isinstance(v, dict) and all(isinstance(x, str) and len(x) <= 64 for x in v.values()),
            "a table of version strings",
        ),
        "target_layer": (
            lambda v: v is None or is_module_path(v),
            "a module path such as body.0.denseblock3",
        ),
        "output_stride": (lambda v: v is None or (type(v) is int and 0 < v <= 1024), "an integer, 1 to 1024"),
        "machine": (
            lambda v: v is None or is_machine(v),
            "a machine record (cpu, arch, aten_capability, onednn_max_cpu_isa, gpu: "
            "short strings; threads: 1 to 4096)",
        ),
    }
    for key, (ok, what) in checks.items():
        if key in raw and not ok(raw[key]):
            shown = repr(raw[key])
            return f"{key} must be {what}, got {shown[:60]}{'…' if len(shown) > 60 else ''}"
    return None


def _schema(meta: CheckpointMeta) -> int:
    if meta.output_stride is not None:
        return 3
    return 1 if meta.target_layer is None else 2


def save_checkpoint(path: Path, model: torch.nn.Module, meta: CheckpointMeta) -> None:
    """Writes ``model`` and ``meta`` to ``path`` atomically; drops the ONNX export beside it
    (``.onnx``, ``.onnx.json``), made from the bytes this replaces (the gate would fail its parity)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(
        {"format": _FORMAT, "schema_version": _schema(meta), "meta": meta.to_json(), "state_dict": state},
        buf,
    )
    atomic_write_bytes(path := Path(path), buf.getvalue())
    for stale in (path.with_suffix(".onnx"), path.with_suffix(".onnx.json")):
        stale.unlink(missing_ok=True)


_SAVE_STATE_DICT = (
    "save the weights with torch.save(model.state_dict(), ...) and give the model spec (--model model.toml)"
)


def foreign_format(path: Path) -> str | None:
    """Why a file of another known format cannot be a candidate, or None."""
    import zipfile

    with path.open("rb") as fh:
        head = fh.read(16)
    if path.suffix.lower() == ".onnx":
        return (
            "an ONNX model: CAMs need the PyTorch weights (gradients at the target layer); give the "
            "checkpoint and put its .onnx beside it (`drift-gate export`), which the gate then uses "
            "for predictions"
        )
    if len(head) >= 9 and head[8:9] == b"{" and path.suffix.lower() == ".safetensors":
        return (
            "a safetensors state dict without drift-gate's metadata (classes, input size): give its "
            "model spec (--model model.toml: docs/how-to/own-model.md)"
        )
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return (
                "a TorchScript module: hooks do not fire inside scripted modules, so its CAMs cannot "
                f"be computed; {_SAVE_STATE_DICT}"
            )
    return None


def is_safetensors(path: Path) -> bool:
    """Whether the file is a safetensors file by its bytes: an 8-byte little-endian header
    length, then that many bytes of JSON (whatever the file's name)."""
    with Path(path).open("rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size <= Path(path).stat().st_size - 8


def check_tensors(path: Path, state: dict[str, Any]) -> None:
    """Every value of a state dict is a dense tensor with data and finite values.

    Raises:
        CheckpointError: naming the first key that is not: another object, a sparse, meta
            or quantised tensor, NaN or Inf.
    """
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: the state_dict holds {type(tensor).__name__}, not only tensors")
        if tensor.layout != torch.strided:
            raise CheckpointError(
                f"{path}: weight {name} is a {str(tensor.layout).removeprefix('torch.')} tensor; "
                "save dense weights (tensor.to_dense())"
            )
        if tensor.is_meta:
            raise CheckpointError(f"{path}: weight {name} is a meta tensor: it has a shape but no values")
        if tensor.is_quantized:
            raise CheckpointError(
                f"{path}: weight {name} is quantised ({tensor.dtype}); gate the float model the "
                "quantised one was made from"
            )
        if tensor.is_complex():
            raise CheckpointError(f"{path}: weight {name} is complex ({tensor.dtype})")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weight {name} contains NaN or Inf")


def weights_only_load(path: Path, unsafe: str, damaged: str) -> object:
    """``torch.load(weights_only=True)``; a file that would run code is refused with
    ``unsafe``, a damaged one with ``damaged`` and the error's type.

    Raises:
        CheckpointError: either case, naming ``path``.
    """
    if is_safetensors(path):
        raise CheckpointError(
            f"{path}: a safetensors file (its first bytes say so), not a torch.save file: name it "
            "<name>.safetensors and give its model spec (--model model.toml)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or unsafe files
        # the weights-only unpickler met an object it will not build (a GLOBAL or REDUCE)
        if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower():
            raise CheckpointError(f"{path}: {unsafe}") from exc
        raise CheckpointError(f"{path}: {damaged} ({exc.__class__.__name__})") from exc


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[Classifier, CheckpointMeta]:
    """Loads a checkpoint as an eval-mode model and its metadata.

    Raises:
        CheckpointError: missing, empty, truncated or foreign files; pickles that
            would execute code; newer schema versions; weights that do not fit
            the architecture; NaN or Inf weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    foreign = foreign_format(path)
    if foreign is not None:
        raise CheckpointError(f"{path}: {foreign}")
    obj = weights_only_load(
        path,
        unsafe="it contains Python objects that would run code when loaded; refused",
        damaged="not a readable checkpoint, truncated or corrupt",
    )
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path}: not a drift-gate checkpoint; a plain state dict needs its model spec "
            "(--model model.toml: docs/how-to/own-model.md), or train one with `drift-gate train`"
        )
    version = obj.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint schema version {version} is newer than this "
            f"drift-gate supports ({SCHEMA_VERSION}); upgrade drift-gate"
        )
    meta = CheckpointMeta.from_json(obj.get("meta", ""), path)
    state = obj.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint has no state_dict")
    check_tensors(path, state)
    try:
        model = build_classifier(meta.arch, len(meta.classes), output_stride=meta.output_stride)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit architecture {meta.arch!r} with {len(meta.classes)} classes"
        ) from exc
    model = model.to(device).eval()
    if meta.target_layer is not None:
        try:
            model.target = find_layer(model, meta.target_layer, meta.input_size, meta.preprocess.channels)
        except ConfigError as exc:
            raise CheckpointError(f"{path}: its CAM target layer: {exc}") from None
    return model, meta
