"""CAM engine: every gradient CAM from one forward pass, batched Ablation-CAM, and any other
method of the registry (:mod:`drift_gate.evidence.methods`) from what it says it needs.

The body of a :class:`~drift_gate.backbones.Classifier` ends at the CAM target
layer, so for a batch the engine

1. runs the body once without building a graph (``torch.no_grad``): the output is
   the target activation ``A`` (a fresh tensor, never an in-place alias);
2. makes ``A`` a leaf that requires grad and runs only the head on it;
3. takes ``torch.autograd.grad`` of the sum of the target logits with respect to
   ``A`` alone — no parameter gradients, no backward through the body.

Every gradient method is then a few lines over ``(A, dY/dA)``. Because no
parameter needs a gradient, frozen checkpoints work (pytorch-grad-cam raises
there: it needs a gradient to flow *through* the target layer). Samples are
independent in eval mode, so the gradient of the summed logits equals each
sample's own gradient.

Maps are returned ReLU'd at the layer's native resolution (what baselines store);
:func:`upsample` brings them to the input size (bilinear, half-pixel centres, as
OpenCV's ``INTER_LINEAR`` that pytorch-grad-cam uses).

**Ablation-CAM** (gradient-free) zeroes one channel of ``A`` at a time and
re-evaluates only the head, batched over channels, with the weights of
Desai & Ramaswamy (2020): ``w_k = (y_c - y_c^{(k)}) / y_c``. pytorch-grad-cam's
``AblationCAM`` reruns the whole network per ablated channel; with the target
layer last in the body the result is the same for non-negative activations
(post-ReLU targets), at a fraction of the cost.

Size: the engine's pass (hooks, batches, precision, devices) is one piece; the methods'
formulas are in :mod:`drift_gate.evidence.methods`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from drift_gate.data.datasets import Images
from drift_gate.errors import ConfigError
from drift_gate.evidence.methods import METHODS as _REGISTRY
from drift_gate.evidence.methods import Needs
from drift_gate.models.backbones import Classifier
from drift_gate.models.layers import TargetLayer, capture, frozen, replace_first, to_grid

__all__ = [
    "GRADIENT_METHODS",
    "METHODS",
    "MIN_GRID",
    "PRECISIONS",
    "CamBatch",
    "CamEngine",
    "CamResult",
    "autocast",
    "compute_cams",
    "grid_warning",
    "minmax",
    "upsample",
]


#: Gradient methods (they need the activation's gradient), derived from the registry.
GRADIENT_METHODS: tuple[str, ...] = tuple(n for n, m in _REGISTRY.items() if m.needs is Needs.GRADIENT)
#: Every method name the engine knows (:data:`drift_gate.evidence.methods.METHODS`).
METHODS: tuple[str, ...] = tuple(_REGISTRY)


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in methods if m not in _REGISTRY]
    if unknown:
        raise ConfigError(
            f"unknown CAM method(s) {', '.join(map(repr, unknown))}; known: {', '.join(_REGISTRY)}"
        )
    if not methods:
        raise ConfigError("no CAM method selected")
    return tuple(dict.fromkeys(methods))


@dataclass(frozen=True)
class CamBatch:
    """CAMs for one batch.

    Attributes:
        logits: ``(B, classes)`` model outputs.
        targets: ``(B,)`` class whose evidence each map shows.
        maps: method name -> ``(B, h, w)`` ReLU'd maps at the target layer's resolution.
    """

    logits: Tensor
    targets: Tensor
    maps: dict[str, Tensor]


class CamEngine:
    """Computes several CAM methods for a model from one forward pass per batch.

    Args:
        model: a drift-gate classifier (its ``body`` ends at the target layer), or any
            module returning logits with its target layer in ``layer`` (or in its own
            ``target`` attribute, as :class:`~drift_gate.models.adapters.ForeignModel`
            carries it); ``layer`` paths are relative to ``model.net`` when the model
            has one, else to ``model``.
        methods: names from :data:`METHODS`.
        ablation_chunk: channels ablated per head evaluation (memory bound).
        precision: ``fp32``, or ``bf16``: the body's forward pass runs under bfloat16
            autocast (the costly part, on GPUs); the target activation is then taken
            to float32, and the head, its gradients and the maps are computed as in
            ``fp32``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        methods: Sequence[str] = ("layercam", "gradcam++"),
        ablation_chunk: int = 256,
        precision: str = "fp32",
        layer: TargetLayer | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.model = model.eval()
        self.methods = _check_methods(methods)
        self.ablation_chunk = ablation_chunk
        self.precision = precision
        self.layer = layer or getattr(model, "target", None)
        self._needs_gradient = any(_REGISTRY[m].needs is Needs.GRADIENT for m in self.methods)
        if not isinstance(model, Classifier) and not isinstance(self.layer, TargetLayer):
            raise ConfigError("the CAM engine needs a target layer for this model (see find_layer)")

    def __call__(self, x: Tensor, targets: Tensor | None = None) -> CamBatch:
        """CAMs for a batch ``x`` and target classes (default: the predicted class)."""
        if self.layer is not None or not isinstance(self.model, Classifier):
            return self._hooked(x, targets)
        model = self.model
        with torch.no_grad(), autocast(x.device, self.precision), _no_tf32(self.precision):
            act = model.body(x)
        act = act.detach().float().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model.forward_head(act)
            targets, chosen = _chosen(logits, targets)
            grad = None
            if self._needs_gradient:
                (grad,) = torch.autograd.grad(chosen.sum(), act)
        # The channel reductions run in float64: they cost little next to the forward
        # pass, and min-max normalisation of small maps amplifies float32 rounding.
        a = act.detach().double()
        grad = None if grad is None else grad.double()
        scores = chosen.detach()
        maps = self._maps(
            _Batch(a, grad, x, targets, lambda: self._ablation(a, targets, scores), self._forward)
        )
        return CamBatch(logits.detach(), targets, maps)

    def _forward(self, x: Tensor) -> Tensor:
        """The model's logits (for methods that need the model and its input)."""
        with autocast(x.device, self.precision), _no_tf32(self.precision):
            out: Tensor = self.model(x)
        return out

    def _maps(self, batch: _Batch) -> dict[str, Tensor]:
        """Every method's ReLU'd float32 map, from what the registry says it needs."""
        return {m: _REGISTRY[m].compute(batch).clamp(min=0).float() for m in self.methods}

    def _net(self) -> torch.nn.Module:
        net = getattr(self.model, "net", None)
        return net if isinstance(net, torch.nn.Module) else self.model

    def _hooked(self, x: Tensor, targets: Tensor | None) -> CamBatch:
        """Any model: one forward pass in which a hook makes the target's output a leaf."""
        layer = self.layer
        assert layer is not None
        net = self._net()
        with (
            frozen(self.model),
            capture(net, layer) as cap,
            torch.enable_grad(),
            autocast(x.device, self.precision),
            _no_tf32(self.precision),
        ):
            try:
                logits = self.model(x)
            except RuntimeError as exc:
                if "in-place" in str(exc) or "inplace" in str(exc):
                    raise ConfigError(
                        f"target layer {layer.path!r}: an in-place operation overwrites its output "
                        "later in the forward pass (e.g. ReLU(inplace=True)); choose the module "
                        "before or after it"
                    ) from None
                raise
        if cap.calls != 1 or cap.leaf is None:
            raise ConfigError(
                f"target layer {layer.path!r} ran {cap.calls} times in the forward pass; "
                "it must run exactly once"
            )
        logits = logits.float()
        targets, chosen = _chosen(logits, targets)
        grad = None
        if self._needs_gradient:
            (raw_grad,) = torch.autograd.grad(chosen.sum(), cap.leaf, allow_unused=True)
            grad = None if raw_grad is None else to_grid(raw_grad, layer).double()
            if grad is None or not bool(grad.abs().sum() > 0):
                raise ConfigError(
                    f"target layer {layer.path!r}: the outputs send no gradient to it (all zero); "
                    "for a ViT classified by its class token, use a layer before the last "
                    "attention (e.g. blocks.<last>.norm1)"
                )
        raw_act = cap.leaf.detach()
        a = to_grid(raw_act, layer).double()
        scores = chosen.detach()
        batch = _Batch(
            a, grad, x, targets, lambda: self._ablation_hooked(x, raw_act, a, targets, scores), self._forward
        )
        return CamBatch(logits.detach(), targets, self._maps(batch))

    @torch.no_grad()
    def _ablation_hooked(self, x: Tensor, raw: Tensor, a: Tensor, targets: Tensor, scores: Tensor) -> Tensor:
        """Ablation-CAM on any model: the whole network reruns with one channel of the
        target's output zeroed per copy (as pytorch-grad-cam does), ``ablation_chunk``
        copies at a time."""
        layer = self.layer
        assert layer is not None
        b, k = a.shape[:2]
        channel_dim = 1 if layer.layout == "nchw" else raw.dim() - 1
        weights = torch.empty(b, k, dtype=torch.float64, device=a.device)
        net = self._net()
        for i in range(b):
            for start in range(0, k, self.ablation_chunk):
                channels = torch.arange(start, min(start + self.ablation_chunk, k), device=a.device)
                ablated = raw[i : i + 1].expand(len(channels), *raw.shape[1:]).clone()
                index: list[Any] = [slice(None)] * raw.dim()
                for j, c in enumerate(channels.tolist()):
                    index[0], index[channel_dim] = j, c
                    if layer.layout == "tokens":
                        index[1] = slice(layer.prefix_tokens, None)
                    ablated[tuple(index)] = 0.0

                def swap(mod: torch.nn.Module, inp: object, out: object, t: Tensor = ablated) -> object:
                    return replace_first(out, t)

                handle = net.get_submodule(layer.path).register_forward_hook(swap)
                try:
                    with autocast(x.device, self.precision):
                        out = self.model(x[i : i + 1].expand(len(channels), *x.shape[1:]))
                finally:
                    handle.remove()
                weights[i, channels] = (scores[i] - out[:, int(targets[i])].double()) / scores[i]
        return weights

    @torch.no_grad()
    def _ablation(self, a: Tensor, targets: Tensor, scores: Tensor) -> Tensor:
        b, k = a.shape[:2]
        weights = torch.empty(b, k, dtype=a.dtype, device=a.device)
        for i in range(b):
            for start in range(0, k, self.ablation_chunk):
                channels = torch.arange(start, min(start + self.ablation_chunk, k), device=a.device)
                ablated = a[i].expand(len(channels), -1, -1, -1).clone()
                ablated[torch.arange(len(channels), device=a.device), channels] = 0.0
                out = (
                    cast(Classifier, self.model)
                    .forward_head(ablated.to(scores.dtype))[:, int(targets[i])]
                    .double()
                )
                weights[i, channels] = (scores[i] - out) / scores[i]
        return weights


@dataclass
class _Batch:
    """What the engine gives the methods for one batch (:class:`~drift_gate.evidence.methods.Evidence`)."""

    activation: Tensor
    grad: Tensor | None
    inputs: Tensor
    targets: Tensor
    scores: Callable[[], Tensor]
    forward: Callable[[Tensor], Tensor]
    _ablated: Tensor | None = None

    @property
    def gradient(self) -> Tensor:
        assert self.grad is not None, "the engine computes the gradient when a method needs it"
        return self.grad

    def ablation_scores(self) -> Tensor:
        if self._ablated is None:
            self._ablated = self.scores()
        return self._ablated

    def logits(self, x: Tensor) -> Tensor:
        return self.forward(x)


def _chosen(logits: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor]:
    """The target classes (default: the predicted ones) and their logits."""
    if targets is None:
        targets = logits.argmax(1)
    targets = targets.to(logits.device)
    return targets, logits.gather(1, targets[:, None]).squeeze(1)


def upsample(maps: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear upsampling of ``(B, h, w)`` maps to ``size`` (half-pixel centres)."""
    size = (size, size) if isinstance(size, int) else size
    return torch.nn.functional.interpolate(
        maps[:, None].float(), size=size, mode="bilinear", align_corners=False
    )[:, 0]


def minmax(maps: Tensor) -> Tensor:
    """Per-map min-max normalisation to ``[0, 1]``; a constant map becomes all zeros.

    No epsilon is added to the range: raw CAM values can be of order 1e-4, where
    an absolute epsilon would distort the result. Constant (degenerate) maps are
    detected by :func:`drift_gate.metrics.is_degenerate`, not hidden here.
    """
    flat = maps.flatten(1)
    shape = (-1, *([1] * (maps.dim() - 1)))
    lo = flat.min(1).values.view(shape)
    span = flat.max(1).values.view(shape) - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, 1), 0)


@dataclass(frozen=True)
class CamResult:
    """CAMs for a whole data set, on the CPU.

    Attributes:
        logits: ``(N, classes)``.
        targets: ``(N,)`` the class each map explains.
        maps: method -> ``(N, h, w)`` float32 native-resolution maps (ReLU'd).
    """

    logits: np.ndarray
    targets: np.ndarray
    maps: dict[str, np.ndarray]


#: Numeric precisions for the forward pass (``bf16``: bfloat16 autocast).
PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """bfloat16 autocast on ``device`` for ``bf16``; a no-op for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _no_tf32(precision: str) -> Iterator[None]:
    """``fp32`` means float32: on Ampere and newer GPUs cuDNN would otherwise run
    convolutions in TF32 (a 10-bit mantissa), and CUDA maps would differ from CPU
    maps by about 1e-4 relative (measured on an H100). bf16 leaves the flags alone."""
    if precision != "fp32" or not torch.cuda.is_available():
        yield
        return
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def compute_cams(
    model: torch.nn.Module,
    dataset: Images,
    methods: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    target: str = "label",
    progress: bool = False,
    precision: str = "fp32",
) -> CamResult:
    """Runs the engine over a data set in batches of ``batch_size`` (bounded memory).

    Args:
        target: ``label`` explains each sample's true class (the study's choice,
            used with true-positive selection); ``predicted`` explains the
            model's own prediction.
    """
    from tqdm import tqdm

    if target not in ("label", "predicted"):
        raise ConfigError(f"unknown CAM target {target!r}; use 'label' or 'predicted'")
    engine = CamEngine(model.to(device), methods, precision=precision)
    logits: list[Tensor] = []
    targets: list[Tensor] = []
    maps: dict[str, list[Tensor]] = {m: [] for m in engine.methods}
    n = len(dataset)
    with tqdm(total=n, desc="CAMs", unit="img", disable=not progress, leave=False) as bar:
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
            out = engine(x.to(device), y if target == "label" else None)
            logits.append(out.logits.float().cpu())
            targets.append(out.targets.cpu())
            for m, t in out.maps.items():
                maps[m].append(t.float().cpu())
            bar.update(len(x))
    return CamResult(
        torch.cat(logits).numpy(),
        torch.cat(targets).numpy(),
        {m: torch.cat(v).numpy() for m, v in maps.items()},
    )


#: Coarser CAM grids than this (cells per side) get a warning in every report.
MIN_GRID = 5


def grid_warning(grid: Sequence[int], size: int) -> str | None:
    """A warning when the target layer's grid is too coarse to localise much."""
    h, w = int(grid[0]), int(grid[1])
    if min(h, w) >= MIN_GRID:
        return None
    return (
        f"the CAM target layer's grid is {h}x{w} at {size} px input (each cell {size // max(h, 1)} px): "
        f"coarser than {MIN_GRID}x{MIN_GRID}, the maps cannot show where within a cell the evidence "
        "lies; a larger input size or an earlier target layer gives a finer grid"
    )
