"""Command-line adapter: ``main(argv) -> int``; errors become messages and exit codes here.

Exit codes: 0 success or gate passed · 1 gate rule violated · 2 usage or input
error · 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from . import __version__
from .errors import DriftGateError

__all__ = ["main"]


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "drift-gate"


def _add_data(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("data", help="write the embedded phantom data set to a folder")
    p.add_argument("--out", type=Path, default=Path("data/phantoms"), help="output folder")
    p.add_argument("--n-per-class", type=int, default=100, help="images per class")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.set_defaults(func=_cmd_data)


def _add_train(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train TL and FT checkpoints for a profile's backbones")
    p.add_argument("--profile", default="demo", help="profile name in the profiles file")
    p.add_argument("--profiles", type=Path, default=Path("profiles.toml"), help="profiles file")
    p.add_argument(
        "--backbone", action="append", dest="backbones", help="train only this backbone (repeatable)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache for synthetic pretraining (default ~/.cache/drift-gate)",
    )
    p.add_argument("--force", action="store_true", help="retrain even if checkpoints are current")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)


def _cmd_data(args: argparse.Namespace) -> int:
    from .phantoms import generate_dataset

    manifest = generate_dataset(
        args.out, args.n_per_class, args.seed, args.size, progress=not args.no_progress
    )
    print(f"wrote {manifest}")
    return 0


def _resolve_data(profile: object, progress: bool) -> Path:
    from .config import Profile
    from .phantoms import generate_dataset

    assert isinstance(profile, Profile)
    if profile.data != "phantoms":
        return Path(profile.data)
    root = Path(profile.data_dir)
    stamp = root / ".phantoms.json"
    import json

    want = json.dumps(
        {
            "n_per_class": profile.phantoms.n_per_class,
            "size": profile.phantoms.size,
            "seed": profile.phantoms.seed,
        },
        sort_keys=True,
    )
    if not ((root / "manifest.csv").is_file() and stamp.is_file() and stamp.read_text() == want):
        print(f"generating the phantom data set in {root} ...", file=sys.stderr)
        generate_dataset(
            root,
            profile.phantoms.n_per_class,
            profile.phantoms.seed,
            profile.phantoms.size,
            progress=progress,
        )
        from ._io import atomic_write_text

        atomic_write_text(stamp, want)
    return root


def _cmd_train(args: argparse.Namespace) -> int:
    import time

    from .config import load_profile
    from .data import load_dataset
    from .train import resolve_device, train_backbone

    profile = load_profile(args.profiles, args.profile)
    backbones = tuple(args.backbones or profile.backbones)
    from .backbones import get_backbone

    for arch in backbones:
        get_backbone(arch)
    device = resolve_device(args.device)
    progress = not args.no_progress
    data = load_dataset(_resolve_data(profile, progress))
    print(
        f"profile {profile.name}: {len(data.samples)} images, {len(data.classes)} classes, device {device}",
        file=sys.stderr,
    )
    rows = []
    for arch in backbones:
        start = time.perf_counter()
        res = train_backbone(
            profile,
            arch,
            data,
            device,
            args.cache_dir or _default_cache(),
            progress=progress,
            force=args.force,
        )
        rows.append(
            (
                arch,
                res.metrics["tl"]["val"]["auc_macro"],
                res.metrics["ft"]["val"]["auc_macro"],
                res.metrics["tl"]["test"]["auc_macro"],
                res.metrics["ft"]["test"]["auc_macro"],
                time.perf_counter() - start,
            )
        )
    print(
        f"{'backbone':<14}{'TL val AUC':>12}{'FT val AUC':>12}{'TL test AUC':>13}"
        f"{'FT test AUC':>13}{'time':>9}"
    )
    for arch, tlv, ftv, tlt, ftt, sec in rows:
        print(f"{arch:<14}{tlv:>12.4f}{ftv:>12.4f}{tlt:>13.4f}{ftt:>13.4f}{sec:>8.0f}s")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drift-gate",
        description="Regression gate for the evidence (CAMs) behind medical-imaging models.",
    )
    parser.add_argument("--version", action="version", version=f"drift-gate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data(sub)
    _add_train(sub)
    for p in sub.choices.values():
        if not any(a.dest == "no_progress" for a in p._actions):
            p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code; never raises for expected failures."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args))
    except DriftGateError as exc:
        print(f"drift-gate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("drift-gate: interrupted; no partial files were left behind", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main(sys.argv[1:]))
