"""Peak memory of the gate as the audit set grows: 100 vs 1,000 audit images.

The gate streams the audit set in batches (images are not cached, full-size maps
exist one block at a time), so its peak RSS should barely depend on the audit
set's size. Each gate runs in a fresh child process that reports its own peak
RSS (``ru_maxrss``); the baselines are made beforehand in other processes.
Backbone: ResNet50V2 with random weights at 128 px (what the gate holds does
not depend on the weights). Usage: ``python benchmarks/bench_gate_memory.py``
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCH, SIZE = "resnet50v2", 128
THRESHOLDS = """
[gate]
methods = ["layercam", "gradcam++"]
samples = "all"
min_samples = 2
[drift]
iou.min = 0.0
"""


def _prepare(root: Path, n_max: int) -> None:
    """Phantoms with ``n_max / 5`` test images per class, and a random-weight checkpoint."""
    import torch

    from drift_gate.data.datasets import load_dataset
    from drift_gate.data.phantom_set import generate_dataset
    from drift_gate.data.phantoms import CLASSES
    from drift_gate.models.backbones import build_classifier
    from drift_gate.models.checkpoint import CheckpointMeta, save_checkpoint

    per_class = n_max // len(CLASSES)
    generate_dataset(root / "data", per_class + 10, seed=0, size=SIZE, progress=True)
    manifest = root / "data" / "manifest.csv"
    with manifest.open() as fh:
        rows = list(csv.DictReader(fh))
    seen: dict[str, int] = {}
    for r in rows:  # 5 train, 5 val per class, the rest test
        i = seen[r["label"]] = seen.get(r["label"], 0) + 1
        r["split"] = "train" if i <= 5 else "val" if i <= 10 else "test"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    data = load_dataset(root / "data")
    torch.manual_seed(0)
    meta = CheckpointMeta(
        arch=ARCH,
        classes=data.classes,
        input_size=SIZE,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        phase="tl",
        seed=0,
        data_manifest_sha256=data.manifest_sha256,
    )
    save_checkpoint(root / "model.pt", build_classifier(ARCH, len(data.classes)), meta)
    (root / "thresholds.toml").write_text(THRESHOLDS)


def _cli(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, __file__, "--child", str(root), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, check=True)


def _child(root: Path, argv: list[str]) -> None:
    from drift_gate.cli import main

    code = main(argv)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"code": code, "peak_rss_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000", help="audit set sizes (multiples of 5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child is not None:
        _child(args.child, rest)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"preparing {max(sizes)} audit images ({ARCH}, {SIZE} px)...", file=sys.stderr)
        _prepare(root, max(sizes))
        common = ["--data", str(root / "data"), "--thresholds", str(root / "thresholds.toml")]
        common += ["--device", "cpu", "--no-progress", "--threads", str(args.threads)]
        rows = []
        for n in sizes:
            base = root / f"baselines-{n}"
            _cli(
                root,
                "baseline",
                "--reference",
                str(root / "model.pt"),
                "--out",
                str(base / ARCH),
                "--per-class",
                str(n // 5),
                *common,
            )
            start = time.perf_counter()
            out = _cli(
                root,
                "gate",
                "--candidate",
                str(root / "model.pt"),
                "--baselines",
                str(base),
                "--reports",
                str(root / f"reports-{n}"),
                *common,
            )
            seconds = time.perf_counter() - start
            res = json.loads(out.stdout.strip().splitlines()[-1])
            gate = json.loads((root / f"reports-{n}" / "gate.json").read_text())
            assert gate["candidates"][0]["n_audit"] == n, gate["candidates"][0]["n_audit"]
            rows.append((n, res["peak_rss_mib"], seconds))
            print(f"audit images {n:>5}: gate peak RSS {res['peak_rss_mib']:7.0f} MiB  ({seconds:.0f} s)")
    (n0, r0, _), (n1, r1, _) = rows[0], rows[-1]
    print(
        f"peak RSS ratio {n1} vs {n0} audit images: {r1 / r0:.2f}x "
        f"(+{(r1 - r0) / (n1 - n0) * 100:.1f} MiB per 100 images)"
    )


if __name__ == "__main__":
    main()
