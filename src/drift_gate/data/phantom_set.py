"""The phantom data set on disk (PNG files, masks, manifest) and the pretraining source set."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from drift_gate._io import atomic_write_bytes, atomic_write_text
from drift_gate.data.phantoms import CLASSES, SPLIT_SHARES, render_phantom, render_source_sample
from drift_gate.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")


__all__ = ["generate_dataset", "parallel_map", "render_source_set"]


def _png(array: NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _split_of(rank: int, n: int) -> str:
    edge = 0.0
    for name, share in SPLIT_SHARES:
        edge += share
        if rank < round(edge * n):
            return name
    return SPLIT_SHARES[-1][0]


def _plan(n_per_class: int, seed: int) -> Iterator[tuple[str, int, str]]:
    """Yields ``(label, index, split)``; splits are stratified and seeded."""
    for c, label in enumerate(CLASSES):
        order = np.random.default_rng([seed, 7, c]).permutation(n_per_class)
        for i in range(n_per_class):
            yield label, c * 1_000_000 + i, _split_of(int(order[i]), n_per_class)


def _render_pngs(job: tuple[str, int, int, int, float | None, float, str]) -> tuple[bytes, bytes]:
    label, seed, index, size, shortcut, occult, cue = job
    ph = render_phantom(label, seed, index, size, shortcut, occult, cue)
    return _png(ph.image), _png(ph.mask.astype(np.uint8) * 255)


def parallel_map(
    fn: Callable[[T], R], jobs: Sequence[T], workers: int | None, progress: bool, desc: str
) -> list[R]:
    """``[fn(j) for j in jobs]`` over a process pool, in order, with a progress bar.

    Results do not depend on ``workers``: every job seeds its own generator.
    """
    from tqdm import tqdm

    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress, leave=False)
    if workers <= 1:
        out = []
        for j in jobs:
            out.append(fn(j))
            bar.update()
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        results = []
        for r in pool.map(fn, jobs, chunksize=8):
            results.append(r)
            bar.update()
    bar.close()
    return results


def generate_dataset(
    out: Path,
    n_per_class: int,
    *,
    seed: int = 0,
    size: int = 256,
    progress: bool = True,
    workers: int | None = None,
    shortcut: float | None = None,
    occult: float = 0.0,
    cue: str = "strip",
) -> Path:
    """Writes the phantom data set as a user's data set would look on disk.

    Layout: ``out/images/<label>/<id>.png``, ``out/masks/<label>/<id>.png`` and
    ``out/manifest.csv`` with columns ``path,label,split,sha256,mask`` (paths
    relative to ``out``). The manifest is written last, so a folder with a
    manifest is complete. ``shortcut`` plants the ``cue`` (the lead strip, or the
    burned-in ``marker``) with that class correlation and ``occult > 0`` hides the findings
    of that share of disease images (same
    ids and splits as the clean set; see :func:`render_phantom`).

    Returns:
        The manifest path.
    """
    if n_per_class < 5:
        raise ConfigError(
            f"--n-per-class must be at least 5 so that every split has every class, got {n_per_class}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    plan = list(_plan(n_per_class, seed))
    pngs = parallel_map(
        _render_pngs,
        [(label, seed, index, size, shortcut, occult, cue) for label, index, _ in plan],
        workers,
        progress,
        "phantoms",
    )
    for (label, index, split), (data, mask) in zip(plan, pngs, strict=True):
        name = f"{label}/{label}-{index % 1_000_000:05d}.png"
        atomic_write_bytes(out / "images" / name, data)
        atomic_write_bytes(out / "masks" / name, mask)
        rows.append(
            {
                "path": f"images/{name}",
                "label": label,
                "split": split,
                "sha256": hashlib.sha256(data).hexdigest(),
                "mask": f"masks/{name}",
            }
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["path", "label", "split", "sha256", "mask"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = out / "manifest.csv"
    atomic_write_text(manifest, buf.getvalue())
    return manifest


def _source_job(job: tuple[int, int, int]) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    return render_source_sample(*job)


def render_source_set(
    seed: int, n: int, size: int, progress: bool = False, workers: int | None = None
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Renders ``n`` source-task samples: images ``(n, size, size)`` and targets ``(n, L)``."""
    pairs = parallel_map(_source_job, [(seed, i, size) for i in range(n)], workers, progress, "source task")
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
