"""ONNX export with a parity check, and ONNX Runtime inference for the gate.

``export_onnx`` writes ``<checkpoint stem>.onnx`` beside a checkpoint (dynamic
batch axis) only if ONNX Runtime's logits equal torch's on the audit images
within a relative tolerance (``max |ort - torch| / max |torch|``); otherwise it
raises and writes nothing. A sidecar ``<stem>.onnx.json`` records the parity
measured at export, the checkpoint's sha256 and the audit set used.

The gate then evaluates predictions with :class:`OnnxModel` (CUDA execution
provider when torch sees a GPU and ONNX Runtime offers it, else the CPU) and
checks parity again against the checkpoint it audits, so that what is deployed
is what was audited.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_gate._io import atomic_write_bytes, atomic_write_text, file_sha256, uninterrupted
from drift_gate.data.datasets import ImageDataset, Images
from drift_gate.errors import CheckpointError, ExportError
from drift_gate.models.adapters import load_model
from drift_gate.models.spec import ModelSpec

__all__ = ["OPSET", "OnnxModel", "Parity", "export_onnx", "onnx_path", "parity", "torch_logits"]


OPSET = 17


def onnx_path(checkpoint: Path) -> Path:
    """Where a checkpoint's exported model lives: ``ft.pt`` -> ``ft.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime vs torch logits on ``n`` images.

    Attributes:
        max_abs_diff: largest absolute logit difference.
        scale: largest absolute torch logit.
        max_rel_diff: ``max_abs_diff / scale``.
        n: images compared.
        provider: the ONNX Runtime execution provider used.
    """

    max_abs_diff: float
    scale: float
    max_rel_diff: float
    n: int
    provider: str

    def ok(self, tolerance: float) -> bool:
        return self.max_rel_diff <= tolerance


def parity(reference: np.ndarray, onnx: np.ndarray, provider: str) -> Parity:
    """Compares two ``(N, classes)`` logit arrays."""
    if reference.shape != onnx.shape:
        raise ExportError(f"ONNX logits have shape {onnx.shape}, torch's {reference.shape}")
    finite = bool(np.isfinite(onnx).all() and np.isfinite(reference).all())
    if not finite:  # NaN or Inf on either side: no parity, whatever the other side holds
        return Parity(float("inf"), float("nan"), float("inf"), len(reference), provider)
    diff = float(np.max(np.abs(onnx.astype(np.float64) - reference), initial=0.0))
    scale = float(np.max(np.abs(reference), initial=0.0))
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return Parity(diff, scale, rel, len(reference), provider)


def _providers(device: torch.device | str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An ONNX Runtime session over an exported classifier."""

    def __init__(self, model: bytes | Path, device: torch.device | str = "cpu") -> None:
        import onnxruntime as ort

        source = model if isinstance(model, bytes) else str(model)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider chatter on stderr
        try:
            self.session = ort.InferenceSession(source, options, providers=_providers(device))
        except Exception as exc:  # ORT raises its own exception types for bad files
            where = "exported model" if isinstance(model, bytes) else str(model)
            raise CheckpointError(f"{where}: not a loadable ONNX model ({exc.__class__.__name__})") from exc
        self.input = self.session.get_inputs()[0].name

    @property
    def provider(self) -> str:
        """The execution provider that runs the model."""
        return str(self.session.get_providers()[0])

    def logits(self, dataset: Images, batch_size: int = 16) -> np.ndarray:
        """Logits for every image of ``dataset``, in order."""
        out = [
            np.asarray(self.session.run(None, {self.input: x.numpy()})[0], dtype=np.float32)
            for x, _ in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        ]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def torch_logits(
    model: torch.nn.Module,
    dataset: Images,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> np.ndarray:
    """The eager model's logits for every image of ``dataset``, in order."""
    from drift_gate.models.inference import collect

    device = torch.device(device)
    model = model.to(device).eval()
    return collect(model, dataset, device, batch_size, False, "logits")[0].numpy()


def _export_bytes(
    model: torch.nn.Module, input_size: int, metadata: dict[str, str], channels: int = 3
) -> bytes:
    import onnx

    model = model.cpu().eval()
    example = torch.zeros(2, channels, input_size, input_size)
    with tempfile.TemporaryDirectory(prefix="drift-gate-onnx-") as tmp, warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one,
        # which needs onnxscript; for these plain CNNs both give the same graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
        raw = path.read_bytes()
    proto = onnx.load_from_string(raw)
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def export_onnx(
    checkpoint: Path,
    dataset: ImageDataset,
    *,
    tolerance: float = 1e-4,
    out: Path | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    audit_sha256: str = "",
    spec: ModelSpec | None = None,
) -> tuple[Path, Parity]:
    """Exports ``checkpoint`` (with its ``spec`` when drift-gate did not train it) to ONNX
    and checks parity on ``dataset`` (the audit images).

    Returns:
        The written ``.onnx`` path and the parity measured.

    Raises:
        ExportError: parity worse than ``tolerance`` (nothing is written).
        CheckpointError: unusable checkpoint.
    """
    checkpoint = Path(checkpoint)
    out = onnx_path(checkpoint) if out is None else Path(out)
    model, meta = load_model(checkpoint, spec)
    ckpt_sha = file_sha256(checkpoint)
    data = _export_bytes(
        model,
        meta.input_size,
        {
            "drift_gate.checkpoint_sha256": ckpt_sha,
            "drift_gate.arch": meta.arch,
            "drift_gate.classes": json.dumps(list(meta.classes)),
            "drift_gate.input_size": str(meta.input_size),
            "drift_gate.mean": json.dumps(list(meta.mean)),
            "drift_gate.std": json.dumps(list(meta.std)),
        },
        meta.preprocess.channels,
    )
    reference = torch_logits(model, dataset, "cpu", batch_size)
    session = OnnxModel(data, device)
    result = parity(reference, session.logits(dataset, batch_size), session.provider)
    if not result.ok(tolerance):
        raise ExportError(
            f"{checkpoint}: the ONNX export does not reproduce the checkpoint: max relative logit "
            f"difference {result.max_rel_diff:.3g} > {tolerance:g} on {result.n} audit images; "
            "nothing was written"
        )
    sidecar: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": ckpt_sha,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "opset": OPSET,
        "audit_sha256": audit_sha256,
        "tolerance": tolerance,
        "parity": asdict(result),
    }
    with uninterrupted():
        atomic_write_bytes(out, data)
        atomic_write_text(out.with_suffix(".onnx.json"), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return out, result
