"""CAM throughput: our engine vs pytorch-grad-cam vs a plain forward pass, same run.

For each backbone, on one batch of random images with random weights:

* ``forward``: ``model(x)`` under ``torch.no_grad`` — the floor;
* ``engine``: LayerCAM + Grad-CAM++ together from one forward (drift-gate);
* ``reference``: pytorch-grad-cam as documented, one CAM object per method.

Reports images/s and the ratios engine/reference and engine/forward.
Usage: ``python benchmarks/bench_cam.py [--size 224] [--batch 16] [--threads 2]``
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import best_of, setup

from drift_gate.evidence.cam import CamEngine
from drift_gate.models.backbones import build_classifier


def _measure(arch: str, args: argparse.Namespace, device: torch.device) -> None:
    from pytorch_grad_cam import GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = build_classifier(arch, 5).to(device).eval()
    size = max(args.size, 75)
    x = torch.randn(args.batch, 3, size, size, device=device)
    targets = torch.randint(0, 5, (args.batch,), device=device)
    engine = CamEngine(model, ["layercam", "gradcam++"], precision=args.precision)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def ours() -> None:
        engine(x, targets)

    def reference() -> None:
        tg = [ClassifierOutputTarget(int(t)) for t in targets]
        for cls in (LayerCAM, GradCAMPlusPlus):
            with cls(model=model, target_layers=[model.target_layer]) as cam:
                cam(input_tensor=x, targets=tg)

    t_fwd = best_of(forward, args.repeats)
    t_eng = best_of(ours, args.repeats)
    t_ref = best_of(reference, args.repeats)
    n = args.batch
    print(
        f"{arch:<14}{n / t_fwd:>8.1f}/s{n / t_eng:>8.1f}/s{n / t_ref:>9.1f}/s"
        f"{t_ref / t_eng:>8.2f}x{t_fwd / t_eng:>8.2f}x",
        flush=True,
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--backbones", nargs="+", default=["densenet201", "resnet50v2", "inception_v3"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the engine's forward pass")
    args = p.parse_args(argv)
    setup(args.threads)
    device = torch.device(args.device)
    print(
        f"CAM throughput, {args.device}, {args.threads} threads, batch {args.batch}, "
        f"{args.size}px, random weights, engine {args.precision}"
    )
    print(f"{'backbone':<14}{'forward':>10}{'engine':>10}{'reference':>11}{'eng/ref':>9}{'eng/fwd':>9}")
    for arch in args.backbones:
        _measure(arch, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
