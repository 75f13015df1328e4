"""The generated reference pages are what the code makes (regenerate with `nox -s docs`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_and_api_references_are_current() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_docs.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_readme_stays_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 12 * 1024
    for link in ("docs/tutorial.md", "docs/reference/cli.md", "docs/reference/failure-modes.md"):
        assert f"]({link})" in readme and (ROOT / link).is_file(), link
