"""Fine-tuning under the allocator's two policies (drift_gate._memory), in one process.

The same training steps (a copy of one randomly initialised model, the same batches,
Adam) run alternately under ``AUDIT`` (a fixed 128 KiB mmap threshold, what the gate
uses to keep its peak memory flat; until 2026-11-30 every command ran under it) and
``TRAIN`` (32 MiB), twice each; reports the best of each, the kernel (system) CPU time
and the page faults, and checks that both end with identical weights.
Usage: ``python benchmarks/bench_alloc.py [--backbone densenet201] [--size 128]``
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time

import torch
from _common import setup

from drift_gate._memory import AUDIT, TRAIN, allocator_policy
from drift_gate.models.backbones import build_classifier


def _run(
    model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, float, int, dict]:
    net = copy.deepcopy(model).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    return t1 - t0, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt, net.state_dict()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="densenet201")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    setup(args.threads)
    if not allocator_policy(TRAIN):
        print("not glibc: the allocator policy has no effect here")
        return 0
    model = build_classifier(args.backbone, 5)
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.rand(args.batch, 3, args.size, args.size, generator=g),
            torch.randint(0, 5, (args.batch,), generator=g),
        )
        for _ in range(args.steps)
    ]
    _run(model, batches[:2])  # warm-up
    best: dict[str, tuple[float, float, int]] = {}
    weights = {}
    for name, policy in (("AUDIT", AUDIT), ("TRAIN", TRAIN)) * 2:
        allocator_policy(policy)
        wall, sys_s, faults, state = _run(model, batches)
        if name not in best or wall < best[name][0]:
            best[name] = (wall, sys_s, faults)
        weights[name] = state
    images = args.steps * args.batch
    print(
        f"{args.backbone}, {args.size} px, batch {args.batch}, {args.steps} Adam steps, "
        f"{args.threads} threads"
    )
    for name, (wall, sys_s, faults) in best.items():
        print(f"  {name}: {images / wall:6.2f} img/s, kernel CPU {sys_s:5.1f} s, {faults:,} page faults")
    same = all(torch.equal(weights["AUDIT"][k], weights["TRAIN"][k]) for k in weights["AUDIT"])
    print(f"TRAIN vs AUDIT: {best['AUDIT'][0] / best['TRAIN'][0]:.2f}x faster; identical weights: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
