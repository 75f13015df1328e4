"""stdout and stderr as the CLI uses them: printable whatever a path holds, and a stdout
that cannot be written never costs the exit code."""

from __future__ import annotations

import contextlib
import os
import sys

from drift_gate._io import warn

__all__ = ["flush_stdout", "printable_streams", "silence_stdout", "stdout_failed"]


def printable_streams() -> None:
    """A path that is not valid UTF-8 (surrogate escapes) is printed as its escapes, never
    an encoding error, whatever the locale."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]


def flush_stdout() -> None:
    """Flushes stdout; when it cannot be written (a full disk, a closed pipe), says so once
    and points it at /dev/null, so neither this nor the interpreter's exit loses the code."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except (OSError, ValueError) as exc:
        stdout_failed(exc)


def stdout_failed(exc: OSError | ValueError) -> None:
    """Says once that stdout cannot be written, and points it at /dev/null."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    warn(f"could not write stdout ({reason}); the exit code stands, gate.json is the record")
    silence_stdout()


def silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    # what is still buffered would be written again at exit (and fail again): drop it
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the interpreter closes it at exit)
