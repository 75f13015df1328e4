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


def test_own_model_examples_run_as_written(tmp_path: Path, phantom_root: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """docs/how-to/own-model.md: every ``# file:`` TOML block is written, every Python block
    run and every ``$ drift-gate`` line executed, in order, in a fresh folder holding the
    phantom data (``data/phantoms``) and a multi-label manifest (``data/nih.csv``)."""
    import re
    import shlex
    import shutil

    from drift_gate.cli import main
    from gatekit import multilabel_manifest

    monkeypatch.chdir(tmp_path)
    shutil.copytree(phantom_root, tmp_path / "data" / "phantoms")
    multilabel_manifest(phantom_root, tmp_path / "data" / "nih.csv", prefix="phantoms/")
    page = (ROOT / "docs" / "how-to" / "own-model.md").read_text(encoding="utf-8")
    namespace: dict[str, object] = {}
    ran = 0
    for kind, body in re.findall(r"```(python|toml|console)\n(.*?)```", page, flags=re.S):
        if kind == "toml" and body.startswith("# file: "):
            name, _, text = body.partition("\n")
            Path(name.removeprefix("# file: ").strip()).write_text(text)
        elif kind == "python":
            exec(compile(body, "own-model.md", "exec"), namespace)
        elif kind == "console":
            for line in body.splitlines():
                if line.startswith("$ drift-gate "):
                    args = shlex.split(line.removeprefix("$ drift-gate "))
                    assert main([*args, "--no-progress"]) == 0, line
                    ran += 1
    assert ran == 6
    gate = (tmp_path / "reports" / "gate.json").read_text()
    assert '"chest/layercam/Nodule/iou.min"' in gate


def test_the_failure_modes_page_keeps_nothing_that_depends_on_the_machine() -> None:
    """Messages go onto the committed page through ``shorten``: temporary folders (their
    length differs between machines) and a trained checkpoint's hash (its weights differ
    between CPUs) are masked; a key id from a fixed seed is kept, it is the same everywhere."""
    from gatekit import shorten

    for basetemp in ("/tmp/pytest-of-root/pytest-7", "/tmp/a-much-longer-temporary-folder-name/x"):
        message = (
            f"{basetemp}/popen-gw1/test_x0/b/tiny: re-make it from the checkpoint it was made from "
            f"(sha256 c07633b0f620…): `drift-gate baseline --data {basetemp}/phantoms0`"
        )
        assert shorten(message) == (
            "…/tiny: re-make it from the checkpoint it was made from (sha256 …): "
            "`drift-gate baseline --data …/phantoms0`"
        )
    signed = "…/signature.json: signed by key '34750f98bd59fcfc', not by '6a3803d5f059902a'"
    assert shorten(signed) == signed
