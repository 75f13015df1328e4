"""The study's protocol on your data (``drift-gate study``) and drift across epochs
(``drift-gate track``).

**study**: for each backbone, a baseline of the TL checkpoint's maps on the test
images (every configured method, the gradient-free Ablation-CAM included), then
the FT checkpoint gated against it. That gives, per backbone x method, TL and FT
AUC and the four drift metrics on the true positives of both checkpoints, with
bootstrap 95 % CIs, overall and per class, and the inter-sample spread. The
backbones are ranked by stability under each method (mean rank over the four
metrics), and rankings are compared between methods: the paper's headline
finding was that they can reverse. The paper's qualitative statements are
printed as checks on the data at hand, not asserted.

**track**: with ``train --keep-epochs``, fine-tuning keeps ``ft.epoch<k>.pt``;
``track`` gates every epoch against the TL baseline (exactly what ``gate``
computes for that checkpoint) and against the previous epoch, and plots each
metric's trajectory with the AUC on the same epoch axis.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_gate._io import atomic_write_bytes, atomic_write_text
from drift_gate.data.datasets import DataSet
from drift_gate.evidence.registry import CORE_METRICS, METRICS, Direction
from drift_gate.gating.baseline import create_baseline
from drift_gate.gating.gate import CandidateResult, run_gate
from drift_gate.gating.thresholds import Thresholds

__all__ = ["StudyResult", "run_study", "study_markdown"]


#: The study's four metrics and whether higher means more stable.


def png_bytes(fig: Any, dpi: int = 80) -> bytes:
    """A matplotlib figure as PNG bytes; closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plain_rules(methods: tuple[str, ...], min_samples: int = 1) -> Thresholds:
    """Rules that only select true positives: the study measures, it does not judge."""
    return Thresholds(methods=methods, samples="true-positive", min_samples=min_samples, statistic="mean")


@dataclass
class StudyResult:
    """Per backbone x method rows, rankings and the printed checks."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rankings: dict[str, list[str]] = field(default_factory=dict)
    reversals: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    per_class: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)


def _stability_ranking(rows: list[dict[str, Any]], method: str) -> list[str]:
    """Backbones from most to least stable under ``method``: mean rank over the four
    metrics (higher IoU and correlation, lower displacement and |concentration change|)."""
    mine = [r for r in rows if r["method"] == method and r["n"] > 0]
    ranks: dict[str, list[int]] = {r["backbone"]: [] for r in mine}
    for metric in CORE_METRICS:
        higher = METRICS[metric].direction is Direction.HIGHER

        def instability(r: dict[str, Any], metric: str = metric, higher: bool = higher) -> float:
            value = float(r[metric]["mean"])
            return -value if higher else abs(value)

        for i, r in enumerate(sorted(mine, key=instability)):
            ranks[r["backbone"]].append(i + 1)
    return sorted(ranks, key=lambda b: (float(np.mean(ranks[b])), b))


def _row(arch: str, method: str, c: CandidateResult, tl_test: float, ft_test: float) -> dict[str, Any]:
    s = c.summaries[method]
    out: dict[str, Any] = {
        "backbone": arch,
        "method": method,
        "tl_auc": c.reference_auc,
        "ft_auc": c.auc,
        "tl_test_auc": tl_test,
        "ft_test_auc": ft_test,
        "n": s["iou"]["overall"]["n"],
        "n_audit": c.n_audit,
    }
    for metric in CORE_METRICS:
        o = s[metric]["overall"]
        out[metric] = {k: o[k] for k in ("mean", "ci_low", "ci_high", "std", "n_degenerate")}
    # The reference-based check the paper lacked, when the data has finding masks.
    for metric in ("reference_pointing_game", "pointing_game", "reference_mask_energy", "mask_energy"):
        if metric in s:
            out[metric] = s[metric]["overall"]["mean"]
    k = c.consistency.get(method)
    if k:
        out["consistency"] = {side: k[side]["overall"]["mean"] for side in ("reference", "candidate")}
    return out


def _checks(result: StudyResult, histories: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    checks = []
    converged = {
        f"{arch}/{phase}": (max(h[-3:]) - min(h[-3:]) <= 0.02 if len(h) >= 2 else None)
        for arch, phases in histories.items()
        for phase, h in phases.items()
    }
    checks.append(
        {
            "check": "AUC converged for every backbone (last 3 epochs' validation AUC within 0.02)",
            "holds": all(v for v in converged.values() if v is not None),
            "detail": converged,
        }
    )
    measured = [r for r in result.rows if r["n"] > 0]
    low_disp = all(r["displacement"]["mean"] < 0.1 for r in measured)
    iou_drift = all(r["iou"]["mean"] < 0.7 for r in measured)
    checks.append(
        {
            "check": "displacement stays low (< 0.1 of the diagonal) while IoU drifts (< 0.7)",
            "holds": bool(measured) and low_disp and iou_drift,
            "detail": {
                f"{r['backbone']}/{r['method']}": [r["displacement"]["mean"], r["iou"]["mean"]]
                for r in measured
            },
        }
    )
    checks.append(
        {
            "check": "the stability ranking of the backbones reverses between methods",
            "holds": bool(result.reversals),
            "detail": result.reversals,
        }
    )
    return checks


def run_study(
    checkpoints: dict[str, Path],
    data: DataSet,
    methods: tuple[str, ...],
    out: Path,
    *,
    per_class: int = 1000,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    progress: bool = False,
) -> StudyResult:
    """Runs the protocol for every ``arch -> checkpoint folder`` (with ``tl.pt`` and ``ft.pt``)
    and writes ``study.json``, ``study.md``, ``study.png`` and ``study.html`` into ``out``."""
    result = StudyResult()
    histories: dict[str, dict[str, list[float]]] = {}
    for arch, folder in checkpoints.items():
        base = out / "baselines" / arch
        create_baseline(
            folder / "tl.pt",
            data,
            base,
            methods,
            per_class=per_class,
            device=device,
            batch_size=batch_size,
            progress=progress,
        )
        c, _ = run_gate(
            folder / "ft.pt",
            baselines=out / "baselines",
            thresholds=_plain_rules(methods),
            data_root=data.root,
            device=device,
            batch_size=batch_size,
            progress=progress,
            use_onnx=False,
        )
        metrics = {p: json.loads((folder / f"{p}.metrics.json").read_text()) for p in ("tl", "ft")}
        histories[arch] = {p: metrics[p].get("val_auc_history", []) for p in ("tl", "ft")}
        for method in methods:
            result.rows.append(
                _row(arch, method, c, metrics["tl"]["test"]["auc_macro"], metrics["ft"]["test"]["auc_macro"])
            )
            result.per_class.setdefault(arch, {})[method] = {
                metric: {g: v for g, v in c.summaries[method][metric].items() if g != "overall"}
                for metric in CORE_METRICS
            }
    for method in methods:
        result.rankings[method] = _stability_ranking(result.rows, method)
    for a, b in itertools.combinations(methods, 2):
        ra, rb = result.rankings[a], result.rankings[b]
        flipped = [
            (x, y)
            for x, y in itertools.combinations(ra, 2)
            if x in rb and y in rb and rb.index(x) > rb.index(y)
        ]
        if flipped:
            result.reversals.append({"methods": [a, b], "pairs": flipped})
    result.checks = _checks(result, histories)
    _write_study(result, out)
    return result


def _fmt(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "—"
    ci = "" if s["ci_low"] is None else f" [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
    return f"{s['mean']:.3f}{ci}"


def _opt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def study_markdown(result: StudyResult) -> str:
    out = [
        "| backbone | method | TL AUC | FT AUC | n (TP) | "
        + " | ".join(METRICS[m].heading for m in CORE_METRICS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(CORE_METRICS),
    ]
    for r in result.rows:
        out.append(
            f"| {r['backbone']} | {r['method']} | {r['tl_auc']:.3f} | {r['ft_auc']:.3f} | {r['n']} | "
            + " | ".join(_fmt(r[m]) for m in CORE_METRICS)
            + " |"
        )
    out += ["", "AUC on the study's test images; metrics: mean [bootstrap 95 % CI] over true positives.", ""]
    out += ["| method | stability ranking (most stable first) |", "|---|---|"]
    out += [f"| {m} | {' > '.join(r)} |" for m, r in result.rankings.items()]
    out += [
        "",
        "| inter-sample spread (std) | " + " | ".join(CORE_METRICS) + " |",
        "|---|" + "---|" * len(CORE_METRICS),
    ]
    for r in result.rows:
        out.append(
            f"| {r['backbone']} / {r['method']} | "
            + " | ".join("—" if r[m]["std"] is None else f"{r[m]['std']:.3f}" for m in CORE_METRICS)
            + " |"
        )
    cons = [r for r in result.rows if r.get("consistency")]
    if cons:
        out += [
            "",
            "| intra-class consistency (mean pairwise soft IoU of one class's maps) | TL | FT |",
            "|---|---|---|",
        ]
        out += [
            f"| {r['backbone']} / {r['method']} | {_opt(r['consistency']['reference'])} | "
            f"{_opt(r['consistency']['candidate'])} |"
            for r in cons
        ]
    loc = [r for r in result.rows if r.get("mask_energy") is not None]
    if loc:
        out += [
            "",
            "| against the ground-truth masks | pointing game TL → FT | mask energy TL → FT |",
            "|---|---|---|",
        ]

        def f(x: float | None) -> str:
            return "—" if x is None else f"{x:.3f}"

        out += [
            f"| {r['backbone']} / {r['method']} | {f(r.get('reference_pointing_game'))} → "
            f"{f(r.get('pointing_game'))} | {f(r.get('reference_mask_energy'))} → {f(r.get('mask_energy'))} |"
            for r in loc
        ]
    out += ["", "Checks (on this data; not assertions):", ""]
    out += [_check_line(c) for c in result.checks]
    return "\n".join(out) + "\n"


def _check_line(c: dict[str, Any]) -> str:
    """One of the study's checks as a list item, with where it does not hold (or, for a
    method comparison that holds, the pairs it rests on)."""
    line = f"- {'yes' if c['holds'] else 'no'}: {c['check']}"
    detail = c["detail"]
    if not c["holds"] and isinstance(detail, dict):
        if all(isinstance(v, (bool, type(None))) for v in detail.values()):
            misses = [k for k, v in detail.items() if v is False]
        else:
            misses = [k for k, (disp, iou) in detail.items() if not (disp < 0.1 and iou < 0.7)]
        if misses:
            line += f" (not for {', '.join(misses)})"
    elif c["holds"] and isinstance(detail, list):
        line += "".join(f" ({' vs '.join(d['methods'])}: {d['pairs']})" for d in detail)
    return line


def _study_plot(result: StudyResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CORE_METRICS), figsize=(4.2 * len(CORE_METRICS), 3.6))
    labels = [f"{r['backbone']}\n{r['method']}" for r in result.rows]
    for ax, metric in zip(axes, CORE_METRICS, strict=True):
        means = [np.nan if r[metric]["mean"] is None else r[metric]["mean"] for r in result.rows]
        lo = [
            0 if r[metric]["ci_low"] is None else r[metric]["mean"] - r[metric]["ci_low"] for r in result.rows
        ]
        hi = [
            0 if r[metric]["ci_high"] is None else r[metric]["ci_high"] - r[metric]["mean"]
            for r in result.rows
        ]
        ax.bar(range(len(means)), means, yerr=[lo, hi], capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(means)), labels, rotation=90, fontsize=7)
        ax.set_title(metric.replace("_", " "))
        ax.axhline(0, color="black", lw=0.5)
    fig.suptitle("TL -> FT evidence drift (true positives, mean with bootstrap 95 % CI)", y=1.04)
    return png_bytes(fig, dpi=100)


def _html(title: str, markdown_text: str, images: list[bytes]) -> str:
    """A self-contained page: the Markdown's tables as HTML tables, its other lines as
    paragraphs, the plots inline."""
    parts: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if table:
            parts.append("<table>" + "".join(table) + "</table>")
            table.clear()

    for line in markdown_text.splitlines():
        if line.startswith("|"):
            if set(line) <= {"|", "-"}:
                continue
            cells = "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
            table.append(f"<tr>{cells}</tr>")
        else:
            flush()
            if line.strip():
                parts.append(f"<p>{html.escape(line)}</p>")
    flush()
    parts += [
        f"<p><img alt='plot' src='data:image/png;base64,{base64.b64encode(i).decode()}'></p>" for i in images
    ]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{border:1px solid #ccc;padding:2px 6px}"
        "table{border-collapse:collapse;margin:1em 0}img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n"
    )


def _write_study(result: StudyResult, out: Path) -> None:
    md = study_markdown(result)
    plot = _study_plot(result)
    doc = {
        "rows": result.rows,
        "rankings": result.rankings,
        "reversals": result.reversals,
        "checks": result.checks,
        "per_class": result.per_class,
    }
    atomic_write_text(out / "study.json", json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    atomic_write_text(out / "study.md", md)
    atomic_write_bytes(out / "study.png", plot)
    atomic_write_text(out / "study.html", _html("drift-gate study", md, [plot]))
