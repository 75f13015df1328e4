"""One short function per command: parsed arguments -> :mod:`drift_gate.api` -> printed
result and exit code. Heavy modules are imported inside the functions, so building the
parser stays cheap."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drift_gate import api
from drift_gate.cli.streams import flush_stdout, stdout_failed
from drift_gate.studies import api as studies

if TYPE_CHECKING:
    from drift_gate.distributed import Dist

__all__ = [
    "cmd_approve",
    "cmd_baseline",
    "cmd_calibrate",
    "cmd_data",
    "cmd_export",
    "cmd_gate",
    "cmd_study",
    "cmd_track",
    "cmd_train",
    "cmd_validate",
]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """The options every computing command passes on as they were parsed."""
    return {"device": args.device, "batch_size": args.batch_size, "progress": _progress(args), "log": _log}


def _in_process_group(body: Callable[[argparse.Namespace, Dist], int]) -> Callable[[argparse.Namespace], int]:
    """A command that joins the torchrun process group (if any) for its run."""

    def run(args: argparse.Namespace) -> int:
        from drift_gate.distributed import init, shutdown
        from drift_gate.models.inference import resolve_device

        dist = init(resolve_device(args.device))
        try:
            return body(args, dist)
        finally:
            shutdown(dist)

    return run


def cmd_data(args: argparse.Namespace) -> int:
    manifest = api.phantoms(
        out=args.out,
        n_per_class=args.n_per_class,
        size=args.size,
        seed=args.seed,
        shortcut=args.shortcut,
        occult=args.occult,
        progress=_progress(args),
    )
    print(f"wrote {manifest}")
    return 0


def _train(args: argparse.Namespace, dist: Dist) -> int:
    results = api.train(
        profile=args.profile,
        profiles=args.profiles,
        backbones=args.backbones,
        cache_dir=args.cache_dir,
        force=args.force,
        keep_epochs=args.keep_epochs,
        precision=args.precision,
        progress=_progress(args),
        log=_log if dist.main else lambda m: None,
        dist=dist,
    )
    if dist.main:
        print(
            f"{'backbone':<14}{'TL val AUC':>12}{'FT val AUC':>12}{'TL test AUC':>13}"
            f"{'FT test AUC':>13}{'time':>9}"
        )
        for arch, r in results.items():
            m = {(p, s): r.metrics[p][s]["auc_macro"] for p in ("tl", "ft") for s in ("val", "test")}
            print(
                f"{arch:<14}{m['tl', 'val']:>12.4f}{m['ft', 'val']:>12.4f}{m['tl', 'test']:>13.4f}"
                f"{m['ft', 'test']:>13.4f}{r.seconds or 0:>8.0f}s"
            )
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    base = api.baseline(
        reference=args.reference,
        data=args.data,
        model=args.model,
        out=args.out,
        thresholds=args.thresholds,
        per_class=args.per_class,
        uncertain=args.uncertain,
        signing_key=args.signing_key,
        **_run(args),
    )
    size = sum(f.stat().st_size for f in base.path.iterdir() if f.is_file())
    print(f"wrote baseline {base.path} ({size / 1024:.0f} KiB)")
    return 0


def _gate(args: argparse.Namespace, dist: Dist) -> int:
    from drift_gate.gating.report import console_table

    result = api.gate(
        candidates=args.candidate,
        data=args.data,
        model=args.model,
        baselines=args.baselines,
        thresholds=args.thresholds,
        profile=args.profile,
        profiles=args.profiles,
        backbones=args.backbones,
        create_missing_baselines=args.create_missing_baselines,
        reference=args.reference,
        reports=args.reports,
        batch_size=args.batch_size,
        onnx=not args.no_onnx,
        precision=args.precision,
        public_key=args.public_key,
        signing_key=args.signing_key,
        mlflow=args.mlflow,
        mlflow_experiment=args.mlflow_experiment,
        progress=_progress(args) and dist.main,
        log=_log,
        dist=dist,
    )
    if dist.main:
        try:
            print(console_table(result))
        except OSError as exc:
            stdout_failed(exc)
        flush_stdout()
        _log(f"reports: {', '.join(str(p) for p in result.report_paths.values())}")
    return result.exit_code


def cmd_export(args: argparse.Namespace) -> int:
    for e in api.export(
        checkpoints=args.checkpoint,
        model=args.model,
        profile=args.profile,
        profiles=args.profiles,
        backbones=args.backbones,
        data=args.data,
        baselines=args.baselines,
        per_class=args.per_class,
        tolerance=args.tolerance,
        **_run(args),
    ):
        p = e.parity
        print(
            f"wrote {e.path} ({e.path.stat().st_size / 2**20:.1f} MiB): ONNX Runtime ({p.provider}) vs torch "
            f"on {p.n} audit images, max relative logit difference {p.max_rel_diff:.2g}"
        )
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from drift_gate.studies.study import study_markdown

    result = studies.study(
        profile=args.profile,
        profiles=args.profiles,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        per_class=args.per_class,
        out=args.out,
        **_run(args),
    )
    print(study_markdown(result))
    _log(f"wrote {args.out}/study.md, study.json, study.png, study.html")
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    result = studies.track(
        checkpoints=args.checkpoints,
        data=args.data,
        thresholds=args.thresholds,
        baselines=args.baselines,
        per_class=args.per_class,
        out=args.out,
        device=args.device,
        batch_size=args.batch_size,
        progress=_progress(args),
    )
    print((args.out / "track.md").read_text(), end="")
    _log(f"wrote {args.out}/track.md, track.json, track.png ({len(result.rows)} epochs)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from drift_gate.studies.calibrate_report import calibration_markdown

    cal = studies.calibrate(
        profile=args.profile,
        profiles=args.profiles,
        thresholds=args.thresholds,
        runs=args.runs,
        vary=tuple(v.strip() for v in args.vary.split(",") if v.strip()),
        k=args.k,
        per_class=args.per_class,
        out=args.out,
        add_runs=tuple(args.add_runs),
        stored_only=args.stored_only,
        **_run(args),
    )
    print(calibration_markdown(cal))
    runs = "" if args.stored_only else ", runs.json"
    _log(f"wrote {args.out}/thresholds.proposed.toml, calibration.md, calibration.json{runs}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from drift_gate.studies.validate_report import validation_markdown

    result = studies.validate(
        profile=args.profile,
        profiles=args.profiles,
        thresholds=args.thresholds,
        controls=[c.strip() for c in args.controls.split(",") if c.strip()],
        seed=args.seed,
        shortcut=args.shortcut,
        occult=args.occult,
        per_class=args.per_class,
        shortcut_per_class=args.shortcut_per_class,
        out=args.out,
        **_run(args),
    )
    print(validation_markdown(result))
    _log(f"wrote {args.out}/validate.md, validate.json")
    return 0 if result.ok else 1


def cmd_approve(args: argparse.Namespace) -> int:
    for approval in api.approve(
        result=args.result,
        candidate=args.candidate,
        force=args.force,
        by=args.by,
        public_key=args.public_key,
        signing_key=args.signing_key,
    ):
        print("\n".join(approval.changes))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    for path in api.bundle(
        result=args.result, out=args.out, candidate=args.candidate, signing_key=args.signing_key
    ):
        print(f"wrote {path}")
    return 0


def cmd_verify_bundle(args: argparse.Namespace) -> int:
    check = api.verify_bundle(path=args.bundle, public_key=args.public_key)
    signed = f"signed by key {check.signed_by}" if check.signed_by else "signature not checked"
    print(
        f"{check.path}: OK: {check.files} files match the manifest ({signed}); candidate "
        f"{check.candidate}, verdict {check.verdict}, {check.approvals} approval(s)"
    )
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    private, public = api.keygen(out=args.out)
    print(f"wrote {private} (private: keep it secret, e.g. a CI secret) and {public} (public: commit it)")
    return 0


cmd_gate = _in_process_group(_gate)
cmd_train = _in_process_group(_train)
