"""TL phase: head training on features computed once vs the naive frozen-backbone loop.

Both train the same linear head for the same number of epochs on the same
phantom images with a frozen body; the naive loop recomputes the body's forward
pass every epoch. Usage: ``python benchmarks/bench_tl.py [--backbone resnet50v2]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import setup
from torch import nn
from torch.utils.data import DataLoader

from drift_gate.data.datasets import ImageDataset, load_dataset
from drift_gate.data.phantom_set import generate_dataset
from drift_gate.models.backbones import build_classifier, get_backbone
from drift_gate.training.loops import extract_features, train_head
from drift_gate.training.profiles import PhaseConfig


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50v2")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    setup(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp), args.per_class, seed=0, size=args.size, progress=False)
        data = load_dataset(Path(tmp))
        mean, std = get_backbone(args.backbone).imagenet_norm
        train = ImageDataset(data.split("train"), args.size, mean, std)
        val = ImageDataset(data.split("val"), args.size, mean, std)
        for ds in (train, val):  # decode once so neither variant pays for PNG decoding
            for i in range(len(ds)):
                ds[i]
        model = build_classifier(args.backbone, len(data.classes)).eval()
        cfg = PhaseConfig(epochs=args.epochs, lr=1e-3)
        device = torch.device("cpu")

        start = time.perf_counter()
        ftrain = extract_features(model, train, device, args.batch)
        fval = extract_features(model, val, device, args.batch)
        train_head(model, ftrain, fval, cfg, batch_size=args.batch, seed=0, classes=data.classes)
        t_cached = time.perf_counter() - start

        naive = build_classifier(args.backbone, len(data.classes)).eval()
        for prm in naive.body.parameters():
            prm.requires_grad_(False)
        opt = torch.optim.Adam(naive.head.parameters(), lr=1e-3)
        start = time.perf_counter()
        for epoch in range(args.epochs):
            loader = DataLoader(
                train, batch_size=args.batch, shuffle=True, generator=torch.Generator().manual_seed(epoch)
            )
            for x, y in loader:
                opt.zero_grad()
                nn.functional.cross_entropy(naive(x), y).backward()
                opt.step()
            with torch.no_grad():
                for x, _ in DataLoader(val, batch_size=args.batch):
                    naive(x)
        t_naive = time.perf_counter() - start
    print(
        f"TL phase, {args.backbone} at {args.size}px, {len(train)} train + {len(val)} val images, "
        f"{args.epochs} epochs, {args.threads} threads"
    )
    print(f"  naive frozen-backbone loop: {t_naive:.1f}s")
    print(f"  cached features:            {t_cached:.1f}s")
    print(f"  speed-up: {t_naive / t_cached:.1f}x (grows with the number of epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
