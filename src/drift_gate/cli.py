"""Command-line adapter: ``main(argv) -> int``; errors become messages and exit codes here.

Exit codes: 0 success or gate passed · 1 gate rule violated · 2 usage or input
error · 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from . import __version__
from .errors import ConfigError, DataError, DriftGateError

if TYPE_CHECKING:
    from .config import Profile
    from .distributed import Dist

__all__ = ["main"]


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "drift-gate"


def _add_data(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("data", help="write the embedded phantom data set to a folder")
    p.add_argument("--out", type=Path, default=Path("data/phantoms"), help="output folder")
    p.add_argument("--n-per-class", type=_positive, default=100, help="images per class")
    p.add_argument("--size", type=_positive, default=256, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument(
        "--shortcut",
        type=_unit_interval,
        default=None,
        help="plant a lead strip whose height follows the class with this probability (0: uninformative)",
    )
    p.add_argument(
        "--occult",
        type=_unit_interval,
        default=0.0,
        help="share of disease images without visible findings (their masks are empty)",
    )
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
    p.add_argument(
        "--keep-epochs",
        action="store_true",
        help="also keep ft.epoch<k>.pt after every FT epoch (for `track`)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: fine-tune under bfloat16 autocast (for GPUs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_in_process_group(_train))


def _add_baseline(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("baseline", help="store a reference checkpoint's CAMs on a fixed audit set")
    p.add_argument("--reference", type=Path, required=True, help="reference checkpoint (e.g. tl.pt)")
    p.add_argument("--data", type=Path, required=True, help="data set (folder or manifest)")
    p.add_argument("--out", type=Path, default=None, help="baseline folder (default baselines/<arch>)")
    p.add_argument(
        "--thresholds",
        type=Path,
        default=Path("thresholds.toml"),
        help="its [gate] methods are the methods stored",
    )
    p.add_argument("--per-class", type=_positive, default=10, help="audit images per class")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.set_defaults(func=_cmd_baseline)


def _add_gate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("gate", help="gate candidate checkpoints against the stored baselines")
    p.add_argument(
        "--candidate",
        type=Path,
        action="append",
        default=[],
        help="candidate checkpoint (repeatable; several backbones allowed)",
    )
    p.add_argument(
        "--profile", default=None, help="gate every FT checkpoint that `train --profile NAME` wrote"
    )
    p.add_argument("--profiles", type=Path, default=Path("profiles.toml"))
    p.add_argument(
        "--create-missing-baselines",
        action="store_true",
        help="with --profile: make missing baselines from the TL checkpoints",
    )
    p.add_argument("--baselines", type=Path, default=Path("baselines"), help="baselines root")
    p.add_argument("--thresholds", type=Path, default=Path("thresholds.toml"))
    p.add_argument("--data", type=Path, default=None, help="data root holding the audit images")
    p.add_argument(
        "--reference", type=Path, default=None, help="check that the baseline was made from this checkpoint"
    )
    p.add_argument("--reports", type=Path, default=Path("reports"), help="report folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.add_argument(
        "--no-onnx", action="store_true", help="predict with the checkpoint even if <stem>.onnx is beside it"
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: the CAM forward pass under bfloat16 autocast (for GPUs; check the verdict against fp32)",
    )
    p.set_defaults(func=_in_process_group(_gate))


def _add_export(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export",
        help="export checkpoints to ONNX (<stem>.onnx beside each), checked for parity on the audit images",
    )
    p.add_argument("--checkpoint", type=Path, action="append", default=[], help="checkpoint (repeatable)")
    p.add_argument(
        "--profile", default=None, help="export the TL and FT checkpoints of `train --profile NAME`"
    )
    p.add_argument("--profiles", type=Path, default=Path("profiles.toml"))
    p.add_argument(
        "--backbone",
        action="append",
        dest="backbones",
        help="with --profile: only this backbone (repeatable)",
    )
    p.add_argument("--data", type=Path, default=None, help="data set (default: the profile's)")
    p.add_argument(
        "--baselines",
        type=Path,
        default=Path("baselines"),
        help="use baselines/<arch>'s audit set when there is one (else --per-class test images)",
    )
    p.add_argument(
        "--per-class", type=_positive, default=10, help="audit images per class without a baseline"
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="max relative logit difference allowed")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.set_defaults(func=_cmd_export)


def _add_study(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("study", help="the study's protocol table (TL vs FT drift, rankings) for a profile")
    p.add_argument("--profile", default="demo", help="profile whose TL and FT checkpoints are studied")
    p.add_argument("--profiles", type=Path, default=Path("profiles.toml"))
    p.add_argument(
        "--methods",
        default="layercam,gradcam++,ablationcam",
        help="comma-separated CAM methods (default includes the gradient-free Ablation-CAM)",
    )
    p.add_argument("--per-class", type=_positive, default=1000, help="test images per class (default: all)")
    p.add_argument("--out", type=Path, default=Path("reports/study"), help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.set_defaults(func=_cmd_study)


def _add_track(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "track", help="drift of every fine-tuning epoch (train --keep-epochs) vs TL and vs the last"
    )
    p.add_argument(
        "--checkpoints", type=Path, required=True, help="a backbone's folder (tl.pt, ft.epoch<k>.pt)"
    )
    p.add_argument("--data", type=Path, required=True, help="data set (folder or manifest)")
    p.add_argument(
        "--thresholds", type=Path, default=Path("thresholds.toml"), help="methods and sample selection"
    )
    p.add_argument("--baselines", type=Path, default=None, help="baselines root made from this TL checkpoint")
    p.add_argument(
        "--per-class", type=_positive, default=10, help="audit images per class for a new baseline"
    )
    p.add_argument("--out", type=Path, default=Path("reports/track"), help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.set_defaults(func=_cmd_track)


def _cmd_study(args: argparse.Namespace) -> int:
    from .cam import METHODS
    from .config import load_profile
    from .data import load_dataset
    from .study import run_study, study_markdown
    from .train import resolve_device

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown method(s) {', '.join(unknown) or '(none)'}; known: {', '.join(METHODS)}")
    profile = load_profile(args.profiles, args.profile)
    folders = {arch: Path(profile.out) / arch for arch in profile.backbones}
    for folder in folders.values():
        for phase in ("tl", "ft"):
            if not (folder / f"{phase}.pt").is_file():
                raise DataError(
                    f"{folder / phase}.pt: missing; run `drift-gate train --profile {profile.name}`"
                )
    data = load_dataset(_resolve_data(profile, not args.no_progress))
    result = run_study(folders, data, methods, args.out, args.per_class, resolve_device(args.device),
                       args.batch_size, not args.no_progress)  # fmt: skip
    print(study_markdown(result))
    print(f"wrote {args.out}/study.md, study.json, study.png, study.html", file=sys.stderr)
    return 0


def _cmd_track(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .study import run_track
    from .thresholds import load_thresholds
    from .train import resolve_device

    thresholds = load_thresholds(args.thresholds)
    _, meta = load_checkpoint(args.checkpoints / "tl.pt")
    data = load_dataset(args.data, meta.classes)
    device = resolve_device(args.device)
    result = run_track(args.checkpoints, data, thresholds, args.out, args.per_class, device, args.batch_size,
                       args.baselines, not args.no_progress)  # fmt: skip
    print((args.out / "track.md").read_text(), end="")
    print(f"wrote {args.out}/track.md, track.json, track.png ({len(result.rows)} epochs)", file=sys.stderr)
    return 0


def _unit_interval(text: str) -> float:
    """argparse type: a probability."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_calibrate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "calibrate",
        help="measure each metric's noise (seed-to-seed fine-tunes, bootstrap) and propose thresholds",
    )
    p.add_argument("--profile", default="demo", help="profile whose TL checkpoints are the references")
    p.add_argument("--profiles", type=Path, default=Path("profiles.toml"))
    p.add_argument(
        "--thresholds",
        type=Path,
        default=Path("thresholds.toml"),
        help="methods, sample selection and statistic to calibrate for ([gate], [auc] are copied)",
    )
    p.add_argument(
        "--runs",
        type=_positive,
        default=3,
        help="fine-tuning runs per backbone, seeds = profile seed, +1, ... (the profile's ft.pt is the "
        "first); 1 = bootstrap over audit samples only",
    )
    p.add_argument("--k", type=_positive_float, default=3.0, help="noise widths between centre and bound")
    p.add_argument("--per-class", type=_positive, default=10, help="audit images per class")
    p.add_argument("--out", type=Path, default=Path("reports/calibrate"), help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.set_defaults(func=_cmd_calibrate)


#: validate.CONTROLS, spelled out so that building the parser imports no torch.
_CONTROLS = ("self", "permuted", "seed", "shortcut")


def _add_validate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "validate",
        help="run the gate on controls with known verdicts (self, permuted, another seed, planted shortcut)",
    )
    p.add_argument("--profile", default="demo", help="profile whose TL checkpoints are the references")
    p.add_argument("--profiles", type=Path, default=Path("profiles.toml"))
    p.add_argument("--thresholds", type=Path, default=Path("thresholds.toml"), help="the rules under test")
    p.add_argument(
        "--controls",
        default=",".join(_CONTROLS),
        help=f"comma-separated subset of {','.join(_CONTROLS)}",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the 'seed' control (default: profile seed + 10, unused by `calibrate`'s runs)",
    )
    p.add_argument("--shortcut", type=_unit_interval, default=0.95, help="device-class correlation")
    p.add_argument(
        "--occult",
        type=_unit_interval,
        default=0.5,
        help="share of the biased set's disease images without visible findings",
    )
    p.add_argument(
        "--per-class",
        type=_positive,
        default=10,
        help="audit images per class of the clean controls (keep the gate's and calibration's)",
    )
    p.add_argument(
        "--shortcut-per-class",
        type=_positive,
        default=20,
        help="audit images per class of the biased set (its reference gets many wrong; only TPs count)",
    )
    p.add_argument("--out", type=Path, default=Path("reports/validate"), help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.set_defaults(func=_cmd_validate)


def _trained_profile(args: argparse.Namespace) -> tuple[Profile, Path]:
    """The profile and its data root; every backbone's TL checkpoint must exist."""
    from .config import load_profile

    profile = load_profile(args.profiles, args.profile)
    for arch in profile.backbones:
        tl = Path(profile.out) / arch / "tl.pt"
        if not tl.is_file():
            raise DataError(
                f"{tl}: missing; run `drift-gate train --profile {profile.name}` (or `nox -s train`)"
            )
    return profile, _resolve_data(profile, not args.no_progress)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibration_markdown, run_calibration
    from .data import load_dataset
    from .thresholds import load_thresholds
    from .train import resolve_device

    thresholds = load_thresholds(args.thresholds)
    profile, root = _trained_profile(args)
    seeds = [profile.seed + i for i in range(args.runs)]
    cal = run_calibration(
        profile, load_dataset(root), thresholds, args.out, seeds, args.k, args.per_class,
        resolve_device(args.device), args.batch_size, not args.no_progress, _log,
    )  # fmt: skip
    print(calibration_markdown(cal))
    print(f"wrote {args.out}/thresholds.proposed.toml, calibration.md, calibration.json", file=sys.stderr)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .thresholds import load_thresholds
    from .train import resolve_device
    from .validate import CONTROLS, run_validation, validation_markdown

    controls = tuple(c.strip() for c in args.controls.split(",") if c.strip())
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown or not controls:
        raise ConfigError(
            f"unknown control(s) {', '.join(unknown) or '(none)'}; known: {', '.join(CONTROLS)}"
        )
    thresholds = load_thresholds(args.thresholds)
    profile, root = _trained_profile(args)
    seed = profile.seed + 10 if args.seed is None else args.seed
    result = run_validation(
        profile, load_dataset(root), thresholds, args.out, seed, args.shortcut, args.occult, args.per_class,
        resolve_device(args.device), args.batch_size, not args.no_progress, _log, controls, None,
        args.shortcut_per_class,
    )  # fmt: skip
    print(validation_markdown(result))
    print(f"wrote {args.out}/validate.md, validate.json", file=sys.stderr)
    return 0 if result.ok else 1


def _add_approve(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("approve", help="record a reviewed gate result as the approved one")
    p.add_argument("--result", type=Path, default=Path("reports/gate.json"), help="gate.json to approve")
    p.add_argument("--candidate", default=None, help="only this candidate of the result")
    p.add_argument(
        "--force",
        action="store_true",
        help="approve a candidate that did not pass (recorded as forced in the baseline's history)",
    )
    p.set_defaults(func=_cmd_approve)


def _cmd_baseline(args: argparse.Namespace) -> int:
    from .baseline import create_baseline
    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .thresholds import load_thresholds
    from .train import resolve_device

    thresholds = load_thresholds(args.thresholds)
    _, meta = load_checkpoint(args.reference)
    out = args.out or Path("baselines") / meta.arch
    data = load_dataset(args.data, meta.classes)
    path = create_baseline(
        args.reference,
        data,
        out,
        thresholds.methods,
        args.per_class,
        resolve_device(args.device),
        args.batch_size,
        not args.no_progress,
        rules=thresholds,
        log=_log,
    )
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote baseline {path.parent} ({size / 1024:.0f} KiB)")
    return 0


def _in_process_group(body: Callable[[argparse.Namespace, Dist], int]) -> Callable[[argparse.Namespace], int]:
    """A command that joins the torchrun process group (if any) for its run."""

    def run(args: argparse.Namespace) -> int:
        from .distributed import init, shutdown
        from .train import resolve_device

        dist = init(resolve_device(args.device))
        try:
            return body(args, dist)
        finally:
            shutdown(dist)

    return run


def _gate(args: argparse.Namespace, dist: Dist) -> int:
    from .baseline import create_baseline
    from .checkpoint import library_versions
    from .data import load_dataset
    from .distributed import barrier, main_first
    from .gate import GateResult, run_gate
    from .report import console_table, write_reports
    from .thresholds import load_thresholds

    thresholds = load_thresholds(args.thresholds)
    candidates = list(args.candidate)
    data_root = args.data
    if args.profile:
        from .config import load_profile

        profile = load_profile(args.profiles, args.profile)

        def prepare() -> Path:
            root = data_root or _resolve_data(profile, not args.no_progress and dist.main)
            for arch in profile.backbones:
                ft = Path(profile.out) / arch / "ft.pt"
                if not ft.is_file():
                    raise DataError(
                        f"{ft}: no FT checkpoint; run `drift-gate train --profile "
                        f"{profile.name}` (or `nox -s train`) first"
                    )
                base = args.baselines / arch
                if not (base / "baseline.json").is_file() and args.create_missing_baselines and dist.main:
                    print(
                        f"baseline {base} is missing: creating it from {ft.parent / 'tl.pt'}", file=sys.stderr
                    )
                    create_baseline(
                        ft.parent / "tl.pt",
                        load_dataset(root),
                        base,
                        thresholds.methods,
                        device=dist.device,
                        progress=not args.no_progress,
                        rules=thresholds,
                        log=_log,
                    )
            return Path(root)

        # rank 0 makes the data and the baselines; the other ranks then find them
        data_root = main_first(dist, prepare)
        candidates += [Path(profile.out) / arch / "ft.pt" for arch in profile.backbones]
    if not candidates:
        raise ConfigError("nothing to gate: give --candidate CKPT or --profile NAME")
    if data_root is None:
        raise ConfigError("--data is required (the data root that holds the audit images)")
    results, artifacts = [], {}
    for ckpt in candidates:
        res, art = run_gate(
            ckpt,
            args.baselines,
            thresholds,
            data_root,
            dist.device,
            args.batch_size,
            args.reference,
            not args.no_progress,
            use_onnx=not args.no_onnx,
            dist=dist,
            precision=args.precision,
        )
        results.append(res)
        artifacts[res.candidate] = art
    result = GateResult(results, thresholds.as_dict(), str(args.thresholds), library_versions())
    if dist.main:  # every rank holds the same result; one writes it
        print(console_table(result))
        paths = write_reports(result, args.reports, artifacts)
        print(f"reports: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    barrier(dist)
    return result.exit_code


def _cmd_export(args: argparse.Namespace) -> int:
    from .baseline import AuditSet, build_audit_set
    from .checkpoint import load_checkpoint
    from .data import ImageDataset, load_dataset
    from .export import export_onnx
    from .train import resolve_device

    checkpoints = list(args.checkpoint)
    data_root = args.data
    if args.profile:
        from .config import load_profile

        profile = load_profile(args.profiles, args.profile)
        data_root = data_root or _resolve_data(profile, not args.no_progress)
        for arch in args.backbones or profile.backbones:
            for phase in ("tl", "ft"):
                ckpt = Path(profile.out) / arch / f"{phase}.pt"
                if not ckpt.is_file():
                    raise DataError(
                        f"{ckpt}: no checkpoint; run `drift-gate train --profile {profile.name}` first"
                    )
                checkpoints.append(ckpt)
    if not checkpoints:
        raise ConfigError("nothing to export: give --checkpoint CKPT or --profile NAME")
    if data_root is None:
        raise ConfigError("--data is required (the audit images the parity is checked on)")
    if not args.tolerance >= 0:
        raise ConfigError(f"--tolerance must be >= 0, got {args.tolerance}")
    device = resolve_device(args.device)
    for ckpt in checkpoints:
        _, meta = load_checkpoint(ckpt)
        audit_file = args.baselines / meta.arch / "audit.json"
        if audit_file.is_file():
            audit = AuditSet.from_json(audit_file.read_text(encoding="utf-8"))
        else:
            audit = build_audit_set(load_dataset(data_root, meta.classes), args.per_class)
        samples = audit.resolve(data_root, meta.classes)
        ds = ImageDataset(
            samples, meta.input_size, meta.mean, meta.std, cache=False, preprocess=meta.preprocess
        )
        out, p = export_onnx(
            ckpt, ds, args.tolerance, device=device, batch_size=args.batch_size, audit_sha256=audit.sha256
        )
        print(
            f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): ONNX Runtime ({p.provider}) vs torch on "
            f"{p.n} audit images, max relative logit difference {p.max_rel_diff:.2g}"
        )
    return 0


def _cmd_approve(args: argparse.Namespace) -> int:
    import json

    from .baseline import approve

    try:
        result = json.loads(args.result.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{args.result}: cannot read gate result ({exc})") from exc
    chosen = [
        c for c in result.get("candidates", []) if args.candidate is None or c["candidate"] == args.candidate
    ]
    if not chosen:
        raise DataError(f"{args.result}: no candidate to approve")
    for c in chosen:
        print("\n".join(approve(result, c, force=args.force)))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .phantoms import generate_dataset

    manifest = generate_dataset(
        args.out,
        args.n_per_class,
        args.seed,
        args.size,
        progress=not args.no_progress,
        shortcut=args.shortcut,
        occult=args.occult,
    )
    print(f"wrote {manifest}")
    return 0


def _resolve_data(profile: Profile, progress: bool) -> Path:
    """The profile's data root; the embedded phantoms are (re)generated when missing."""
    from .phantoms import generate_dataset

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


def _train(args: argparse.Namespace, dist: Dist) -> int:
    import time

    from .backbones import get_backbone
    from .config import load_profile
    from .data import load_dataset
    from .distributed import main_first
    from .train import train_backbone

    profile = load_profile(args.profiles, args.profile)
    backbones = tuple(args.backbones or profile.backbones)
    for arch in backbones:
        get_backbone(arch)
    progress = not args.no_progress and dist.main
    data = load_dataset(main_first(dist, lambda: _resolve_data(profile, progress)))
    if dist.main:
        where = f"device {dist.device}" + (f", {dist.world} processes" if dist.enabled else "")
        print(f"profile {profile.name}: {len(data.samples)} images, {len(data.classes)} classes, {where}",
              file=sys.stderr)  # fmt: skip
    rows = []
    for arch in backbones:
        start = time.perf_counter()
        res = train_backbone(
            profile,
            arch,
            data,
            dist.device,
            args.cache_dir or _default_cache(),
            progress=progress,
            force=args.force,
            dist=dist,
            precision=args.precision,
            keep_epochs=args.keep_epochs,
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
    if dist.main:
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
    _add_baseline(sub)
    _add_gate(sub)
    _add_export(sub)
    _add_study(sub)
    _add_track(sub)
    _add_calibrate(sub)
    _add_validate(sub)
    _add_approve(sub)
    for p in sub.choices.values():
        if not any(a.dest == "no_progress" for a in p._actions):
            p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument(
            "--threads", type=_positive, default=None, help="CPU threads for torch (default: torch's choice)"
        )
    return parser


def _fixed_mmap_threshold() -> None:
    """Keeps glibc from growing the heap batch after batch.

    glibc raises its mmap threshold after a large block is freed, so later large
    tensors come from the heap, which fragments and is not returned: a gate's
    peak RSS then grows with the number of batches (measured: +37 MiB per 100
    audit images). A fixed threshold keeps each large buffer in its own mapping,
    returned to the system when freed. No effect outside glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # musl, or no libc.so.6
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code; never raises for expected failures."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    _fixed_mmap_threshold()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.threads is not None:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(args.threads)
            try:
                return int(args.func(args))
            finally:
                torch.set_num_threads(threads)  # main() is also called in-process
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
