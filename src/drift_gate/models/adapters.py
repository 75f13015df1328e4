"""Models drift-gate did not train: built from a :class:`~drift_gate.models.spec.ModelSpec`,
weights read from a state dict without running code.

Families (``arch = "<family>:<name>"``):

* ``torchvision:<name>``: ``torchvision.models.get_model(name, num_classes=...)``;
* ``timm:<name>``: ``timm.create_model(name, num_classes=..., in_chans=...)``;
* ``hf:<folder>``: ``AutoModelForImageClassification.from_config`` with the folder's
  ``config.json`` (offline, never ``trust_remote_code``);
* ``xrv:densenet121`` (or any ``densenet121-res224-*`` weights name): torchxrayvision's
  DenseNet, raw logits (its ``op_threshs``, when the weights carry them, become the
  default operating points instead of rescaling the outputs);
* ``python:<module>:<factory>``: the user's own class, ``factory(**kwargs)`` imported
  by name from the user's code.

Candidate files: a drift-gate checkpoint (the spec must then be absent: it carries
its own), a plain ``state_dict`` in ``.pt``/``.pth`` (also ``{"state_dict": ...}``
or ``{"model": ...}``, and DDP's ``module.`` prefix), or ``.safetensors``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from drift_gate.errors import CheckpointError, ConfigError
from drift_gate.models.checkpoint import (
    CheckpointMeta,
    check_tensors,
    foreign_format,
    is_safetensors,
    load_checkpoint,
    weights_only_load,
)
from drift_gate.models.layers import TargetLayer, find_layer
from drift_gate.models.spec import ModelSpec

__all__ = ["ForeignModel", "build_model", "load_model", "read_state_dict"]


class ForeignModel(nn.Module):
    """Any classifier as drift-gate uses it: ``forward`` returns logits ``(B, K)``.

    A binary head with one logit ``z`` is given as the two logits ``(-z, z)``, so
    the negative class is explained by ``-z``, as pytorch-grad-cam's
    ``BinaryClassifierOutputTarget`` does, and AUC is that of ``z``.
    """

    def __init__(self, net: nn.Module, spec: ModelSpec, layer: TargetLayer | None = None) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.target: TargetLayer | None = layer

    def forward(self, x: Tensor) -> Tensor:
        raw = self.net(x)
        out = raw if isinstance(raw, Tensor) else getattr(raw, "logits", None)
        if not isinstance(out, Tensor):
            raise ConfigError(
                f"{self.spec.arch}: forward() returned {type(raw).__name__}, not a logits tensor"
            )
        if self.spec.task == "binary" and out.shape[-1] == 1:
            out = torch.cat([-out, out], dim=-1)
        return out


def _torchvision(spec: ModelSpec, n: int) -> nn.Module:
    import torchvision

    if spec.channels != 3:
        raise ConfigError(
            f"{spec.arch}: torchvision models take 3 channels; for a changed stem build it in "
            "your own factory (arch = 'python:<module>:<factory>')"
        )
    try:
        net = torchvision.models.get_model(spec.target, weights=None, num_classes=n, **spec.kwargs)
        return cast(nn.Module, net)
    except ValueError as exc:
        raise ConfigError(f"{spec.arch}: unknown torchvision model ({exc})") from None


def _timm(spec: ModelSpec, n: int) -> nn.Module:
    import timm

    if not timm.is_model(spec.target):
        import difflib

        close = difflib.get_close_matches(spec.target.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(
            f"{spec.arch}: unknown timm model" + (f"; similar: {', '.join(close)}" if close else "")
        )
    kwargs: dict[str, Any] = (
        {"img_size": spec.input_size} if "vit" in spec.target or "deit" in spec.target else {}
    )
    kwargs.update(spec.kwargs)
    return timm.create_model(spec.target, pretrained=False, num_classes=n, in_chans=spec.channels, **kwargs)


def _hf_config(spec: ModelSpec, n: int) -> Any:
    try:
        from transformers import AutoConfig
    except ImportError as exc:
        raise ConfigError(f"{spec.arch}: needs the transformers package (pip install transformers)") from exc
    folder = Path(spec.target)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{spec.arch}: {folder / 'config.json'} not found (a local Hugging Face folder)")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{spec.arch}: cannot read {folder / 'config.json'} ({exc})") from None
    config.num_labels = n
    config.num_channels = spec.channels
    return config


def _hf(spec: ModelSpec, n: int) -> nn.Module:
    from transformers import AutoModelForImageClassification

    net = AutoModelForImageClassification.from_config(_hf_config(spec, n))  # type: ignore[no-untyped-call]
    return cast(nn.Module, net)


def _hf_with_weights(spec: ModelSpec, path: Path) -> nn.Module:
    """Transformers renames checkpoint keys between versions as it loads them, so the
    weights go through ``from_pretrained`` (offline, safetensors or weights-only pickles)
    from a folder holding the spec's config and the candidate file."""
    import tempfile

    from transformers import AutoModelForImageClassification

    config = _hf_config(spec, len(spec.classes))
    safetensors = path.suffix.lower() == ".safetensors"
    with tempfile.TemporaryDirectory(prefix="drift-gate-hf-") as tmp:
        config.save_pretrained(tmp)
        (Path(tmp) / ("model.safetensors" if safetensors else "pytorch_model.bin")).symlink_to(path.resolve())
        from transformers.utils import logging

        hf_logging: Any = logging  # its functions are untyped
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # drift-gate's own progress (or --no-progress) rules
        try:
            net, info = AutoModelForImageClassification.from_pretrained(
                tmp,
                config=config,
                local_files_only=True,
                use_safetensors=safetensors,
                weights_only=True,
                output_loading_info=True,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            detail = next(
                (ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:300]
            )
            raise CheckpointError(
                f"{path}: the weights do not fit {spec.arch} with {len(spec.classes)} classes: {detail}"
            ) from None
        finally:
            if shown:
                hf_logging.enable_progress_bar()
    problems = [
        f"{what} {len(keys)} weight(s) (e.g. {sorted(keys)[0]})"
        for what, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys")))
        if keys
    ]
    mismatched = info.get("mismatched_keys")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape (e.g. {next(iter(mismatched))})")
    if problems:
        raise CheckpointError(f"{path}: the weights do not fit {spec.arch}: {'; '.join(problems)}")
    return net.eval()  # type: ignore[no-any-return]


def _xrv(spec: ModelSpec, n: int) -> nn.Module:
    try:
        import torchxrayvision as xrv
    except ImportError as exc:
        raise ConfigError(f"{spec.arch}: needs the torchxrayvision package") from exc
    if spec.target != "densenet121" and not spec.target.startswith("densenet121-"):
        raise ConfigError(
            f"{spec.arch}: supported torchxrayvision models: densenet121 (also named by its "
            "weights, e.g. densenet121-res224-all)"
        )
    return xrv.models.DenseNet(weights=None, num_classes=n, in_channels=spec.channels, **spec.kwargs)  # type: ignore[no-any-return]


def _python(spec: ModelSpec, n: int) -> nn.Module:
    module_name, _, attr = spec.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything on import
        raise ConfigError(
            f"{spec.arch}: cannot import {module_name!r} ({exc.__class__.__name__}: {exc}); "
            "it must be importable where drift-gate runs (installed or on PYTHONPATH)"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{spec.arch}: {module_name} has no callable {attr!r}")
    try:
        net = factory(**spec.kwargs)
    except Exception as exc:  # the user's code may raise anything
        raise ConfigError(f"{spec.arch}: the factory failed ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{spec.arch}: the factory returned {type(net).__name__}, not an nn.Module")
    return net


_BUILDERS = {"torchvision": _torchvision, "timm": _timm, "hf": _hf, "xrv": _xrv, "python": _python}


def build_model(spec: ModelSpec, outputs: int | None = None) -> nn.Module:
    """The architecture of ``spec`` with random weights, in eval mode; ``outputs`` logits
    (default one per class)."""
    try:
        net = _BUILDERS[spec.family](spec, outputs or len(spec.classes))
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ConfigError(f"{spec.arch}: cannot build the model ({exc.__class__.__name__}: {exc})") from exc
    return net.eval()


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise CheckpointError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    state: dict[str, Tensor] = obj
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A plain state dict from ``.safetensors`` or a ``torch.save`` file, read without code.

    Raises:
        CheckpointError: missing, empty, unsafe, corrupt or not a state dict; NaN or Inf.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: candidate not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: candidate file is empty")
    if path.suffix.lower() == ".pt2":
        raise CheckpointError(
            f"{path}: a torch.export program: its graph has no module whose activation a hook can "
            "capture reliably; save the weights with torch.save(model.state_dict(), 'model.pt') "
            "(or safetensors) and give the spec"
        )
    if path.suffix.lower() == ".safetensors" or is_safetensors(path):  # by its name or its bytes
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    else:
        why = foreign_format(path)
        if why is not None:
            raise CheckpointError(f"{path}: {why}")
        state = weights_only_load(
            path,
            unsafe="contains Python objects (a whole pickled model?) that would run code when loaded; "
            "refused. Save torch.save(model.state_dict(), 'model.pt') instead",
            damaged="not a readable state dict, truncated or corrupt",
        )
    if isinstance(state, dict) and state.get("format") == "drift-gate-checkpoint":
        raise ConfigError(f"{path}: a drift-gate checkpoint carries its own model description; drop --model")
    out = _unwrap(state, path)
    check_tensors(path, out)
    return out


def _load_weights(net: nn.Module, spec: ModelSpec, state: dict[str, Tensor], path: Path) -> ModelSpec:
    if spec.family == "xrv" and "op_threshs" in state:
        # Pretrained torchxrayvision weights carry per-class operating points; drift-gate
        # reads raw logits and uses them as the default sigmoid thresholds.
        thr = state.pop("op_threshs")
        if spec.task == "multilabel" and spec.operating_point == (0.5,) and thr.numel() == len(spec.classes):
            values = tuple(float(v) for v in thr.flatten())
            if all(0 < v < 1 for v in values):
                from dataclasses import replace

                spec = replace(spec, operating_point=values)
    own = net.state_dict()
    for name, tensor in state.items():  # load_state_dict would cast 0/1 or 3 into a float weight
        if name in own and own[name].is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(
                f"{path}: weight {name} is {str(tensor.dtype).removeprefix('torch.')}, not a "
                f"floating-point tensor as the model's ({str(own[name].dtype).removeprefix('torch.')}); "
                "save the float weights"
            )
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape (e.g. another number of classes)
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:300])
        raise CheckpointError(
            f"{path}: the weights do not fit {spec.arch} with {len(spec.classes)} classes: {detail}"
        ) from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} weight(s) (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})")
    if problems:
        raise CheckpointError(f"{path}: the weights do not fit {spec.arch}: {'; '.join(problems)}")
    return spec


def meta_for(spec: ModelSpec, weights: str) -> CheckpointMeta:
    """The metadata the rest of drift-gate reads, for a model described by a spec."""
    return CheckpointMeta(
        arch=spec.name,
        classes=spec.classes,
        input_size=spec.input_size,
        mean=spec.mean,
        std=spec.std,
        phase="external",
        seed=-1,
        data_manifest_sha256="",
        weights=weights,
        preprocess=spec.preprocess,
        model=spec.as_dict(),
    )


def load_model(
    path: Path, spec: ModelSpec | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointMeta]:
    """Loads a candidate or reference: a drift-gate checkpoint, or weights plus a spec.

    Raises:
        ConfigError: a bad spec, or a spec given with a drift-gate checkpoint (which
            carries its own), or none given with a plain state dict.
        CheckpointError: unreadable, unsafe or mismatched weights.
    """
    path = Path(path)
    if spec is None:  # a drift-gate checkpoint, or the reason it is not and what to give
        return load_checkpoint(path, device)
    state = read_state_dict(path)  # refuses unsafe, damaged or non-finite weights first
    if spec.family == "hf":
        return _finish(_hf_with_weights(spec, path), spec, path, device)
    net = build_model(spec)
    try:
        spec = _load_weights(net, spec, dict(state), path)
    except CheckpointError as first:
        if spec.task != "binary":
            raise
        net = build_model(spec, outputs=1)  # a binary head with a single logit
        try:
            spec = _load_weights(net, spec, dict(state), path)
        except CheckpointError:
            raise first from None
    return _finish(net, spec, path, device)


def _finish(
    net: nn.Module, spec: ModelSpec, path: Path, device: str | torch.device
) -> tuple[nn.Module, CheckpointMeta]:
    model = ForeignModel(net, spec).to(device).eval()
    out = _logit_count(model, spec, device)
    if out != len(spec.classes) and not (spec.task == "binary" and out == 2):
        raise CheckpointError(f"{path}: the model gives {out} outputs for {len(spec.classes)} classes")
    model.target = find_layer(net, spec.target_layer, spec.input_size, spec.channels, spec.layout)
    return model, meta_for(spec, f"{path.name}")


def _logit_count(model: ForeignModel, spec: ModelSpec, device: str | torch.device) -> int:
    with torch.no_grad():
        out = model(torch.zeros(1, spec.channels, spec.input_size, spec.input_size, device=device))
    if out.dim() != 2:
        raise ConfigError(f"{spec.arch}: the model's output has shape {tuple(out.shape)}, not (B, classes)")
    return int(out.shape[1])


def describe(model: nn.Module) -> Any:
    """The located target layer of a foreign model (None for drift-gate's own)."""
    return getattr(model, "target", None) if isinstance(model, ForeignModel) else None
