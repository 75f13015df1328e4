"""Where a data set's files may lie: every path a manifest, a folder or a mask names is
resolved here and refused when it leaves the data root."""

from __future__ import annotations

import os
from pathlib import Path

from drift_gate._io import ALLOW_OUTSIDE
from drift_gate.errors import DataError

__all__ = ["confined", "data_root"]


def confined(path: Path, root: Path, what: str = "image") -> Path:
    """``path`` resolved, refused when it leaves the data root ``root`` (by ``..``, an
    absolute path or a symlink), unless :data:`ALLOW_OUTSIDE` is set.

    Raises:
        DataError: the path lies outside the root.
    """
    text = os.fspath(path)
    if "\x00" in text or len(text) > 4096 or any(len(part) > 255 for part in Path(text).parts):
        # the offending name, not the path's start: its length must not depend on the folder
        name = Path(text).name
        shown = f"{name[:40]!r}{f'… ({len(name)} characters)' if len(name) > 40 else ''}"
        raise DataError(f"{what} path {shown}: not a usable path (a NUL byte, or too long)")
    resolved = Path(path).resolve()
    if os.environ.get(ALLOW_OUTSIDE) == "1" or resolved.is_relative_to(Path(root).resolve()):
        return resolved
    raise DataError(
        f"{what} {path} lies outside the data root {root} (a path or a symlink that leaves it); "
        f"refused. Pass --allow-outside-data-root (or set {ALLOW_OUTSIDE}=1) to read it anyway"
    )


def data_root(source: Path) -> Path:
    """The folder that sample ids are relative to: a manifest file's folder, else
    ``source`` itself. Every command that takes ``--data`` resolves it here."""
    source = Path(source)
    return source.parent if source.is_file() else source
