"""CAM target layers of any ``nn.Module``: finding one, capturing it, and its grid.

A target layer is named by its module path (``features.denseblock4``,
``stages.3``, ``blocks.11.norm1``) or found with ``auto``: one traced dry run
records every module's output in the order the modules finish, and the last one
that is spatial, runs once, is not overwritten in place afterwards, and receives
a non-zero gradient from the outputs is chosen (the last spatial activation
before global pooling, for CNNs; for ViTs the last token sequence whose patch
tokens still reach the output, ``blocks.<last>.norm1`` when only the class token
is classified).

Activations come in three layouts, each turned into a ``(B, C, h, w)`` grid:

* ``nchw``: convolutional feature maps;
* ``nhwc``: channels last (Swin, some timm stages);
* ``tokens``: ``(B, N, C)`` sequences; the class and register tokens in front are
  dropped and the remaining ``h * w`` patch tokens laid out row by row.

During the CAM pass (:func:`capture`) a forward hook replaces the target's output
by a detached leaf that requires grad; with every parameter frozen, nothing before
the target builds a graph, and the gradient of the targets is taken with respect
to that leaf alone.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from drift_gate.errors import ConfigError

__all__ = ["TargetLayer", "capture", "find_layer", "frozen", "is_module_path", "replace_first", "to_grid"]

_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def is_module_path(text: object) -> bool:
    """Whether ``text`` reads as a module path (``body.0.denseblock3``): dot-separated
    names and indices, at most 200 characters."""
    return isinstance(text, str) and len(text) <= 200 and _MODULE_PATH.fullmatch(text) is not None


@dataclass(frozen=True)
class TargetLayer:
    """A located target layer.

    Attributes:
        path: module path inside the model.
        layout: ``nchw``, ``nhwc`` or ``tokens``.
        prefix_tokens: tokens before the patch tokens (``tokens`` layout only).
        grid: ``(h, w)`` cells of the CAM grid at the spec's input size.
    """

    path: str
    layout: str
    prefix_tokens: int
    grid: tuple[int, int]

    def describe(self) -> str:
        extra = f", {self.prefix_tokens} prefix token(s) dropped" if self.prefix_tokens else ""
        return f"{self.path} ({self.layout}, {self.grid[0]}x{self.grid[1]} grid{extra})"


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    return None


def replace_first(out: Any, t: Tensor) -> Any:
    if isinstance(out, Tensor):
        return t
    return type(out)([t, *out[1:]]) if isinstance(out, list) else (t, *out[1:])


def _layout(
    shape: tuple[int, ...], want: str, prefix_hint: int | None, batch: int | None = None
) -> tuple[str, int, tuple[int, int]] | None:
    """``(layout, prefix tokens, grid)`` of an activation shape, or None if not spatial.
    Inputs are square, so a grid is square; with ``batch``, the first dimension must be
    the batch (windowed attention folds windows into it)."""
    if batch is not None and (not shape or shape[0] != batch):
        return None
    if len(shape) == 4:
        _, a, b, c = shape
        if want == "nhwc" or (want == "auto" and b != c and a == b):
            layout, grid = "nhwc", (a, b)
        elif want in ("auto", "nchw"):
            layout, grid = "nchw", (b, c)
        else:
            return None
        return (layout, 0, grid) if min(grid) >= 2 and grid[0] == grid[1] else None
    if len(shape) == 3 and want in ("auto", "tokens"):
        n = shape[1]
        candidates = [prefix_hint] if prefix_hint is not None else range(0, 17)
        for k in candidates:
            side = math.isqrt(max(n - k, 0))
            if side >= 2 and side * side == n - k:
                return "tokens", k, (side, side)
    return None


def to_grid(t: Tensor, layer: TargetLayer) -> Tensor:
    """An activation (or its gradient) in the layer's layout as ``(B, C, h, w)``."""
    if layer.layout == "nchw":
        return t
    if layer.layout == "nhwc":
        return t.permute(0, 3, 1, 2)
    h, w = layer.grid
    return t[:, layer.prefix_tokens :, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Every parameter's ``requires_grad`` off for the block, restored after."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def _nearest(model: nn.Module, path: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    if not close:  # fall back to the last top-level modules
        close = [n for n in names if "." not in n][-5:]
    return ", ".join(close)


def _module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ConfigError(
            f"target layer {path!r} is not a module of this model; nearest module paths: "
            f"{_nearest(model, path)}"
        ) from None


def _prefix_hint(model: nn.Module) -> int | None:
    k = getattr(model, "num_prefix_tokens", None)
    return k if isinstance(k, int) and not isinstance(k, bool) else None


@dataclass
class _Seen:
    name: str
    out: Tensor
    version: int
    kind: str
    calls: int = 1


def _dry_run(model: nn.Module, x: Tensor) -> tuple[list[_Seen], Tensor]:
    """Every module's first tensor output, in the order the modules finish."""
    seen: dict[str, _Seen] = {}
    order: list[str] = []
    handles = []

    def hook(name: str) -> Any:
        def fn(mod: nn.Module, inp: Any, out: Any) -> None:
            t = _first_tensor(out)
            if t is None:
                return
            if name in seen:
                seen[name].calls += 1
                return
            seen[name] = _Seen(name, t, t._version, type(mod).__name__)
            order.append(name)

        return fn

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.enable_grad():
            logits = model(x.requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    return [seen[n] for n in order], logits


def find_layer(model: nn.Module, path: str, size: int, channels: int, layout: str = "auto") -> TargetLayer:
    """Locates ``path`` (or ``auto``) with one dry run on a random ``size`` x ``size`` input.

    Raises:
        ConfigError: the path names no module (the nearest paths are listed), its
            hook never fires, it runs more than once per forward pass, its output
            is not spatial, or an in-place operation overwrites it afterwards; with
            ``auto``, when no module qualifies.
    """
    model.eval()
    if path != "auto":
        _module(model, path)
    gen = torch.Generator().manual_seed(0)
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    x = torch.randn(2, channels, size, size, generator=gen).to(device, dtype)
    with frozen(model):
        try:
            seen, logits = _dry_run(model, x)
        except RuntimeError as exc:
            raise ConfigError(
                f"the model cannot run on a {channels}x{size}x{size} input ({str(exc).splitlines()[0]})"
            ) from exc
        hint = _prefix_hint(model)
        if path != "auto":
            return _check_named(seen, path, layout, hint)
        return _auto(seen, logits, layout, hint)


def _check_named(seen: list[_Seen], path: str, layout: str, hint: int | None) -> TargetLayer:
    entry = next((s for s in seen if s.name == path), None)
    if entry is None:
        raise ConfigError(
            f"target layer {path!r} never ran in a forward pass (its hook did not fire); "
            "choose a module the model's forward() calls"
        )
    if entry.calls > 1:
        raise ConfigError(
            f"target layer {path!r} runs {entry.calls} times per forward pass (a shared module); "
            "choose a module that runs once"
        )
    if entry.out._version != entry.version:
        raise ConfigError(
            f"target layer {path!r}: an in-place operation overwrites its output later in the "
            "forward pass (e.g. ReLU(inplace=True)); choose the module before it or after it"
        )
    found = _layout(tuple(entry.out.shape), layout, hint)
    if found is None:
        raise ConfigError(
            f"target layer {path!r} gives {tuple(entry.out.shape)}, not a spatial activation "
            "((B, C, h, w), (B, h, w, C) or (B, tokens, C) with at least a 2x2 grid)"
        )
    return TargetLayer(path, *found)


def _auto(seen: list[_Seen], logits: Any, layout: str, hint: int | None) -> TargetLayer:
    """The last qualifying activation that receives a gradient. In a transformer (token
    sequences present) only token sequences of the residual width qualify, normalisation
    layers first, so that attention matrices and q/k/v or MLP projections are not chosen."""
    out = logits if isinstance(logits, Tensor) else getattr(logits, "logits", _first_tensor(logits))
    batch = int(out.shape[0]) if isinstance(out, Tensor) else None
    found_all = [(s, _layout(tuple(s.out.shape), layout, hint, batch)) for s in seen]
    usable = [
        (s, f)
        for s, f in found_all
        if f is not None and s.calls == 1 and s.out._version == s.version and s.out.requires_grad
    ]
    if usable:  # the family of the last spatial activation decides: tokens, or grids
        tokens = usable[-1][1][0] == "tokens"
        usable = [(s, f) for s, f in usable if (f[0] == "tokens") == tokens]
        if tokens:
            width = Counter(int(s.out.shape[-1]) for s, _ in usable).most_common(1)[0][0]
            usable = [(s, f) for s, f in usable if int(s.out.shape[-1]) == width]
    # modules that pass a tensor on unchanged (a container's last child, Identity) share it:
    # the nearest enclosing module of its producer names it, else the producer itself
    unique: list[tuple[_Seen, tuple[str, int, tuple[int, int]]]] = []
    for s, f in usable:
        same = next((i for i, (u, _) in enumerate(unique) if u.out is s.out), None)
        if same is None:
            unique.append((s, f))
        elif unique[same][0].name.startswith(s.name + ".") and s.name.count(".") >= 1:
            unique[same] = (s, f)
    if not isinstance(out, Tensor) or not unique:
        raise ConfigError("target_layer = 'auto' found no spatial activation; name the layer")
    grads = torch.autograd.grad(out.float().sum(), [s.out for s, _ in unique], allow_unused=True)
    ranked = list(zip(unique, grads, strict=True))[::-1]
    if unique[0][1][0] == "tokens":  # a block's pre-attention norm before its q/k/v projections
        ranked.sort(key=lambda c: "norm" not in c[0][0].kind.lower())
    for (s, found), g in ranked:
        if g is None:
            continue
        layer = TargetLayer(s.name, *found)
        if bool(to_grid(g, layer).abs().sum() > 0):
            return layer
    raise ConfigError("target_layer = 'auto': no spatial activation receives a gradient; name the layer")


class _Capture:
    """The leaf that replaced the target layer's output in the last forward pass."""

    leaf: Tensor | None = None
    calls: int = 0


@contextlib.contextmanager
def capture(model: nn.Module, layer: TargetLayer) -> Iterator[_Capture]:
    """Hooks the target layer: its output becomes a detached leaf that requires grad."""
    cap = _Capture()

    def hook(mod: nn.Module, inp: Any, out: Any) -> Any:
        t = _first_tensor(out)
        cap.calls += 1
        if t is None:
            return None
        leaf = t.detach().requires_grad_(True)
        cap.leaf = leaf
        return replace_first(out, leaf)

    handle = _module(model, layer.path).register_forward_hook(hook)
    try:
        yield cap
    finally:
        handle.remove()
