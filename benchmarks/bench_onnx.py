"""The gate's evaluation pass: ONNX Runtime vs torch eager, per backbone, in one run.

Both compute the logits of the same images in batches (what the gate needs for
AUC and true-positive selection); ONNX Runtime runs the model exported by
``drift-gate export``'s code path, on the CPU with the same thread count as torch.
Usage: ``python benchmarks/bench_onnx.py [--size 224]``
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from _common import best_of, setup

from drift_gate.models.backbones import build_classifier
from drift_gate.models.export import _export_bytes, parity


def _measure(arch: str, args: argparse.Namespace) -> None:
    import onnxruntime as ort

    model = build_classifier(arch, 5).eval()
    x = torch.randn(args.images, 3, args.size, args.size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        _export_bytes(model, args.size, {}), options, providers=["CPUExecutionProvider"]
    )
    batches = [x[i : i + args.batch] for i in range(0, len(x), args.batch)]

    def eager() -> np.ndarray:
        with torch.no_grad():
            return torch.cat([model(b) for b in batches]).numpy()

    def onnx() -> np.ndarray:
        return np.concatenate([session.run(None, {"image": b.numpy()})[0] for b in batches])

    p = parity(eager(), onnx(), "CPUExecutionProvider")
    t_torch = best_of(eager, args.repeats)
    t_ort = best_of(onnx, args.repeats)
    n = args.images
    print(
        f"{arch:<14}{n / t_torch:>9.1f}/s{n / t_ort:>9.1f}/s{t_torch / t_ort:>9.2f}x{p.max_rel_diff:>12.1e}",
        flush=True,
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--backbones", nargs="+", default=["densenet201", "resnet50v2", "inception_v3"])
    args = p.parse_args(argv)
    setup(args.threads)
    print(
        f"evaluation pass, CPU, {args.threads} threads, {args.images} images in batches of {args.batch}, "
        f"{args.size}px, random weights"
    )
    print(f"{'backbone':<14}{'torch':>11}{'onnxrt':>11}{'ort/torch':>10}{'parity':>12}")
    for arch in args.backbones:
        _measure(arch, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
