"""A fine-tuning step of each demo backbone: output stride and memory layout, in one process.

For each backbone at its demo input size, the same Adam step (one batch, a fresh copy of
one randomly initialised model) is timed four ways, interleaved and best of ``--repeats``:
the backbone's own output stride (32) in the channels-first layout (the reference, what the
training loops use today: ``drift_gate.training.loops.TRAINING_LAYOUT``), in the
channels-last layout, and at output stride 16 (twice the CAM grid) in both layouts. Reports
each as a ratio of the reference and the CAM grid each gives.
Usage: ``python benchmarks/bench_train_step.py [--backbones densenet201,resnet50v2,inception_v3]``
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

import torch
from _common import best_of, setup

from drift_gate.models.backbones import build_classifier

SIZES = {"densenet201": 128, "resnet50v2": 128, "inception_v3": 160, "mobilenet_v3_small": 224}
WAYS = (
    ("stride 32", None, False),
    ("stride 32 NHWC", None, True),
    ("stride 16", 16, False),
    ("stride 16 NHWC", 16, True),
)


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="densenet201,resnet50v2,inception_v3")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    setup(args.threads)
    print(f"one Adam step, batch {args.batch}, {args.threads} threads, best of {args.repeats}")
    for name in args.backbones.split(","):
        size = SIZES.get(name, 128)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch, 3, size, size, generator=g)
        y = torch.randint(0, 5, (args.batch,), generator=g)
        steps: dict[str, Callable[[], None]] = {}
        grids: dict[str, tuple[int, ...]] = {}
        for label, stride, nhwc in WAYS:
            torch.manual_seed(0)
            model = build_classifier(name, 5, output_stride=stride).train()
            xb = x
            if nhwc:
                model = model.to(memory_format=torch.channels_last)
                xb = x.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            steps[label] = functools.partial(_step, model, opt, xb, y)
            with torch.no_grad():
                grids[label] = tuple(model.body(xb[:1]).shape[-2:])
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits all four
            for label, step in steps.items():
                best[label] = min(best[label], best_of(step, 1))
        ref = best["stride 32"]
        print(f"{name} ({size} px): reference {ref:.2f} s/step ({args.batch / ref:.1f} img/s)")
        for label, seconds in best.items():
            h, w = grids[label]
            print(f"  {label:15s} {h}x{w} grid  {seconds / ref:.2f}x the reference's time")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
