"""How much a planted cue carries a model's predictions: its accuracy on a cue's biased
phantoms against the same phantoms with only the cue redrawn in another class's form.

The phantoms are rendered, so the counterfactual is exact: the same patient, findings and
noise (:func:`~drift_gate.data.phantoms.render_phantom` without a cue), then the cue drawn
at a level other than the image's own (:func:`~drift_gate.data.shortcut.add_cue`). A model
that reads the class off the cue loses accuracy; one that reads the findings does not. The
difference, in points of accuracy, is what the issue's "the shortcut carries at least 10
points" measures (``drift-gate validate`` records it for every cue control).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_gate._io import atomic_write_bytes, atomic_write_text
from drift_gate.data.classes import CLASSES
from drift_gate.data.datasets import DataSet, ImageDataset
from drift_gate.data.phantom_set import parallel_map
from drift_gate.data.phantoms import render_phantom
from drift_gate.data.shortcut import STRIP_HEIGHTS, add_cue, cue_level
from drift_gate.errors import ConfigError
from drift_gate.evidence.classification import predicted_class

__all__ = ["cue_reliance", "swapped_cue_set", "swapped_level"]

#: Salt of the draw that picks a swapped cue's level (independent of every cue's own draw).
_SWAP_SALT = 8_181


def swapped_level(level: int, seed: int, index: int) -> int:
    """Another class's form than ``level``, drawn uniformly from the other four."""
    shift = 1 + int(np.random.default_rng([seed, index, _SWAP_SALT]).integers(len(STRIP_HEIGHTS) - 1))
    return (level + shift) % len(STRIP_HEIGHTS)


def _label_and_index(sample_id: str) -> tuple[str, int]:
    """``images/<label>/<label>-<i>.png`` (a phantom's id) -> the label and the render index."""
    parts = sample_id.split("/")
    label = parts[-2] if len(parts) >= 2 else ""
    stem = Path(sample_id).stem
    if label not in CLASSES or not stem.startswith(f"{label}-") or not stem.rsplit("-", 1)[1].isdigit():
        raise ConfigError(f"{sample_id!r} is not a generated phantom's id (images/<class>/<class>-<n>.png)")
    return label, CLASSES.index(label) * 1_000_000 + int(stem.rsplit("-", 1)[1])


def _render(job: tuple[str, str, int, int, int, float, float, bool]) -> bytes:
    """One phantom's PNG with its cue at its own level (``swap`` False) or another's."""
    from drift_gate.data.phantom_set import _png

    cue, label, index, seed, size, shortcut, occult, swap = job
    ph = render_phantom(label, seed, index, size, None, occult)
    level = cue_level(cue, label, seed, index, shortcut)
    return _png(add_cue(cue, ph.image, ph.lungs, swapped_level(level, seed, index) if swap else level))


def swapped_cue_set(
    audit: DataSet,
    out: Path,
    *,
    cue: str,
    seed: int,
    shortcut: float,
    occult: float,
    size: int,
    split: str = "test",
    swap: bool = True,
    progress: bool = False,
) -> DataSet:
    """The ``split`` images of ``audit`` (biased phantoms made with these settings) with the
    cue redrawn in another class's form, written to ``out`` (once; a stamp records the
    settings and every image's hash, and is written last). ``swap=False`` renders the images as they are,
    which must reproduce ``audit``'s pixels (the test of this function's exactness).

    Raises:
        ConfigError: ``audit`` is not a data set of generated phantoms.
    """
    out = Path(out)
    samples = audit.split(split)
    if not samples:
        raise ConfigError(f"{audit.root}: no {split!r} images to swap the {cue} of")
    jobs = [(cue, *_label_and_index(s.id), seed, size, shortcut, occult, swap) for s in samples]
    ids = hashlib.sha256("\n".join(s.id for s in samples).encode()).hexdigest()
    settings = {"cue": cue, "seed": seed, "shortcut": shortcut, "occult": occult, "size": size}
    want = {**settings, "swap": swap, "ids": ids}
    stamp = out / "swapped.json"  # written last: the folder is complete when it names these settings
    try:
        done = json.loads(stamp.read_text())
        digests = done["sha256"] if {k: done.get(k) for k in want} == want else None
    except (OSError, ValueError, KeyError, TypeError):
        digests = None
    if not isinstance(digests, dict) or set(digests) != {s.id for s in samples}:
        pngs = parallel_map(_render, jobs, None, progress, f"{cue} swapped" if swap else cue)
        digests = {}
        for s, data in zip(samples, pngs, strict=True):
            atomic_write_bytes(out / s.id, data)
            digests[s.id] = hashlib.sha256(data).hexdigest()
        atomic_write_text(stamp, json.dumps({**want, "sha256": digests}, indent=1) + "\n")
    return replace(
        audit,
        root=out,
        samples=tuple(replace(s, path=out / s.id, sha256=str(digests[s.id]), mask=None) for s in samples),
    )


@torch.inference_mode()
def _logits(model: torch.nn.Module, meta: Any, data: DataSet, split: str, batch_size: int) -> np.ndarray:
    """``model``'s logits on ``split`` of ``data``, in order."""
    from drift_gate.models.inference import predict

    samples = data.split(split)
    ds = ImageDataset(samples, meta.input_size, meta.mean, meta.std, cache=False, preprocess=meta.preprocess)
    return predict(model, ds, torch.device("cpu"), batch_size)[0]


def cue_reliance(
    checkpoint: Path, original: DataSet, swapped: DataSet, *, split: str = "test", batch_size: int = 16
) -> dict[str, float]:
    """Accuracy and mean true-class score of ``checkpoint`` on ``original`` and on
    ``swapped`` (:func:`swapped_cue_set`), and the drop: ``points`` of accuracy and
    ``score_drop``. A model that does not read the cue loses about nothing."""
    from drift_gate.models.checkpoint import load_checkpoint

    if [s.id for s in original.split(split)] != [s.id for s in swapped.split(split)]:
        raise ConfigError(f"{swapped.root}: not the {split!r} images of {original.root} with the cue swapped")
    model, meta = load_checkpoint(checkpoint, "cpu")
    labels = np.array([s.label for s in original.split(split)])
    rows = np.arange(len(labels))
    before, after = (_logits(model, meta, d, split, batch_size) for d in (original, swapped))
    acc, acc_swapped = (float((predicted_class(z) == labels).mean()) for z in (before, after))
    score = [torch.softmax(torch.from_numpy(z).double(), 1).numpy()[rows, labels] for z in (before, after)]
    return {
        "accuracy": acc,
        "swapped_accuracy": acc_swapped,
        "points": 100.0 * (acc - acc_swapped),
        "score_drop": float(score[0].mean() - score[1].mean()),
        "n": len(labels),
    }
