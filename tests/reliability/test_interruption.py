"""Ctrl-C / SIGTERM: exit code 130, no partial file, nothing of the old state lost;
``train`` resumes.

Signals are real (``os.kill`` on this process, or on a child process): the CLI turns
SIGTERM into ``KeyboardInterrupt``, file sets that belong together are written with
the signal deferred, and single files are replaced atomically.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import drift_gate._io
import drift_gate.gating.audit_pass
import drift_gate.gating.baseline
import drift_gate.gating.report
from drift_gate.cli import main
from drift_gate.gating.stored import load_baseline
from gatekit import baseline_args, gate, gate_args, result, tree_digest


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _then_sigterm(real: Callable[..., Any], after: bool = True) -> Callable[..., Any]:
    """``real``, with a SIGTERM to this process before or after its first call."""
    calls = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        first = not calls
        calls.append(1)
        if first and not after:
            _sigterm_self()
        out = real(*args, **kwargs)
        if first and after:
            _sigterm_self()
        return out

    return wrapped


def _leftovers(root: Path) -> list[Path]:
    """Temporary files, and the staging or swapped-out folders of a baseline refresh."""
    return [
        p for p in root.rglob("*") if p.name.endswith(".tmp") or ".new-" in p.name or p.name.endswith(".old")
    ]


def test_gate_interrupted_while_computing_keeps_the_old_reports(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gate(env, env["tl"]) == 0
    before = tree_digest(env["reports"])
    monkeypatch.setattr(
        drift_gate.gating.audit_pass,
        "drift_metrics",
        _then_sigterm(drift_gate.gating.audit_pass.drift_metrics, after=False),
    )
    assert gate(env, env["ft"]) == 130
    assert tree_digest(env["reports"]) == before and not _leftovers(env["tmp"])


def test_gate_interrupted_while_writing_finishes_the_report_set(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gate(env, env["tl"]) == 0
    monkeypatch.setattr(
        drift_gate.gating.report,
        "atomic_write_bytes",
        _then_sigterm(drift_gate.gating.report.atomic_write_bytes),
    )
    assert gate(env, env["ft"]) == 130
    assert result(env)["candidates"][0]["candidate"] == str(env["ft"])
    for name in ("gate.md", "gate.junit.xml", "gate.html"):
        text = (env["reports"] / name).read_text()
        assert "ft.pt" in text or env["ft"].name in text, f"{name} is from the earlier run"
    assert not _leftovers(env["tmp"])


def test_baseline_interrupted_while_computing_keeps_the_old_baseline(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree_digest(env["baselines"])
    monkeypatch.setattr(
        drift_gate.gating.baseline,
        "compute_cams",
        _then_sigterm(drift_gate.gating.baseline.compute_cams, after=False),
    )
    assert main(baseline_args(env, env["ft"])) == 130
    assert tree_digest(env["baselines"]) == before and not _leftovers(env["tmp"])


def test_baseline_interrupted_while_writing_keeps_the_old_baseline(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh writes the new set beside the old one and swaps it in whole: interrupted
    while writing, the old baseline stays exactly as it was."""
    before = tree_digest(env["baselines"])
    monkeypatch.setattr(
        drift_gate.gating.baseline,
        "atomic_write_bytes",
        _then_sigterm(drift_gate.gating.baseline.atomic_write_bytes),
    )
    assert main(baseline_args(env, env["ft"])) == 130
    base = load_baseline(env["baselines"] / "tiny")  # whole and verified
    assert base.meta["reference"]["path"] == str(env["tl"])
    assert tree_digest(env["baselines"]) == before and not _leftovers(env["tmp"])


@pytest.mark.parametrize("command", ["approve", "baseline", "gate"])
def test_signal_while_a_file_is_synced(
    env: dict[str, Path], command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal lands while a file's bytes are being synced to disk. ``approve``
    (one file) and ``baseline`` (a new set written beside the old) stop there and keep
    the old files; ``gate`` defers it until its set of reports is complete. Either way:
    130, no partial file."""
    assert gate(env, env["ft"]) == 0
    meta = env["baselines"] / "tiny" / "baseline.json"
    before = meta.read_bytes()
    monkeypatch.setattr(drift_gate._io.os, "fsync", _then_sigterm(os.fsync, after=False))
    argv = {
        "approve": ["approve", "--result", str(env["reports"] / "gate.json")],
        "baseline": baseline_args(env, env["ft"]),
        "gate": gate_args(env, env["tl"]),
    }[command]
    assert main(argv) == 130
    monkeypatch.undo()
    assert not _leftovers(env["tmp"])
    base = load_baseline(env["baselines"] / "tiny")
    if command == "approve":
        assert meta.read_bytes() == before and not base.approved
    elif command == "baseline":
        assert base.meta["reference"]["path"] == str(env["tl"])
    else:
        assert result(env)["candidates"][0]["candidate"] == str(env["tl"])


def test_train_sigterm_exits_130_and_resumes(tmp_path: Path, phantom_root: Path) -> None:
    """A real child process: SIGTERM during fine-tuning, then the same command resumes."""
    (tmp_path / "p.toml").write_text(
        f'[t]\ndata = "{phantom_root}"\nbackbones = ["tiny"]\ninput_size = 32\nweights = "none"\n'
        f'batch_size = 8\ntl = {{ epochs = 2, lr = 1e-2 }}\nft = {{ epochs = 6, lr = 1e-3 }}\nout = "ck"\n'
    )
    argv = [sys.executable, "-u", "-m", "drift_gate", "train", "--profile", "t", "--profiles", "p.toml"]
    argv += ["--device", "cpu", "--no-progress", "--threads", "1"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with subprocess.Popen(
        argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "FT epoch 3/6" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130, "".join(seen) + rest
    assert "interrupted; no partial files were left behind" in rest
    ck = tmp_path / "ck" / "tiny"
    assert (ck / "tl.pt").is_file() and not (ck / "ft.pt").exists() and (ck / "ft.resume.pt").is_file()
    assert not _leftovers(tmp_path)
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming fine-tuning after epoch" in done.stderr
    assert (ck / "ft.pt").is_file() and not (ck / "ft.resume.pt").exists()


def test_checkpoint_save_interrupted_keeps_the_old_file(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from drift_gate.models.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(env["tl"])
    path = env["tmp"] / "c.pt"
    save_checkpoint(path, model, meta)
    before = path.read_bytes()
    monkeypatch.setattr(drift_gate._io.os, "replace", lambda *a: _sigterm_self())
    previous = signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, model, meta)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert path.read_bytes() == before and not _leftovers(env["tmp"])
