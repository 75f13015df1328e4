"""Drift across fine-tuning epochs (``train --keep-epochs``): every epoch vs TL and vs the last."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_gate._io import atomic_write_bytes, atomic_write_text
from drift_gate.data.datasets import DataSet
from drift_gate.evidence.cam import upsample
from drift_gate.evidence.metrics import drift_metrics
from drift_gate.evidence.registry import CORE_METRICS
from drift_gate.gating.baseline import create_baseline
from drift_gate.gating.gate import run_gate
from drift_gate.gating.thresholds import Thresholds
from drift_gate.studies.study import png_bytes

__all__ = ["TrackResult", "epoch_checkpoints", "run_track"]


@dataclass
class TrackResult:
    """One row per fine-tuning epoch."""

    arch: str
    rows: list[dict[str, Any]] = field(default_factory=list)


def epoch_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``ft.epoch<k>.pt`` files of a checkpoint folder, by epoch."""
    found = []
    for p in folder.glob("ft.epoch*.pt"):
        m = re.fullmatch(r"ft\.epoch(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def run_track(
    folder: Path,
    data: DataSet,
    thresholds: Thresholds,
    out: Path,
    *,
    per_class: int = 10,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    baselines: Path | None = None,
    progress: bool = False,
) -> TrackResult:
    """Drift of every FT epoch's maps against the TL maps (as ``gate`` computes it) and
    against the previous epoch; writes ``track.json``, ``track.md`` and ``track.png``.

    Args:
        baselines: a baselines root holding ``<arch>`` made from this TL checkpoint;
            by default one is made in ``out/baselines``.
    """
    from drift_gate.errors import DataError
    from drift_gate.models.checkpoint import load_checkpoint

    epochs = epoch_checkpoints(folder)
    if not epochs:
        raise DataError(
            f"{folder}: no ft.epoch<k>.pt checkpoints; train with `drift-gate train --keep-epochs`"
        )
    _, meta = load_checkpoint(folder / "tl.pt")
    if baselines is None:
        baselines = out / "baselines"
        create_baseline(
            folder / "tl.pt",
            data,
            baselines / meta.arch,
            thresholds.methods,
            per_class=per_class,
            device=device,
            batch_size=batch_size,
            progress=progress,
            paired=thresholds,
        )
    result = TrackResult(meta.arch)
    previous: tuple[dict[str, np.ndarray], np.ndarray] | None = None
    for epoch, ckpt in epochs:
        c, art = run_gate(
            ckpt,
            baselines=baselines,
            thresholds=thresholds,
            data_root=data.root,
            device=device,
            batch_size=batch_size,
            progress=progress,
            use_onnx=False,
        )
        row: dict[str, Any] = {
            "epoch": epoch,
            "checkpoint": str(ckpt),
            "auc": c.auc,
            "n": c.n_selected,
            "vs_tl": {},
        }
        row["consistency"] = {}
        for method in thresholds.methods:
            row["vs_tl"][method] = {m: c.summaries[method][m]["overall"]["mean"] for m in CORE_METRICS}
            row["consistency"][method] = c.consistency[method]["candidate"]["overall"]["mean"]
        selected = np.array(c.selected, dtype=bool)
        if previous is not None:
            row["vs_previous"] = _vs_previous(previous, selected, art, thresholds.methods)
        previous = ({m: art["candidate"][m] for m in thresholds.methods}, selected)
        result.rows.append(row)
    _write_track(result, thresholds.methods, out)
    return result


def _vs_previous(
    previous: tuple[dict[str, np.ndarray], np.ndarray],
    selected: np.ndarray,
    art: dict[str, Any],
    methods: tuple[str, ...],
) -> dict[str, dict[str, float | None]]:
    """Each method's mean drift from the previous epoch's maps, over the samples selected
    for both epochs (true positives of TL and of both epochs)."""
    maps_prev, selected_prev = previous
    both = selected & selected_prev
    out = {}
    for method in methods:
        v = drift_metrics(
            upsample(torch.from_numpy(maps_prev[method]), art["size"]),
            upsample(torch.from_numpy(art["candidate"][method]), art["size"]),
        )
        ok = both & ~v["degenerate"]
        out[method] = {m: float(np.mean(v[m][ok])) if ok.any() else None for m in CORE_METRICS}
    return out


def _write_track(result: TrackResult, methods: tuple[str, ...], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in result.rows]
    fig, axes = plt.subplots(1, len(CORE_METRICS), figsize=(4.8 * len(CORE_METRICS), 3.4))
    fig.subplots_adjust(wspace=0.55)
    for ax, metric in zip(axes, CORE_METRICS, strict=True):
        ax.set_xticks(epochs)
        for method in methods:
            ax.plot(
                epochs, [r["vs_tl"][method][metric] for r in result.rows], marker="o", label=f"{method} vs TL"
            )
            if len(result.rows) > 1:
                ax.plot(
                    epochs[1:],
                    [r["vs_previous"][method][metric] for r in result.rows[1:]],
                    marker="x",
                    ls="--",
                    label=f"{method} vs previous",
                )
        twin = ax.twinx()
        twin.plot(epochs, [r["auc"] for r in result.rows], color="black", lw=1, ls=":", label="AUC")
        twin.set_ylabel("macro AUC (dotted)", fontsize=8)
        twin.tick_params(labelsize=7)
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("FT epoch")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result.arch}: evidence drift per fine-tuning epoch (true positives, mean)", y=1.04)
    cols = [f"{m} {k}" for m in methods for k in CORE_METRICS] + [f"{m} consistency" for m in methods]
    lines = ["| epoch | AUC | n | " + " | ".join(cols) + " |"]
    lines.append("|---|---|---|" + "---|" * len(cols))
    for r in result.rows:
        vals = [r["vs_tl"][m][k] for m in methods for k in CORE_METRICS]
        vals += [r["consistency"][m] for m in methods]
        lines.append(
            f"| {r['epoch']} | {r['auc']:.4f} | {r['n']} | "
            + " | ".join("—" if v is None else f"{v:.4f}" for v in vals)
            + " |"
        )
    atomic_write_text(
        out / "track.json", json.dumps({"arch": result.arch, "rows": result.rows}, indent=2) + "\n"
    )
    atomic_write_text(out / "track.md", "\n".join(lines) + "\n")
    atomic_write_bytes(out / "track.png", png_bytes(fig, dpi=100))
