"""Do a profile's maps find the findings? Pointing game and mask energy of the TL and FT
checkpoints on the audit images with a finding, per CAM target layer and input size.

    python tools/localisation_sweep.py --profile demo            # after `nox -s train`
    python tools/localisation_sweep.py --backbone densenet201 --sizes 128,256

Per backbone, phase (TL, FT), input size and target layer (the checkpoint's own: its last
block or its profile's ``target_layer``; and the earlier layers listed in ``EARLIER``),
over the first ``--per-class`` test images of every disease class that the checkpoint
classifies correctly: the pointing game (share whose map maximum lies in the finding mask)
and the mask energy (share of the map's mass in the mask), with the latter's ratio to the
mask's area (1x: no better than a uniform map). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from drift_gate.data.datasets import ImageDataset, Sample, load_dataset
from drift_gate.data.masks import read_mask
from drift_gate.evidence.cam import CamEngine, upsample
from drift_gate.evidence.metrics import localisation
from drift_gate.inputs import profile_data, profile_from
from drift_gate.models.checkpoint import load_checkpoint
from drift_gate.models.layers import find_layer

#: Earlier target layers per backbone (module paths in drift-gate's classifiers): twice the
#: last block's grid (8x8 at the demo's sizes), and four times for ResNet50V2's stage 2.
EARLIER = {
    "densenet201": ("body.0.denseblock3",),
    "resnet50v2": ("body.1.2", "body.1.1"),
    "inception_v3": ("body.14",),
    "tiny": (),
}


def _rows(arch: str, ckpt: Path, samples: list[Sample], size: int, per_layer: tuple[str, ...]) -> list[str]:
    model, meta = load_checkpoint(ckpt)
    ds = ImageDataset(samples, size, meta.mean, meta.std, cache=True, preprocess=meta.preprocess)
    masks = np.stack(
        [read_mask(s.mask, s.path, size, meta.preprocess) for s in samples if s.mask is not None]
    )
    out = []
    for path in ("", *per_layer):
        layer = find_layer(model, path, size, meta.preprocess.channels) if path else None
        engine = CamEngine(model, ("layercam", "gradcam++"), layer=layer)
        maps: dict[str, list[torch.Tensor]] = {m: [] for m in engine.methods}
        right = []
        for x, y in torch.utils.data.DataLoader(ds, batch_size=16):
            batch = engine(x, y)
            right.append((batch.logits.argmax(1) == y).numpy())
            for m, t in batch.maps.items():
                maps[m].append(t)
        ok = np.concatenate(right)
        grid = "x".join(map(str, next(iter(maps.values()))[0].shape[-2:]))
        cells = []
        for parts in maps.values():
            loc = localisation(upsample(torch.cat(parts).double(), size).numpy(), masks)
            pointing, energy = np.nanmean(loc["pointing_game"][ok]), np.nanmean(loc["mask_energy"][ok])
            cells.append(f"{pointing:.2f} / {energy:.3f} ({energy / masks[ok].mean():.1f}x)")
        own = model.target.path if model.target is not None else "last block"
        name = path or own
        out.append(
            f"| {arch} | {ckpt.stem.upper()} | {size} | {name} ({grid}) | {ok.sum()}/{len(ok)} | "
            + " | ".join(cells)
            + " |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--profiles", default="profiles.toml")
    parser.add_argument("--backbone", action="append", default=[])
    parser.add_argument("--sizes", default="", help="input sizes, comma-separated (default: the profile's)")
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    profile = profile_from(args.profile, args.profiles)
    data = load_dataset(profile_data(profile))
    samples, seen = [], dict[int, int]()
    for s in data.split("test"):
        if s.mask is not None and s.label != 0 and seen.get(s.label, 0) < args.per_class:
            seen[s.label] = seen.get(s.label, 0) + 1
            samples.append(s)
    cells = "LayerCAM pointing / energy (×area) | Grad-CAM++"
    print(f"| backbone | phase | px | target layer (grid) | right | {cells} |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.backbone or profile.backbones:
        sizes = [int(x) for x in args.sizes.split(",") if x] or [profile.input_size_for(arch)]
        for phase in ("tl", "ft"):
            for size in sizes:
                ckpt = Path(profile.out) / arch / f"{phase}.pt"
                for row in _rows(arch, ckpt, samples, size, EARLIER.get(arch, ())):
                    print(row, flush=True)


if __name__ == "__main__":
    main()
