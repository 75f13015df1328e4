"""Ground-truth finding masks: an image file, or boxes drawn on the image's own grid.

Public data sets give findings as masks (COVID-QU-Ex's infection masks: a file per
image) or as boxes (NIH ChestX-ray14's ``BBox_List_2017.csv``, RSNA Pneumonia's
``stage_2_train_labels.csv``: ``x, y, width, height`` in the image's pixels). A box
mask is kept as text, ``boxes:x,y,w,h;x,y,w,h`` (the audit set stores it, so it is
hashed and signed with the baseline and nothing is written into the data folder), and
drawn when it is needed: on a grid of the image's own size, read from its header,
then resized to the model's input exactly like the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drift_gate.data.paths import confined
from drift_gate.data.preprocess import DEFAULT, Preprocess, read_image, resize
from drift_gate.errors import DataError

__all__ = ["Boxes", "Mask", "box", "image_size", "mask_text", "parse_mask", "read_mask"]

_PREFIX = "boxes:"
_MAX_BOXES = 64
_MAX_COORD = 65535.0


def box(values: Iterable[str | float]) -> tuple[float, float, float, float]:
    """One box ``(x, y, width, height)`` from four numbers (or their text).

    Raises:
        ValueError: not four numbers.
    """
    numbers = [float(v) for v in values]
    if len(numbers) != 4:
        raise ValueError(f"a box is four numbers x, y, width, height, not {len(numbers)}")
    x, y, w, h = numbers
    return x, y, w, h


@dataclass(frozen=True)
class Boxes:
    """Finding boxes ``(x, y, width, height)`` in the pixels of the image they belong to."""

    boxes: tuple[tuple[float, float, float, float], ...]

    def __post_init__(self) -> None:
        if not self.boxes or len(self.boxes) > _MAX_BOXES:
            raise ValueError(f"between 1 and {_MAX_BOXES} boxes, not {len(self.boxes)}")
        for box in self.boxes:
            if len(box) != 4 or not all(math.isfinite(v) and 0 <= v <= _MAX_COORD for v in box):
                raise ValueError(f"a box is four finite numbers in [0, {_MAX_COORD:.0f}], not {box}")

    @property
    def text(self) -> str:
        """The form stored in a manifest's ``mask`` column and in ``audit.json``."""
        return _PREFIX + ";".join(",".join(f"{v:.2f}".rstrip("0").rstrip(".") for v in b) for b in self.boxes)

    def draw(self, height: int, width: int) -> np.ndarray:
        """A ``(height, width)`` float mask: 1 inside any box (clipped to the image)."""
        out = np.zeros((height, width), dtype=np.float32)
        for x, y, w, h in self.boxes:
            x0, y0 = min(math.floor(x), width), min(math.floor(y), height)
            x1, y1 = min(math.ceil(x + w), width), min(math.ceil(y + h), height)
            out[y0:y1, x0:x1] = 1.0
        return out


#: A sample's finding mask: a mask image's path, or boxes on the sample's own image.
Mask = Path | Boxes


def parse_mask(text: str, root: Path) -> Mask:
    """A manifest's ``mask`` value: ``boxes:…`` or a path relative to ``root``
    (confined to it, like the images).

    Raises:
        DataError: malformed boxes, or a path that leaves the root.
    """
    if text.startswith(_PREFIX):
        try:
            return Boxes(tuple(box(part.split(",")) for part in text[len(_PREFIX) :].split(";") if part))
        except ValueError as exc:
            raise DataError(f"mask {text[:80]!r}: not boxes 'boxes:x,y,w,h;…' ({exc})") from None
    return confined(Path(root) / text, root, "mask")


def mask_text(mask: Mask, root: Path) -> str:
    """How ``mask`` is written in ``audit.json``: boxes as text, a file relative to ``root``."""
    import os

    if isinstance(mask, Boxes):
        return mask.text
    return Path(os.path.relpath(mask, Path(root).resolve())).as_posix()


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image, from its header (no pixels decoded)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".dcm", ".dicom"):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        from PIL import Image

        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception as exc:  # Pillow and pydicom raise many types for bad headers
        raise DataError(f"{path}: cannot read the image size from its header ({exc})") from None


def read_mask(mask: Mask, image: Path, size: int, preprocess: Preprocess = DEFAULT) -> np.ndarray:
    """A ``(size, size)`` boolean mask, resized like ``image`` (by the same policy) and
    thresholded at one half."""
    if isinstance(mask, Boxes):
        h, w = image_size(image)
        grid = torch.from_numpy(mask.draw(h, w))[None, None]
        return resize(grid, size, preprocess.resize)[0, 0].numpy() >= 0.5
    return read_image(mask, size, preprocess)[0].numpy() >= 0.5
