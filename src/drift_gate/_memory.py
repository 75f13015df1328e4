"""How glibc's allocator hands out the large buffers of tensors, per stage of work.

glibc serves a block above its *mmap threshold* from a fresh mapping, returned to the
system when freed, and everything else from the heap. By default the threshold rises
(to at most 32 MiB) after a large block is freed, so later tensors of that size come
from the heap. The two stages want opposite things:

* ``AUDIT`` (gate, baseline): a fixed 128 KiB threshold keeps each large buffer in its
  own mapping, so the gate's peak RSS does not grow with the number of batches
  (measured: +37 MiB per 100 audit images without it; ``bench_gate_memory.py``);
* ``TRAIN`` (pretraining, TL features, fine-tuning): every step allocates and frees the
  same activations; with the 128 KiB threshold each one is a new mapping whose pages
  fault in again, which made training 1.8x slower on 2 cores (44 % of its CPU time in
  the kernel). A 32 MiB threshold (glibc's own ceiling) and a trim threshold twice that
  let the heap keep and reuse those pages (``bench_alloc.py``).

The numbers computed are the same under either policy; only time and memory differ.
Nothing happens outside glibc (musl, macOS, Windows).
"""

from __future__ import annotations

import contextlib
import sys

__all__ = ["AUDIT", "TRAIN", "allocator_policy"]

#: ``(mmap threshold, trim threshold)`` in bytes.
AUDIT = (128 * 1024, 128 * 1024)
TRAIN = (32 * 1024 * 1024, 64 * 1024 * 1024)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def allocator_policy(policy: tuple[int, int]) -> bool:
    """Sets glibc's mmap and trim thresholds for what the process does next (``AUDIT``
    or ``TRAIN``); returns whether the allocator took them."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # musl, or no libc.so.6
        libc = ctypes.CDLL("libc.so.6")
        mmap, trim = policy
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
    return False
