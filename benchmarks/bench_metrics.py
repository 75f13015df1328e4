"""Drift-metric throughput: 1,000 map pairs at 224x224, vs a per-pair NumPy/SciPy loop.

The reference computes the same metrics pair by pair with NumPy sorts and
SciPy's correlations (what one would write without vectorising); both run in
this process on the same maps. Usage: ``python benchmarks/bench_metrics.py``
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from _common import best_of, setup
from scipy.stats import pearsonr, spearmanr

from drift_gate.evidence.metrics import drift_metrics


def _reference(a: np.ndarray, b: np.ndarray, q: float = 0.2) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"iou": [], "correlation": [], "spearman": [], "displacement": []}
    h, w = a.shape[1:]
    rows, cols = np.mgrid[:h, :w]
    k = round(q * h * w)
    for x, y in zip(a, b, strict=True):
        x = (x - x.min()) / (x.max() - x.min())
        y = (y - y.min()) / (y.max() - y.min())
        mx = np.zeros(x.size, bool)
        mx[np.argsort(-x, axis=None, kind="stable")[:k]] = True
        my = np.zeros(y.size, bool)
        my[np.argsort(-y, axis=None, kind="stable")[:k]] = True
        out["iou"].append((mx & my).sum() / (mx | my).sum())
        out["correlation"].append(pearsonr(x.ravel(), y.ravel())[0])
        out["spearman"].append(spearmanr(x.ravel(), y.ravel())[0])
        cx = np.array([(x * rows).sum(), (x * cols).sum()]) / x.sum()
        cy = np.array([(y * rows).sum(), (y * cols).sum()]) / y.sum()
        out["displacement"].append(float(np.hypot(*(cx - cy)) / np.hypot(h, w)))
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--reference-pairs",
        type=int,
        default=100,
        help="pairs for the (slow) reference loop; its time is scaled to --pairs",
    )
    args = p.parse_args(argv)
    setup(args.threads)
    # Realistic maps: native 7x7 CAMs upsampled to the input size (many near-ties).
    native = torch.rand(2, args.pairs, 1, 7, 7)
    a, b = (
        torch.nn.functional.interpolate(m, size=(args.size, args.size), mode="bilinear", align_corners=False)[
            :, 0
        ]
        for m in native
    )
    t_core = best_of(lambda: drift_metrics(a, b), 3)
    t_full = best_of(lambda: drift_metrics(a, b, ranks=True), 1)
    core, full = drift_metrics(a, b), drift_metrics(a, b, ranks=True)
    n_ref = min(args.reference_pairs, args.pairs)
    start = time.perf_counter()
    ref = _reference(a[:n_ref].numpy().astype(np.float64), b[:n_ref].numpy().astype(np.float64))
    t_ref = (time.perf_counter() - start) * args.pairs / n_ref
    worst = max(float(np.max(np.abs(np.asarray(ref[k]) - full[k][:n_ref]))) for k in ref)
    print(f"drift metrics, {args.pairs} pairs at {args.size}x{args.size}, {args.threads} threads")
    print(f"  core metrics (O(P): displacement, peak, IoU, Pearson, concentration): {t_core:.3f}s")
    print(f"  all metrics incl. Spearman and Gini (sorts):                          {t_full:.3f}s")
    print(
        f"  reference per-pair NumPy/SciPy loop (IoU, Pearson, Spearman, centroid): {t_ref:.3f}s"
        f" (timed on {n_ref} pairs)"
    )
    print(
        f"  speed-up vs reference: core {t_ref / t_core:.1f}x, all {t_ref / t_full:.1f}x; "
        f"max |difference| {worst:.2e}"
    )
    assert len(core["iou"]) == args.pairs
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
