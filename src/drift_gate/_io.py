"""Atomic file writes: a temporary file in the same folder, then ``os.replace``."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "default_cache_dir",
    "file_sha256",
    "uninterrupted",
    "write_lock",
]


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Calls ``write`` on a temporary file beside ``path`` and renames it into place.

    A reader sees either the old file or the complete new one; an exception or a
    signal during ``write`` leaves no partial file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    """Writes UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def write_lock(folder: Path) -> Iterator[None]:
    """Holds an exclusive advisory lock on ``folder/.lock`` (``flock``) for the block,
    so that processes writing a set of files into one folder take turns and the set
    a reader finds afterwards comes from one writer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Defers Ctrl-C and SIGTERM until the block ends, then raises ``KeyboardInterrupt``.

    For short blocks that write several files which belong together: an interrupt
    then lands before or after the whole set, never in the middle. Outside the main
    thread (where signals cannot be handled) the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: object) -> None:
        pending.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if pending:
        raise KeyboardInterrupt


def default_cache_dir() -> Path:
    """Where synthetic pretraining is cached: ``$XDG_CACHE_HOME/drift-gate``, else
    ``~/.cache/drift-gate``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "drift-gate"
