"""The HTML report's figures, drawn without a plotting library.

Metric distributions are SVG histograms built as text (every label escaped, never
interpreted: a file name such as ``$x$`` stays those three characters); CAM overlays are
PNGs composed with Pillow from the image and the two maps. Both take a few milliseconds,
where a matplotlib figure took about a second, and neither depends on fonts.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Histogram", "histograms_svg", "jet", "overlay_png"]


@dataclass(frozen=True)
class Histogram:
    """One panel: ``values`` binned, a black line at ``mean`` and a dashed line per bound
    (``(value, failed)``: red when the rule failed, green otherwise)."""

    title: str
    values: Sequence[float]
    mean: float | None = None
    bounds: Sequence[tuple[float, bool]] = ()


_W, _H, _PAD, _BINS = 240, 150, 24, 20


def _panel(h: Histogram, x0: float) -> list[str]:
    vals = np.asarray([v for v in h.values if math.isfinite(v)], dtype=float)
    marks = [v for v in (h.mean, *(b for b, _ in h.bounds)) if v is not None and math.isfinite(v)]
    lo = min([*vals.tolist(), *marks], default=0.0)
    hi = max([*vals.tolist(), *marks], default=1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    counts, _ = np.histogram(vals, bins=_BINS, range=(lo, hi))
    top = max(int(counts.max(initial=0)), 1)
    plot_w, plot_h = _W - 2 * _PAD, _H - 2 * _PAD

    def x(v: float) -> float:
        return x0 + _PAD + (v - lo) / (hi - lo) * plot_w

    title = html.escape(h.title)
    out = [
        f"<text x='{x0 + _W / 2:.1f}' y='14' text-anchor='middle' font-size='11'>{title}</text>",
        f"<line x1='{x0 + _PAD}' y1='{_H - _PAD}' x2='{x0 + _W - _PAD}' y2='{_H - _PAD}' stroke='#888'/>",
    ]
    bar = plot_w / _BINS
    for i, n in enumerate(counts.tolist()):
        if n:
            height = n / top * plot_h
            out.append(
                f"<rect x='{x0 + _PAD + i * bar:.1f}' y='{_H - _PAD - height:.1f}' width='{bar - 0.5:.1f}' "
                f"height='{height:.1f}' fill='#4a78b0'/>"
            )
    if h.mean is not None and math.isfinite(h.mean):
        out.append(
            f"<line x1='{x(h.mean):.1f}' y1='{_PAD}' x2='{x(h.mean):.1f}' y2='{_H - _PAD}' stroke='#000'/>"
        )
    for value, failed in h.bounds:
        if math.isfinite(value):
            colour = "#c0392b" if failed else "#27ae60"
            out.append(
                f"<line x1='{x(value):.1f}' y1='{_PAD}' x2='{x(value):.1f}' y2='{_H - _PAD}' "
                f"stroke='{colour}' stroke-dasharray='4 3'/>"
            )
    for v, anchor in ((lo, "start"), (hi, "end")):
        out.append(f"<text x='{x(v):.1f}' y='{_H - 8}' text-anchor='{anchor}' font-size='9'>{v:.3g}</text>")
    out.append(f"<text x='{x0 + 4}' y='{_PAD + 4}' font-size='9'>{top}</text>")
    return out


def histograms_svg(panels: Sequence[Histogram]) -> str:
    """The panels side by side, as one standalone SVG document."""
    width = _W * max(len(panels), 1)
    body = [part for i, p in enumerate(panels) for part in _panel(p, i * _W)]
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{_H}' "
        f"viewBox='0 0 {width} {_H}' font-family='sans-serif'>"
        f"<rect width='{width}' height='{_H}' fill='#fff'/>{''.join(body)}</svg>"
    )


def jet(values: np.ndarray) -> np.ndarray:
    """Values in ``[0, 1]`` as RGB ``(..., 3)`` floats of the jet colour map (piecewise
    linear: blue, cyan, yellow, red)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.concatenate([r, g, b], axis=-1)


def overlay_png(
    rows: Sequence[Sequence[np.ndarray | None]], base: Sequence[np.ndarray], alpha: float = 0.45
) -> bytes:
    """One PNG of ``len(rows)`` rows: each row shows its grey image ``base[i]`` (``(H, W)``
    in ``[0, 1]``) once per entry, with the entry's map (``(H, W)`` in ``[0, 1]``, or
    ``None`` for the bare image) blended over it in jet colours; 4 px gaps."""
    from PIL import Image

    if not rows:
        raise ValueError("no rows to draw")
    h, w = base[0].shape
    cols = max(len(r) for r in rows)
    gap = 4
    canvas = np.full((len(rows) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, (row, image) in enumerate(zip(rows, base, strict=True)):
        grey = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1)
        for j, overlay in enumerate(row):
            rgb = grey if overlay is None else (1 - alpha) * grey + alpha * jet(overlay)
            y, x = i * (h + gap), j * (w + gap)
            canvas[y : y + h, x : x + w] = np.round(rgb * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
