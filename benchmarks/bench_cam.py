"""CAM throughput: our engine vs pytorch-grad-cam vs a plain forward pass, same run.

For each backbone (drift-gate's own, and models it did not train, named as in a model
spec: ``torchvision:resnet18``, ``timm:convnext_nano``, ``timm:vit_tiny_patch16_224``,
with the target layer ``auto`` finds), on one batch of random images with random weights:

* ``forward``: ``model(x)`` under ``torch.no_grad`` — the floor, run with the engine's
  numeric settings (for ``fp32`` on a GPU: TF32 off, as the engine runs; a forward with
  cuDNN's default TF32 convolutions is not the same computation and was what made the
  engine look 0.49-0.70x of a forward on an H100);
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
from torch import nn

from drift_gate.evidence.cam import CamEngine, _no_tf32, autocast
from drift_gate.models.adapters import ForeignModel, build_model
from drift_gate.models.backbones import build_classifier
from drift_gate.models.layers import find_layer, to_grid
from drift_gate.models.spec import ModelSpec


def _models(arch: str, size: int, device: torch.device) -> tuple[nn.Module, nn.Module, nn.Module, object]:
    """(what the engine runs, what pytorch-grad-cam runs, its target module, its reshape)."""
    if ":" not in arch:
        model = build_classifier(arch, 5).to(device).eval()
        return model, model, model.target_layer, None
    spec = ModelSpec(arch=arch, classes=tuple("abcde"), input_size=size)
    net = build_model(spec).to(device).eval()
    layer = find_layer(net, "auto", size, 3)
    reshape = None
    if layer.layout != "nchw":

        def reshape(t: torch.Tensor) -> torch.Tensor:
            return to_grid(t, layer)

    return ForeignModel(net, spec, layer), net, net.get_submodule(layer.path), reshape


def _measure(arch: str, args: argparse.Namespace, device: torch.device) -> None:
    from pytorch_grad_cam import GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    size = max(args.size, 75)
    model, net, target, reshape = _models(arch, size, device)
    x = torch.randn(args.batch, 3, size, size, device=device)
    targets = torch.randint(0, 5, (args.batch,), device=device)
    engine = CamEngine(model, ["layercam", "gradcam++"], precision=args.precision)

    def forward() -> None:
        with torch.no_grad(), autocast(device, args.precision), _no_tf32(args.precision):
            model(x)

    def ours() -> None:
        engine(x, targets)

    def reference() -> None:
        tg = [ClassifierOutputTarget(int(t)) for t in targets]
        for cls in (LayerCAM, GradCAMPlusPlus):
            with cls(model=net, target_layers=[target], reshape_transform=reshape) as cam:
                cam(input_tensor=x, targets=tg)

    t_fwd = best_of(forward, args.repeats)
    t_eng = best_of(ours, args.repeats)
    t_ref = best_of(reference, args.repeats)
    n = args.batch
    print(
        f"{arch:<28}{n / t_fwd:>8.1f}/s{n / t_eng:>8.1f}/s{n / t_ref:>9.1f}/s"
        f"{t_ref / t_eng:>8.2f}x{t_fwd / t_eng:>8.2f}x",
        flush=True,
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--backbones",
        nargs="+",
        default=[
            "densenet201",
            "resnet50v2",
            "inception_v3",
            "torchvision:resnet18",
            "timm:convnext_nano",
            "timm:vit_tiny_patch16_224",
        ],
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the engine's forward pass")
    args = p.parse_args(argv)
    setup(args.threads)
    device = torch.device(args.device)
    print(
        f"CAM throughput, {args.device}, {args.threads} threads, batch {args.batch}, "
        f"{args.size}px, random weights, engine {args.precision}"
    )
    print(f"{'backbone':<28}{'forward':>10}{'engine':>10}{'reference':>11}{'eng/ref':>9}{'eng/fwd':>9}")
    for arch in args.backbones:
        _measure(arch, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
