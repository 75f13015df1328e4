"""Sanity checks for a map method (Adebayo et al., *Sanity Checks for Saliency Maps*, 2018):
maps that barely change when the model's weights are randomised do not explain the model.

:func:`randomised_copy` re-initialises a copy of a model's head (its last linear layer)
and, with ``"head+block"``, also the block its CAMs are computed on; the gate computes the
candidate's maps again on that copy and compares them per sample with the drift metrics'
Spearman correlation (:func:`~drift_gate.evidence.metrics.spearman`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["RANDOMISE", "randomised_copy"]

#: What :func:`randomised_copy` re-initialises.
RANDOMISE = ("head", "head+block")


def _reset(module: nn.Module) -> int:
    n = 0
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
            n += 1
    return n


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _conv_block(module: nn.Module) -> nn.Module | None:
    """The last block of ``module`` that holds convolutions itself: its last child with
    weights, followed down until a module with a ``Conv2d`` among its own children (a
    residual bottleneck inside a stage)."""
    m = module
    while not any(isinstance(c, nn.Conv2d) for c in m.children()):
        weighted = [c for c in m.children() if _has_parameters(c)]
        if not weighted:
            return None
        m = weighted[-1]
    return m


def _body_block(body: nn.Sequential) -> nn.Module | None:
    """The last module of ``body`` with weights; where it holds no convolution (a
    pre-activation network's final norm, ResNet50V2's), together with the last
    convolutional block before it, so that every backbone's ``head+block`` re-initialises
    convolutions (DenseNet201: all of ``features``, InceptionV3: Mixed_7c, ResNet50V2: its
    last bottleneck and the final norm)."""
    weighted = [m for m in body if _has_parameters(m)]
    if not weighted:
        return None
    last = weighted[-1]
    if any(isinstance(m, nn.Conv2d) for m in last.modules()) or len(weighted) < 2:
        return last
    block = _conv_block(weighted[-2])
    return last if block is None else nn.ModuleList([block, last])


def _last_block(model: nn.Module) -> nn.Module | None:
    """The last block with weights up to the CAM target layer: for a drift-gate backbone's
    ``body``, :func:`_body_block` (docs/explanation/evidence.md says why DenseNet201's is
    not narrower); else the named target layer (a foreign model's,
    or one a profile chose inside a drift-gate backbone) when it has weights, the last
    sibling with weights before it in a ``Sequential`` when it has none (an activation),
    or else its nearest parent with weights."""
    path = getattr(getattr(model, "target", None), "path", None)
    body = getattr(model, "body", None)
    if path is None and isinstance(body, nn.Sequential):
        return _body_block(body)
    # a foreign model's layer path is relative to the network it wraps
    wrapped = (getattr(model, "net", None), getattr(model, "model", None))
    inner = next((m for m in wrapped if isinstance(m, nn.Module)), model)
    if not isinstance(path, str):
        return None
    parts = path.split(".")
    child: nn.Module | None = None
    for depth in range(len(parts), 0, -1):
        try:
            found = inner.get_submodule(".".join(parts[:depth]))
        except AttributeError:
            return None
        if child is not None and isinstance(found, nn.Sequential):
            before = list(found)[: list(found).index(child)]
            earlier = next((m for m in reversed(before) if _has_parameters(m)), None)
            if earlier is not None:
                return earlier
        if _has_parameters(found):
            return found
        child = found
    return None


def randomised_copy(model: nn.Module, what: str = "head", seed: int = 0) -> nn.Module:
    """A copy of ``model`` with its head (the last ``nn.Linear``, or ``model.head``)
    re-initialised, and with ``"head+block"`` also the last block with weights up to the
    layer its CAMs are computed on.
    The global random state is left as it was.

    Raises:
        ValueError: ``what`` is unknown, or the model has no linear head to randomise.
    """
    if what not in RANDOMISE:
        raise ValueError(f"randomise {what!r}: expected one of {', '.join(RANDOMISE)}")
    twin = copy.deepcopy(model)
    head = getattr(twin, "head", None)
    if not isinstance(head, nn.Module):
        linears = [m for m in twin.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        raise ValueError("the model has no linear head to randomise")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        _reset(head)
        if what == "head+block":
            block = _last_block(twin)
            if block is not None:
                _reset(block)
    return twin.eval()
