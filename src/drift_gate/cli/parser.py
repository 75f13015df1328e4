"""The argument parser: one subcommand per command; options that several commands
share come from parent parsers, so each is defined once. Building it imports no torch.

Size: every command's options, each defined once; docs/reference/cli.md is generated from
it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeAlias

from drift_gate._version import __version__
from drift_gate.cli import commands

__all__ = ["build_parser"]

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _threads(text: str) -> int:
    """argparse type: a thread count from 1 to 1024 (more has crashed torch's thread pool)."""
    value = _positive(text)
    if value > 1024:
        raise argparse.ArgumentTypeError(f"must be at most 1024, got {value}")
    return value


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


def _parent(*adders: tuple[str, dict[str, Any]]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    for flag, kwargs in adders:
        p.add_argument(flag, **kwargs)
    return p


#: Options shared by commands, each defined once.
COMMON = _parent(
    ("--no-progress", {"action": "store_true", "help": "no progress bars"}),
    (
        "--threads",
        {"type": _threads, "default": None, "help": "CPU threads for torch (default: torch's choice)"},
    ),
    (
        "--allow-outside-data-root",
        {
            "action": "store_true",
            "help": "read images and masks that lie outside the data root (by path or symlink)",
        },
    ),
)
DEVICE = _parent(("--device", {"default": "auto", "help": "auto, cpu or cuda[:N]"}))
BATCH = _parent(("--batch-size", {"type": _positive, "default": 16, "help": "images per batch"}))
PROFILES = _parent(("--profiles", {"type": Path, "default": Path("profiles.toml"), "help": "profiles file"}))
THRESHOLDS = _parent(
    ("--thresholds", {"type": Path, "default": Path("thresholds.toml"), "help": "the gate's rules"})
)
REFERENCES = _parent(
    ("--profile", {"default": "demo", "help": "profile whose TL checkpoints are the references"}),
    ("--per-class", {"type": _positive, "default": 10, "help": "audit images per class"}),
)
PRECISION = _parent(
    (
        "--precision",
        {
            "choices": ("fp32", "bf16"),
            "default": "fp32",
            "help": "bf16: under bfloat16 autocast (for GPUs; check the verdict against fp32)",
        },
    )
)


def _command(sub: _Sub, name: str, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, parents=[COMMON, *parents])
    p.set_defaults(func=getattr(commands, f"cmd_{name.replace('-', '_')}"))
    return p


def _add_data(sub: _Sub) -> None:
    p = _command(sub, "data", "write the embedded phantom data set to a folder")
    p.add_argument("--out", type=Path, default=Path("data/phantoms"), help="output folder")
    p.add_argument("--n-per-class", type=_positive, default=100, help="images per class (at least 5)")
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


def _add_train(sub: _Sub) -> None:
    p = _command(sub, "train", "train TL and FT checkpoints for a profile's backbones", DEVICE, PROFILES)
    p.add_argument("--profile", default="demo", help="profile name in the profiles file")
    p.add_argument(
        "--backbone", action="append", dest="backbones", help="train only this backbone (repeatable)"
    )
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
        help="bf16: fine-tune under bfloat16 autocast",
    )


def _model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="MODEL_TOML",
        help="model spec of a state dict drift-gate did not train (torchvision, timm, Hugging Face, "
        "torchxrayvision or your own class; see docs/how-to/own-model.md)",
    )


def _add_baseline(sub: _Sub) -> None:
    p = _command(
        sub, "baseline", "store a reference checkpoint's CAMs on a fixed audit set", DEVICE, BATCH, THRESHOLDS
    )
    p.add_argument(
        "--reference", type=Path, required=True, help="reference checkpoint (e.g. tl.pt) or state dict"
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help=(
            "data set: a manifest, a folder of class subfolders, or a public data set's folder as it "
            "ships (NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG, RSNA Pneumonia, COVID-QU-Ex)"
        ),
    )
    p.add_argument(
        "--uncertain",
        choices=("zeros", "ones", "ignore"),
        default="zeros",
        help="CheXpert / MIMIC-CXR uncertain labels (-1): negative, positive, or leave the image out",
    )
    _model_option(p)
    p.add_argument(
        "--out", type=Path, default=None, help="baseline folder (default baselines/<arch or model name>)"
    )
    p.add_argument("--per-class", type=_positive, default=10, help="audit images per class")
    _key_options(p, public=False, signing=True)


def _add_gate(sub: _Sub) -> None:
    p = _command(
        sub,
        "gate",
        "gate candidate checkpoints against the stored baselines",
        DEVICE,
        BATCH,
        PROFILES,
        THRESHOLDS,
        PRECISION,
    )
    p.add_argument(
        "--candidate",
        type=Path,
        action="append",
        default=[],
        help="candidate checkpoint, or state dict with --model (repeatable)",
    )
    _model_option(p)
    p.add_argument(
        "--profile", default=None, help="gate every FT checkpoint that `train --profile NAME` wrote"
    )
    p.add_argument(
        "--backbone",
        action="append",
        dest="backbones",
        help="with --profile: only this backbone (repeatable), as `train --backbone`",
    )
    p.add_argument(
        "--create-missing-baselines",
        action="store_true",
        help="with --profile: make missing baselines from the TL checkpoints",
    )
    p.add_argument(
        "--baselines",
        type=Path,
        default=None,
        help="baselines root (default: the profile's, else baselines; the demo's are made from its TL)",
    )
    p.add_argument("--data", type=Path, default=None, help="data root holding the audit images")
    p.add_argument(
        "--reference", type=Path, default=None, help="check that the baseline was made from this checkpoint"
    )
    p.add_argument("--reports", type=Path, default=Path("reports"), help="report folder")
    _key_options(p, public=True, signing=True)
    p.add_argument(
        "--no-onnx", action="store_true", help="predict with the checkpoint even if <stem>.onnx is beside it"
    )
    p.add_argument(
        "--mlflow",
        default=None,
        metavar="URI",
        help="also log each candidate as an MLflow run to this tracking URI (needs drift-gate[mlflow])",
    )
    p.add_argument(
        "--mlflow-experiment", default="drift-gate", help="the MLflow experiment (default: drift-gate)"
    )


def _add_export(sub: _Sub) -> None:
    p = _command(
        sub,
        "export",
        "export checkpoints to ONNX (<stem>.onnx beside each), checked for parity on the audit images",
        DEVICE,
        BATCH,
        PROFILES,
    )
    p.add_argument("--checkpoint", type=Path, action="append", default=[], help="checkpoint (repeatable)")
    _model_option(p)
    p.add_argument(
        "--profile", default=None, help="export the TL and FT checkpoints of `train --profile NAME`"
    )
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
        default=None,
        help="use <baselines>/<arch>'s audit set when there is one (default: the profile's, else "
        "baselines; without one: --per-class test images)",
    )
    p.add_argument(
        "--per-class", type=_positive, default=10, help="audit images per class without a baseline"
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="max relative logit difference allowed")


def _add_study(sub: _Sub) -> None:
    p = _command(
        sub,
        "study",
        "the study's protocol table (TL vs FT drift, rankings) for a profile",
        DEVICE,
        BATCH,
        PROFILES,
    )
    p.add_argument("--profile", default="demo", help="profile whose TL and FT checkpoints are studied")
    p.add_argument(
        "--methods",
        default="layercam,gradcam++,ablationcam",
        help="comma-separated CAM methods (default includes the gradient-free Ablation-CAM)",
    )
    p.add_argument("--per-class", type=_positive, default=1000, help="test images per class (default: all)")
    p.add_argument("--out", type=Path, default=Path("reports/study"), help="output folder")


def _add_track(sub: _Sub) -> None:
    p = _command(
        sub,
        "track",
        "drift of every fine-tuning epoch (train --keep-epochs) vs TL and vs the last",
        DEVICE,
        BATCH,
        THRESHOLDS,
    )
    p.add_argument(
        "--checkpoints", type=Path, required=True, help="a backbone's folder (tl.pt, ft.epoch<k>.pt)"
    )
    p.add_argument("--data", type=Path, required=True, help="data set (folder or manifest)")
    p.add_argument("--baselines", type=Path, default=None, help="baselines root made from this TL checkpoint")
    p.add_argument(
        "--per-class", type=_positive, default=10, help="audit images per class for a new baseline"
    )
    p.add_argument("--out", type=Path, default=Path("reports/track"), help="output folder")


def _add_calibrate(sub: _Sub) -> None:
    p = _command(
        sub,
        "calibrate",
        "measure each metric's noise (seed-to-seed fine-tunes, bootstrap) and propose thresholds",
        DEVICE,
        BATCH,
        PROFILES,
        THRESHOLDS,
        REFERENCES,
    )
    p.add_argument(
        "--runs",
        type=_positive,
        default=3,
        help="fine-tuning runs per backbone, seeds = profile seed, +1, ... (the profile's ft.pt is the "
        "first); 1 = bootstrap over audit samples only",
    )
    p.add_argument(
        "--vary",
        default="",
        help="further noise sources, comma-separated: tl (a retrained TL reference), pretrain (a re-run "
        "of the synthetic pretraining), each one retrained TL + FT pair per backbone gated against its "
        "own reference (tl:N, pretrain:N: N pairs, with the next N seeds); and emulated machines "
        "(aten:default, cpu:avx2, cpu:sse41, threads:N, gpu, "
        "joined by +), each one fine-tune of the TL in a process of its own, as many at once as the "
        "cores allow; pretrain:A-B: draws A to B (new draws for a calibration that pools earlier runs)",
    )
    p.add_argument(
        "--add-runs",
        type=Path,
        action="append",
        default=[],
        metavar="RUNS_JSON",
        help="pool the runs of an earlier calibration (its runs.json: another session's or machine's) "
        "with this one's; refused unless made by the same code, rules, training settings and audit set "
        "(repeatable)",
    )
    p.add_argument(
        "--stored-only",
        action="store_true",
        help="propose from the --add-runs files alone: no training or gating (no checkpoints or data needed)",
    )
    p.add_argument(
        "--k",
        type=_positive_float,
        default=None,
        help="noise widths between centre and bound (default: the one-sided normal tolerance factor for "
        "the number of runs: 99%% of the next honest runs inside, with 95%% confidence)",
    )
    p.add_argument("--out", type=Path, default=Path("reports/calibrate"), help="output folder")


#: studies.validate.CONTROLS, spelled out so that building the parser imports no torch.
_CONTROLS = (
    "self",
    "permuted",
    "seed",
    "randomised",
    "honest",
    "shortcut",
    "marker",
    "marker-twin",
    "drain",
    "drain-twin",
)


def _add_validate(sub: _Sub) -> None:
    p = _command(
        sub,
        "validate",
        "run the gate on controls with known verdicts (self, permuted, another seed, planted shortcuts "
        "and their uninformative twin, a randomised model)",
        DEVICE,
        BATCH,
        PROFILES,
        THRESHOLDS,
        REFERENCES,
    )
    p.add_argument(
        "--controls", default=",".join(_CONTROLS), help=f"comma-separated subset of {','.join(_CONTROLS)}"
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
        help="share of the biased set's disease images without findings",
    )
    p.add_argument(
        "--shortcut-per-class",
        type=_positive,
        default=60,
        help="audit images per class of the held-out biased set (only true positives count)",
    )
    p.add_argument("--out", type=Path, default=Path("reports/validate"), help="output folder")


def _add_approve(sub: _Sub) -> None:
    p = _command(sub, "approve", "record a reviewed gate result as the approved one")
    p.add_argument("--result", type=Path, default=Path("reports/gate.json"), help="gate.json to approve")
    p.add_argument("--candidate", default=None, help="only this candidate of the result")
    p.add_argument(
        "--force",
        action="store_true",
        help="approve a candidate that did not pass (recorded as forced in the baseline's history)",
    )
    p.add_argument(
        "--by",
        default=None,
        help="who approves, recorded in the baseline's history (default: $GITHUB_ACTOR, else your user name)",
    )
    _key_options(p, public=True, signing=True)


def _key_options(p: argparse.ArgumentParser, public: bool, signing: bool) -> None:
    if public:
        p.add_argument(
            "--public-key",
            type=Path,
            default=None,
            help=(
                "verify signatures with this Ed25519 public key, or with any key of a ring of several "
                "concatenated in one PEM file (default: $DRIFT_GATE_PUBLIC_KEY)"
            ),
        )
    if signing:
        p.add_argument(
            "--signing-key",
            type=Path,
            default=None,
            help="sign what is written with this private key (default: $DRIFT_GATE_SIGNING_KEY)",
        )


def _add_keygen(sub: _Sub) -> None:
    p = _command(sub, "keygen", "make an Ed25519 key pair for signed baselines and gate results")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.key (private, mode 0600) and OUT.pub")


def _add_bundle(sub: _Sub) -> None:
    p = _command(
        sub,
        "bundle",
        "write a change-control evidence bundle (one .tar per candidate) from a gate result",
    )
    p.add_argument("--result", type=Path, default=Path("reports/gate.json"), help="the gate's gate.json")
    p.add_argument("--candidate", default=None, help="only this candidate of the result")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the bundles (default: the result's), or a .tar file for one candidate",
    )
    _key_options(p, public=False, signing=True)


def _add_verify_bundle(sub: _Sub) -> None:
    p = _command(
        sub,
        "verify-bundle",
        "check an evidence bundle: every file against its manifest, and its signature (exit 1 if not)",
    )
    p.add_argument("bundle", type=Path, help="the bundle (.tar)")
    _key_options(p, public=True, signing=False)


def build_parser() -> argparse.ArgumentParser:
    """The ``drift-gate`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="drift-gate",
        description="Regression gate for the evidence (CAMs) behind medical-imaging models.",
    )
    parser.add_argument("--version", action="version", version=f"drift-gate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_data,
        _add_train,
        _add_baseline,
        _add_gate,
        _add_export,
        _add_study,
        _add_track,
        _add_calibrate,
        _add_validate,
        _add_approve,
        _add_bundle,
        _add_verify_bundle,
        _add_keygen,
    ):
        add(sub)
    return parser
