"""Pretrained weights: ImageNet (from the local cache only), a local file, or none.

The ``synthetic`` option (a short pretraining on the phantom source task) lives in
:mod:`drift_gate.train`, since it is a training run; its result is an ordinary
local file that :func:`load_body_weights` reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from drift_gate.errors import CheckpointError, WeightsUnavailableError

__all__ = ["load_body_weights", "timm_weights_file", "torchvision_weights_file"]


_TORCHVISION = {
    "densenet201": "DenseNet201_Weights",
    "inception_v3": "Inception_V3_Weights",
    "mobilenet_v3_small": "MobileNet_V3_Small_Weights",
}


def torchvision_weights_file(arch: str) -> Path:
    """Returns the cached torchvision ImageNet file for ``arch``.

    Raises:
        WeightsUnavailableError: when the file is not in torch's hub cache; the
            message says which file to put where.
    """
    import torchvision.models as tvm

    weights = getattr(tvm, _TORCHVISION[arch]).IMAGENET1K_V1
    path: Path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(str(weights.url))
    if not path.is_file():
        raise WeightsUnavailableError(
            f"ImageNet weights for {arch} are not in the local cache and this tool does not "
            f"download them: fetch {weights.url} and put it at {path} (or set TORCH_HOME), "
            "or use weights = 'synthetic'"
        )
    return path


def timm_weights_file(model_id: str) -> Path:
    """Returns the cached Hugging Face file for timm model ``model_id``.

    Raises:
        WeightsUnavailableError: when it is not in the Hugging Face cache.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    repo = f"timm/{model_id}"
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    raise WeightsUnavailableError(
        f"ImageNet weights {repo} are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
        "and this tool does not download them: run `huggingface-cli download "
        f"{repo} model.safetensors` on a machine with internet and copy the cache over, "
        "or use weights = 'synthetic'"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every loader failure is the user's file, not a bug
        raise CheckpointError(f"{path}: not a readable weights file ({exc.__class__.__name__})") from exc
    if isinstance(obj, dict) and "body" in obj and isinstance(obj["body"], dict):
        obj = obj["body"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return obj


def load_body_weights(body: nn.Module, path: Path) -> None:
    """Loads a backbone body's weights from ``path`` (``.pt``/``.pth`` or ``.safetensors``).

    The file holds the body's state dict, or a dict whose ``body`` entry is one
    (the format of the synthetic pretraining cache).

    Raises:
        CheckpointError: unreadable file, or keys/shapes that do not fit the body.
    """
    state = _read_state_dict(Path(path))
    try:
        body.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{path}: weights do not fit this backbone ({first[1].strip() if len(first) > 1 else first[0]})"
        ) from exc
