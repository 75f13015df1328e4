"""Training throughput: 1 process x 2 threads vs 2 concurrent processes x 1 thread each.

Would the demo train faster if two backbones (or two calibration runs) trained side by side,
each on one core, instead of one after the other on both? For each backbone, the synthetic
pretraining's step (its source size: 0.75 x the demo's input, output stride 16, channels-last,
batch 16, Adam) runs ``--steps`` times in one process with 2 threads (the reference), then in
two processes with 1 thread each at the same time. Reports images per second of each and
their ratio; each worker is a fresh process; model building and a warm-up step are untimed, and the
pair's timed steps start together.
Usage: ``python benchmarks/bench_train_workers.py [--backbones densenet201,resnet50v2] [--steps 8]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

SOURCE_SIZES = {"densenet201": 96, "resnet50v2": 96, "inception_v3": 120}
BATCH = 16


def _worker(name: str, threads: int, steps: int) -> None:
    """Runs the timed steps and prints their seconds (the parent reads the last line)."""
    import torch

    from drift_gate.models.backbones import build_classifier

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    size = SOURCE_SIZES.get(name, 96)
    model = build_classifier(name, 5, output_stride=16).train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (BATCH,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    print("ready", flush=True)
    sys.stdin.readline()  # the parent starts every worker's timed steps at once
    start = time.perf_counter()
    for _ in range(steps):
        step()
    print(f"{time.perf_counter() - start:.4f}", flush=True)


def _launch(name: str, threads: int, steps: int) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", name, "--threads", str(threads), "--steps", str(steps)]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _seconds(procs: list[subprocess.Popen[str]]) -> list[float]:
    """Waits until every worker has warmed up, starts them together, returns their seconds."""
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"a worker failed before its steps (exit {p.wait()})")
    out = []
    for p in procs:
        text, _ = p.communicate("go\n")
        if p.returncode != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode})")
        out.append(float(text.strip().splitlines()[-1]))
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="densenet201,resnet50v2,inception_v3")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.threads, args.steps)
        return 0
    print(f"pretraining steps ({args.steps} timed per worker, batch {BATCH}, stride 16, channels-last)")
    for name in args.backbones.split(","):
        (one,) = _seconds([_launch(name, 2, args.steps)])
        pair = _seconds([_launch(name, 1, args.steps), _launch(name, 1, args.steps)])
        ref = args.steps * BATCH / one
        both = 2 * args.steps * BATCH / max(pair)
        print(
            f"{name} ({SOURCE_SIZES.get(name, 96)} px): 1 x 2 threads {ref:5.1f} img/s; "
            f"2 x 1 thread {both:5.1f} img/s together ({pair[0]:.1f} s, {pair[1]:.1f} s): {both / ref:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
