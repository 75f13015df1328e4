"""A functionally identical candidate: channels at the CAM target layer permuted.

Permuting the channels of the target activation, together with everything that
produces them and the head's columns that read them, changes every weight tensor
involved but neither the logits nor any channel-summed CAM (LayerCAM, Grad-CAM,
Grad-CAM++, Ablation-CAM weigh each channel by its own gradient or ablation and
then sum over channels). A gate that failed such a candidate would be reacting to
the parameterisation, not the evidence: it is the negative control for "the maps
equal the reference's".

Which modules produce the target channels depends on the architecture:

=================  ==========================================================
backbone           permuted
=================  ==========================================================
``tiny``           the last conv's output channels and the last BatchNorm
``densenet201``    the last dense layer's 32 new channels (its ``conv2`` output)
                   and their entries in ``norm5``
``resnet50v2``     the whole 2048-channel residual stream of the last stage:
                   the shortcut conv, every ``conv3`` output, every later
                   block's ``norm1`` and ``conv1`` input, and the final ``norm``
``inception_v3``   ``Mixed_7c.branch_pool``'s 192 output channels (conv + BN)
=================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drift_gate.errors import ConfigError
from drift_gate.models.backbones import Classifier
from drift_gate.models.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["PERMUTABLE", "Tensor", "permute_target_channels", "write_permuted_candidate"]


Tensor = torch.Tensor


def _take(t: Tensor, perm: Tensor, dim: int) -> None:
    t.copy_(t.index_select(dim, perm))


def _out(m: nn.Module, perm: Tensor) -> None:
    """Permutes a conv's output channels or a BatchNorm's channels (all its state)."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(m, name, None)
        if isinstance(t, Tensor):
            _take(t.data, perm, 0)


def _in(m: Any, perm: Tensor) -> None:
    """Permutes the input channels of a conv or linear layer."""
    _take(m.weight.data, perm, 1)


def _within(total: int, lo: int, sub: Tensor) -> Tensor:
    """A permutation of ``range(total)`` that permutes ``[lo, lo + len(sub))`` by ``sub``."""
    full = torch.arange(total)
    full[lo : lo + len(sub)] = lo + sub
    return full


# Module trees are walked by attribute name below: typed Any, as nn.Module's
# __getattr__ cannot tell mypy what a child is.


def _tiny(model: Classifier, g: torch.Generator) -> Tensor:
    body: Any = model.body
    conv, bn = body[-3], body[-2]
    perm = torch.randperm(int(bn.num_features), generator=g)
    _out(conv, perm)
    _out(bn, perm)
    return perm


def _densenet201(model: Classifier, g: torch.Generator) -> Tensor:
    features: Any = model.body[0]
    last: Any = list(features.denseblock4.children())[-1]
    width = int(last.conv2.out_channels)
    total = int(features.norm5.num_features)
    sub = torch.randperm(width, generator=g)
    _out(last.conv2, sub)
    perm = _within(total, total - width, sub)
    _out(features.norm5, perm)
    return perm


def _resnet50v2(model: Classifier, g: torch.Generator) -> Tensor:
    body: Any = model.body
    stage, norm = body[1][-1], body[2]
    perm = torch.randperm(int(norm.num_features), generator=g)
    for i, block in enumerate(stage.blocks):
        if i == 0:
            _out(block.downsample.conv, perm)
        else:
            _out(block.norm1, perm)
            _in(block.conv1, perm)
        _out(block.conv3, perm)
    _out(norm, perm)
    return perm


def _inception_v3(model: Classifier, g: torch.Generator) -> Tensor:
    pool: Any = model.body[-1].branch_pool
    width = int(pool.bn.num_features)
    total = model.head.in_features
    sub = torch.randperm(width, generator=g)
    _out(pool.conv, sub)
    _out(pool.bn, sub)
    return _within(total, total - width, sub)


#: Backbones whose target channels can be permuted, and how.
PERMUTABLE: dict[str, Callable[[Classifier, torch.Generator], Tensor]] = {
    "tiny": _tiny,
    "densenet201": _densenet201,
    "resnet50v2": _resnet50v2,
    "inception_v3": _inception_v3,
}


@torch.no_grad()
def permute_target_channels(model: Classifier, arch: str, seed: int = 0) -> Tensor:
    """Permutes ``model``'s target-layer channels in place (with the head's columns).

    Returns:
        The permutation ``p``: new channel ``j`` is old channel ``p[j]``.

    Raises:
        ConfigError: no permutation is defined for ``arch``.
    """
    try:
        how = PERMUTABLE[arch]
    except KeyError:
        raise ConfigError(
            f"no channel permutation is defined for backbone {arch!r}; known: {', '.join(sorted(PERMUTABLE))}"
        ) from None
    perm = how(model, torch.Generator().manual_seed(seed))
    _in(model.head, perm)
    return perm


def write_permuted_candidate(reference: Path, out: Path, seed: int = 0) -> Path:
    """Writes ``out``: checkpoint ``reference`` with its target channels permuted
    (phase ``permuted``; every other piece of metadata is the reference's)."""
    model, meta = load_checkpoint(reference)
    permute_target_channels(model, meta.arch, seed)
    save_checkpoint(out, model, replace(meta, phase="permuted", seed=seed))
    return Path(out)
