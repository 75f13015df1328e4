"""Training throughput: 1 process x 2 threads vs 2 concurrent processes x 1 thread each.

Would the demo train faster if two backbones (or two calibration runs) trained side by side,
each on one core, instead of one after the other on both? For each backbone, the synthetic
pretraining's step as the demo profile sets it (``profiles.toml``: its source size, output
stride and so memory layout, batch size, learning rate; the multi-label source task's loss)
runs ``--steps`` times in one process with 2 threads (the reference), then in two processes
with 1 thread each at the same time. Reports images per second of each and their ratio; each
worker is a fresh process, model building and a warm-up step are untimed, and the pair's timed
steps start together.
Usage: ``python benchmarks/bench_train_workers.py [--backbones densenet201,resnet50v2] [--steps 8]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import setup

from drift_gate.data.phantoms import SOURCE_LABELS
from drift_gate.models.backbones import build_classifier
from drift_gate.training.loops import to_training_layout, training_batch, training_layout
from drift_gate.training.profiles import Profile, load_profile

ROOT = Path(__file__).resolve().parents[1]


def _profile() -> Profile:
    return load_profile(ROOT / "profiles.toml", "demo")


def _source_size(name: str) -> int:
    profile = _profile()
    return profile.pretrain.size_for(profile.input_size_for(name))


def _worker(name: str, threads: int, steps: int) -> None:
    """Runs the timed steps and prints their seconds (the parent reads the last line)."""
    setup(threads)
    profile, device = _profile(), torch.device("cpu")
    stride = profile.output_stride_for(name)
    layout = training_layout(stride)
    model = to_training_layout(
        build_classifier(name, len(SOURCE_LABELS), output_stride=stride), device, layout
    )
    opt = torch.optim.Adam(model.parameters(), lr=profile.pretrain.lr)
    size, batch = _source_size(name), profile.batch_size
    x = training_batch(torch.rand(batch, 3, size, size), device, layout)
    y = (torch.rand(batch, len(SOURCE_LABELS)) < 0.3).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
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
    batch = _profile().batch_size
    print(f"the demo's pretraining step ({args.steps} timed per worker, batch {batch})")
    for name in args.backbones.split(","):
        (one,) = _seconds([_launch(name, 2, args.steps)])
        pair = _seconds([_launch(name, 1, args.steps), _launch(name, 1, args.steps)])
        ref = args.steps * batch / one
        both = 2 * args.steps * batch / max(pair)
        print(
            f"{name} ({_source_size(name)} px): 1 x 2 threads {ref:5.1f} img/s; "
            f"2 x 1 thread {both:5.1f} img/s together ({pair[0]:.1f} s, {pair[1]:.1f} s): {both / ref:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
