"""Gate throughput with 1 process (2 threads) vs 2 torchrun processes (1 thread each).

Both gate the same ResNet50V2 candidate (random weights, 128 px) on the same audit
images, as whole commands (process start and model loading included), in this
run. On a 2-core machine this measures what sharding by batch costs or gains
against intra-op threading; with more cores or GPUs, processes scale further.
Usage: ``python benchmarks/bench_gate_ddp.py [--images 400]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_gate_memory import ARCH, _prepare


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=400, help="audit images (a multiple of 5)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"preparing {args.images} audit images ({ARCH}, random weights)...", file=sys.stderr)
        _prepare(root, args.images)
        common = [
            "--data",
            str(root / "data"),
            "--thresholds",
            str(root / "thresholds.toml"),
            "--device",
            "cpu",
        ]
        common += ["--no-progress"]
        py = [sys.executable, "-m", "drift_gate"]
        subprocess.run(
            [
                *py,
                "baseline",
                "--reference",
                str(root / "model.pt"),
                "--out",
                str(root / "b" / ARCH),
                "--per-class",
                str(args.images // 5),
                *common,
            ],
            check=True,
            capture_output=True,
        )
        gate = ["gate", "--candidate", str(root / "model.pt"), "--baselines", str(root / "b"), *common]
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        single = [*py, *gate, "--reports", str(root / "r1"), "--threads", "2"]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        double = [*torchrun, "-m", "drift_gate", *gate, "--reports", str(root / "r2"), "--threads", "1"]
        t1 = min(_timed(single, env) for _ in range(args.repeats))
        t2 = min(_timed(double, {**env, "OMP_NUM_THREADS": "1"}) for _ in range(args.repeats))
        a = json.loads((root / "r1" / "gate.json").read_text())["candidates"][0]
        b = json.loads((root / "r2" / "gate.json").read_text())["candidates"][0]
        same = a["verdict"] == b["verdict"] and a["auc"] == b["auc"]
    n = args.images
    print(f"gate of {n} audit images, {ARCH}, whole command, best of {args.repeats}")
    print(f"1 process x 2 threads : {t1:6.1f} s  ({n / t1:5.1f} img/s)")
    print(f"2 processes x 1 thread: {t2:6.1f} s  ({n / t2:5.1f} img/s)")
    print(f"speed-up 2 vs 1 processes: {t1 / t2:.2f}x; same verdict and AUC: {same}")


if __name__ == "__main__":
    main()
