"""Atomic file writes: a temporary file in the same folder, then ``os.replace``."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "TRAINING_CODE",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "code_sha256",
    "default_cache_dir",
    "file_lock",
    "file_sha256",
    "read_bounded",
    "recover_folder",
    "side_output",
    "swap_in_folder",
    "uninterrupted",
    "warn",
    "write_lock",
]


#: Set to ``1`` (or pass ``--allow-outside-data-root``) to read images and masks that lie
#: outside the data root, directly or through a symlink.
ALLOW_OUTSIDE = "DRIFT_GATE_ALLOW_OUTSIDE_DATA_ROOT"


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
    """Writes UTF-8 ``text`` to ``path`` atomically (a file name that is not valid UTF-8,
    carried as surrogate escapes, is written as its ``\\udcxx`` escapes)."""
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def warn(message: str) -> None:
    """One ``drift-gate: warning:`` line on stderr (nothing, if stderr itself is gone)."""
    line = " ".join(message.split("\n"))
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(f"drift-gate: warning: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def side_output(what: str) -> Iterator[None]:
    """Writes an output that is not the verdict (the job summary, GitHub outputs, stdout,
    a report figure): when it fails, one warning line says so and the run carries on with
    its verdict (``gate.json`` is the record)."""
    try:
        yield
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        warn(f"could not write {what} ({reason}); the verdict stands, gate.json is the record")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """Holds an advisory ``flock`` on the file ``path`` (created if needed) for the block:
    exclusive for writers, ``shared`` for readers, so that a reader never sees a set of
    files half replaced and writers take turns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def write_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``folder/.lock``: processes writing a set of files into one
    folder take turns, and the set a reader finds afterwards comes from one writer."""
    return file_lock(Path(folder) / ".lock")


_RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two paths atomically (Linux)


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one step where the system can (Linux ``renameat2``); False if not."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    done = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(done == 0)


def swap_in_folder(new: Path, target: Path) -> None:
    """Puts the complete folder ``new`` in place of ``target`` (which may not exist) and
    deletes the old one. Where the system cannot swap in one step, ``target`` is missing
    for a moment between two renames; :func:`recover_folder` puts the old one back if the
    process dies there. Call it holding the lock that readers take."""
    import shutil

    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # now the old folder
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old)


def recover_folder(target: Path) -> None:
    """After a crash between the two renames of :func:`swap_in_folder`: the old folder
    comes back. Leftover new folders (``.<name>.new-*``) are removed."""
    import shutil

    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.is_dir():
        os.rename(old, target)
    for leftover in target.parent.glob(f".{target.name}.new-*"):
        shutil.rmtree(leftover, ignore_errors=True)


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


#: The package parts whose code decides what training makes: the phantom data and its
#: loading, the models, the training loops and the classification metrics that pick the
#: best epoch (the same set keys CI's cache of trained artefacts).
TRAINING_CODE = ("data", "models", "training", "evidence/classification.py")


def code_sha256(parts: tuple[str, ...] = TRAINING_CODE) -> str:
    """sha256 over the source of drift-gate's ``parts`` (subpackages or modules, relative
    to the package) and the torch version: what a cache of their outputs is keyed by, so
    that changed code never reuses what older code made."""
    import torch

    root = Path(__file__).resolve().parent
    files: list[Path] = []
    for part in parts:
        target = root / part
        files += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    h = hashlib.sha256(f"torch {torch.__version__}".encode())
    for f in files:
        h.update(f"\x1f{f.relative_to(root).as_posix()}\x1f".encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def read_bounded(path: Path, limit: int, what: str, error: type[Exception]) -> bytes:
    """The bytes of ``path``, refused unread when larger than ``limit``.

    Raises:
        error: too large, or unreadable (the message names the file and ``what`` it is).
    """
    path = Path(path)
    try:
        if path.stat().st_size > limit:
            raise error(f"{path}: too large for a {what}")
        return path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
