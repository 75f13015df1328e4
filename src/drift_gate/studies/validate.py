"""``drift-gate validate``: the gate run on controls whose right verdict is known.

For every backbone of a profile (its TL checkpoint is the reference):

==============  =====================================================  =========
control         candidate                                              expected
==============  =====================================================  =========
``self``        the reference itself: every metric at its ideal value  pass
``permuted``    the reference with its target-layer channels permuted  pass
                (:mod:`drift_gate.controls`): the same function, other
                weights; its maps must equal the reference's
``seed``        an ordinary fine-tune of the reference with a seed     pass
                that calibration did not use
``shortcut``    a reference trained (TL) on phantoms whose lead strip  fail
                is uninformative, fine-tuned on phantoms whose strip
                predicts the class (half the disease images without
                visible findings, so only the strip explains their
                labels), gated on equally biased, held-out audit
                images: its AUC holds, its evidence moves
``randomised``  the reference with its head and last block             caught by
                re-initialised: its maps no longer explain a trained   [sanity]
                model, and the sanity check must say so
``marker``      another cue and regime: a reference trained on         fail
                phantoms with a burned-in label box in the
                bottom-right corner whose grey level is
                uninformative, fine-tuned where it predicts the
                class, every finding visible (the cue competes with
                real evidence), gated on held-out biased images
``marker-twin`` the same fine-tune on the same patients, findings      pass
                and boxes, the grey level uninformative (the
                reference's own data), gated on the same biased
                images: a catch of ``marker`` must be specific
``drain``       a third cue, inside the anatomy: a chest drain over     fail
                the lung field whose entry height predicts the class
                (:mod:`drift_gate.data.shortcut`), findings visible
``drain-twin``  the same fine-tune, the drain's height uninformative   pass
``honest``      held-out honest updates: fine-tunes with seeds         pass
                calibration never used, each on every emulated
                machine of :data:`HONEST_MACHINES` (another ATen
                kernel set, one thread): the false-fail rate
==============  =====================================================  =========

A cue's audit images are a held-out draw of biased phantoms (the next seed), large
enough for ``shortcut_per_class`` test images per class, with their own baseline (the
cue reference's maps on them), so the only difference the gate can see is the
candidate's. The clean controls use the gate's audit set (what ``calibrate``
measured). Every candidate is gated with the given ``thresholds.toml`` by the same
:func:`~drift_gate.gate.run_gate` as ``drift-gate gate``. Besides the verdicts,
the share of each map's mass on the planted strip (``cue energy``) shows
*where* the shortcut candidate's evidence went.

Whether a cue candidate is a shortcut at all is measured, not assumed: its accuracy on the
audit images against the same images with only the cue redrawn in another class's form
(:mod:`drift_gate.studies.cue_swap`). A ``shortcut``, ``marker`` or ``drain`` candidate
that loses fewer than :data:`SHORTCUT_MIN_POINTS` points has learnt the findings rather
than the cue: its verdict is reported (expected :data:`WEAK_CUE`), not counted as a miss.

Size: every control and its bench in one module, whose docstring is the table of what each
control expects; the report is written by :mod:`drift_gate.studies.validate_report`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_gate._io import atomic_write_text, default_cache_dir
from drift_gate.data.datasets import DataSet, load_dataset
from drift_gate.data.phantom_set import generate_dataset
from drift_gate.data.phantoms import SPLIT_SHARES
from drift_gate.data.shortcut import cue_masks
from drift_gate.errors import ConfigError
from drift_gate.evidence.cam import minmax, upsample
from drift_gate.evidence.metrics import localisation
from drift_gate.evidence.registry import LOCALISATION_METRICS, METRICS
from drift_gate.evidence.sanity import randomised_copy
from drift_gate.gating.baseline import create_baseline
from drift_gate.gating.gate import CandidateResult, run_gate
from drift_gate.gating.rules import FAIL, INCONCLUSIVE, PASS, decide_verdict
from drift_gate.gating.thresholds import Thresholds
from drift_gate.models.checkpoint import load_checkpoint, save_checkpoint
from drift_gate.studies.controls import write_permuted_candidate
from drift_gate.studies.cue_swap import cue_reliance, swapped_cue_set
from drift_gate.studies.machines import MachineJob, parse_machine, run_jobs
from drift_gate.studies.validate_report import (
    ControlRow,
    ValidationResult,
    deciding_rules,
    decision_margin,
    validation_markdown,
)
from drift_gate.training.pipeline import finetune_from, train_backbone
from drift_gate.training.profiles import Profile

__all__ = [
    "CONTROLS",
    "PERMUTED_TOLERANCE",
    "RANDOMISED_CONTROL",
    "SELF_TOLERANCE",
    "SHORTCUT_LABEL",
    "SHORTCUT_MIN_POINTS",
    "WEAK_CUE",
    "phantoms_with_strip",
    "run_validation",
]


CONTROLS = (
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
#: The held-out honest runs (``honest``): fine-tunes with seeds ``profile seed + 20 ...``
#: (calibration uses the first few after the profile's), each under every emulated machine.
HONEST_SEEDS, HONEST_FIRST_SEED = 5, 20
HONEST_MACHINES = ("aten:default", "threads:1")
#: What the ``randomised`` control re-initialises, and its seed (not the sanity check's own).
RANDOMISED_CONTROL = ("head+block", 7)
#: The label a planted shortcut must get: the evidence moved, the AUC did not.
SHORTCUT_LABEL = "evidence drift despite stable AUC"
#: Points of accuracy a shortcut candidate must lose with its cue swapped (drawn in another
#: class's form, :mod:`drift_gate.studies.cue_swap`) to count as a shortcut that the gate
#: must fail; below it the control's verdict is reported, not judged.
SHORTCUT_MIN_POINTS = 10.0
#: What a cue control whose candidate carries fewer points expects: nothing is judged.
WEAK_CUE = f"reported: its cue carries < {SHORTCUT_MIN_POINTS:g} points"
#: Largest |metric - ideal| accepted for the reference gated against itself (the
#: maps are recomputed, so only float rounding separates them from the stored ones).
SELF_TOLERANCE = 1e-3
#: Largest difference between the permuted candidate's min-max normalised maps and
#: the reference's, both computed now in float32 (only the summation order differs).
PERMUTED_TOLERANCE = 1e-4
Log = Callable[[str], None]


def _ideal_deviation(c: CandidateResult) -> dict[str, float]:
    """max |value - ideal| per metric over the selected samples (self control)."""
    out = {}
    chosen = np.array(c.selected, bool)
    for method, values in c.per_sample.items():
        for metric, vals in values.items():
            spec = METRICS.get(metric)
            if spec is None or spec.ideal is None:
                continue
            v = np.array([np.nan if x is None else x for x in vals], float)[chosen]
            v = v[~np.isnan(v)]
            if len(v):
                out[f"{method}/{metric}"] = float(np.abs(v - spec.ideal).max())
        if "pointing_game" in values:
            a = np.array([np.nan if x is None else x for x in values["pointing_game"]], float)
            b = np.array([np.nan if x is None else x for x in values["reference_pointing_game"]], float)
            both = chosen & ~np.isnan(a) & ~np.isnan(b)
            if both.any():
                out[f"{method}/pointing_game vs reference"] = float(np.abs(a - b)[both].max())
    return out


def _normalised(maps: np.ndarray) -> torch.Tensor:
    return minmax(torch.from_numpy(np.asarray(maps, dtype=np.float64)))


def _cue_energy(maps: dict[str, np.ndarray], cues: np.ndarray, size: int) -> dict[str, float]:
    """Mean share of each method's map mass on the cue (the strip): the mask energy of
    :func:`~drift_gate.metrics.localisation` with the cue as the mask."""
    return {
        method: float(np.nanmean(localisation(upsample(torch.from_numpy(m), size), cues)["mask_energy"]))
        for method, m in maps.items()
    }


def _localisation_summary(c: CandidateResult) -> dict[str, dict[str, float | None]]:
    return {
        method: {
            metric: c.summaries[method][metric]["overall"]["mean"]
            for metric in LOCALISATION_METRICS
            if metric in c.summaries[method]
        }
        for method in c.summaries
    }


def _row(control: str, expected: str, c: CandidateResult, ok: bool, detail: dict[str, Any]) -> ControlRow:
    detail = {
        **detail,
        "localisation": _localisation_summary(c),
        "margin": decision_margin(c),
        "machines": c.machines,
    }
    for metric in ("counterfactual_drop", "corner_drop"):  # mean score drops (map-free: the margin's share)
        drop = next((r.observed for r in c.rules if r.metric == metric), None)
        if drop is not None:
            detail[metric] = drop
    return ControlRow(
        control,
        c.arch,
        expected,
        c.verdict,
        c.label,
        ok,
        c.auc,
        c.reference_auc,
        c.n_selected,
        c.n_audit,
        deciding_rules(c),
        detail,
        c.candidate,
    )


def phantoms_with_strip(
    profile: Profile,
    out: Path,
    shortcut: float,
    occult: float,
    *,
    progress: bool,
    cue: str = "strip",
    n_per_class: int | None = None,
    seed: int | None = None,
) -> DataSet:
    """The profile's phantoms with a planted cue, the lead strip by default (generated once
    into ``out``); ``n_per_class`` and ``seed`` replace the profile's (another draw of
    patients)."""
    if profile.data != "phantoms":
        raise ConfigError(
            f"profile {profile.name!r}: the planted-shortcut control needs the phantom generator "
            "(data = 'phantoms'); leave it out with --controls self,permuted,seed"
        )
    p = profile.phantoms
    n = p.n_per_class if n_per_class is None else n_per_class
    seed = p.seed if seed is None else seed
    stamp = out / ".phantoms.json"
    settings = {"n_per_class": n, "size": p.size, "seed": seed, "shortcut": shortcut}
    want = json.dumps({**settings, "occult": occult, **({"cue": cue} if cue != "strip" else {})})
    if not ((out / "manifest.csv").is_file() and stamp.is_file() and stamp.read_text() == want):
        generate_dataset(
            out, n, seed=seed, size=p.size, progress=progress, shortcut=shortcut, occult=occult, cue=cue
        )
        atomic_write_text(stamp, want)
    return load_dataset(out)


_TEST_SHARE = dict(SPLIT_SHARES)["test"]


@dataclass
class _Bench:
    """What every control of one validation run shares."""

    profile: Profile
    data: DataSet
    thresholds: Thresholds
    out: Path
    device: torch.device
    batch_size: int
    progress: bool
    log: Log
    result: ValidationResult
    shortcut_per_class: int
    _reliance: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def reliance(self, checkpoint: Path, cue: _Cue) -> dict[str, float]:
        """How much ``checkpoint``'s accuracy on the cue's audit images falls with the cue
        swapped (:func:`~drift_gate.studies.cue_swap.cue_reliance`), computed once."""
        key = (str(checkpoint), cue.name)
        if key not in self._reliance:
            self._reliance[key] = cue_reliance(checkpoint, cue.audit, cue.swapped, batch_size=self.batch_size)
        return self._reliance[key]

    def gate(
        self, candidate: Path, base: Path, root: Path, thresholds: Thresholds | None = None
    ) -> tuple[CandidateResult, dict[str, Any]]:
        return run_gate(
            candidate,
            baselines=base,
            thresholds=thresholds or self.thresholds,
            data_root=root,
            device=self.device,
            batch_size=self.batch_size,
            progress=self.progress,
            use_onnx=False,
        )

    def add(self, control: str, expected: str, c: CandidateResult, ok: bool, detail: dict[str, Any]) -> None:
        self.result.rows.append(_row(control, expected, c, ok, detail))


def _self_and_permuted(b: _Bench, arch: str, tl: Path, base: Path, controls: tuple[str, ...]) -> None:
    """The reference against itself (every metric at its ideal) and its channel-permuted
    twin (the same function, so the same maps)."""
    c, own = b.gate(tl, base, b.data.root)
    if "self" in controls:
        dev = _ideal_deviation(c)
        worst = max(dev.values(), default=0.0)
        ok = c.verdict == PASS and worst <= SELF_TOLERANCE
        b.add("self", PASS, c, ok, {"max_deviation_from_ideal": worst, "deviations": dev})
        b.log(f"[{arch}] self: {c.verdict} (max |metric - ideal| {worst:.2e})")
    if "permuted" in controls:
        permuted = write_permuted_candidate(tl, b.out / "candidates" / arch / "tl.permuted.pt", seed=1)
        c, art = b.gate(permuted, base, b.data.root)
        diff = max(
            float((_normalised(art["candidate"][m]) - _normalised(own["candidate"][m])).abs().max())
            for m in b.thresholds.methods
        )
        ok = c.verdict == PASS and diff <= PERMUTED_TOLERANCE
        b.add("permuted", PASS, c, ok, {"max_map_difference": diff})
        b.log(f"[{arch}] permuted: {c.verdict} (max normalised map difference {diff:.2e})")


def _seed_control(b: _Bench, arch: str, tl: Path, base: Path, seed: int) -> None:
    """A fine-tune of the reference with a seed calibration did not use: must pass."""
    b.log(f"[{arch}] seed control: fine-tuning with seed {seed}")
    phase = b.profile.phase_for(arch, "ft")
    cand = finetune_from(
        tl,
        b.data,
        phase,
        out=b.out / "candidates" / arch / f"ft.seed{seed}.pt",
        seed=seed,
        batch_size=b.profile.batch_size,
        device=b.device,
        progress=b.progress,
        log=b.log,
    )
    c, _ = b.gate(cand, base, b.data.root)
    b.add("seed", PASS, c, c.verdict == PASS, {"seed": seed})
    b.log(f"[{arch}] seed: {c.verdict} ({c.label})")


def _honest_control(
    b: _Bench, arch: str, tl: Path, base: Path, n_seeds: int, machines: tuple[str, ...]
) -> None:
    """Held-out honest updates: the TL fine-tuned with seeds calibration never saw, each
    under every emulated machine of :data:`HONEST_MACHINES` (in processes of their own,
    side by side as the cores allow); each must pass. Their pass rate is the gate's
    false-fail rate on honest runs, and the closest margin how near they came."""
    cfg = b.profile.phase_for(arch, "ft")
    seeds = [b.profile.seed + HONEST_FIRST_SEED + i for i in range(n_seeds)]
    jobs = [
        MachineJob(
            parse_machine(m),
            str(tl),
            str(b.data.root),
            str(b.out / "candidates" / arch / f"ft.honest-{seed}-{m.replace(':', '-').replace('+', '_')}.pt"),
            seed,
            b.profile.batch_size,
            cfg.epochs,
            cfg.lr,
            cfg.weight_decay,
        )
        for seed in seeds
        for m in machines
    ]
    b.log(
        f"[{arch}] honest runs: {len(jobs)} fine-tunes (seeds {seeds[0]}-{seeds[-1]} on "
        f"{', '.join(machines)})"
    )
    for job, path in zip(jobs, run_jobs(jobs, b.log), strict=True):
        c, _ = b.gate(path, base, b.data.root)
        b.add("honest", PASS, c, c.verdict == PASS, {"seed": job.seed, "machine": job.machine.name})
        b.log(f"[{arch}] honest seed {job.seed} on {job.machine.name}: {c.verdict} ({deciding_rules(c)[0]})")


@dataclass(frozen=True)
class _Cue:
    """The data sets of one planted cue's controls."""

    name: str
    #: the reference's training data: the cue present, uninformative
    uninformative: DataSet
    #: the shortcut's training data: the cue predicts the class
    biased: DataSet
    #: held-out biased images (another phantom seed) whose test split is the audit set
    audit: DataSet
    audit_seed: int
    #: the audit set's test images with only the cue redrawn in another class's form
    swapped: DataSet


def _cue_reference(b: _Bench, arch: str, cue: _Cue, cache_dir: Path) -> Path:
    """A TL reference trained on phantoms whose cue is present but uninformative, and its
    baseline on the held-out biased audit images."""
    b.log(f"[{arch}] {cue.name} controls: reference = TL on phantoms whose {cue.name} is uninformative")
    ref_profile = replace(b.profile, out=str(b.out / f"{cue.name}-reference"))
    reference = train_backbone(
        ref_profile,
        arch,
        cue.uninformative,
        b.device,
        cache_dir=cache_dir,
        progress=b.progress,
        log=b.log,
        phases=("tl",),
    ).checkpoints["tl"]
    base = b.out / "baselines" / f"{cue.name}-shortcut" / arch
    create_baseline(
        reference,
        cue.audit,
        base,
        b.thresholds.methods,
        per_class=b.shortcut_per_class,
        device=b.device,
        batch_size=b.batch_size,
        progress=b.progress,
        paired=b.thresholds,
    )
    return reference


def _without_floors_the_reference_misses(c: CandidateResult) -> tuple[CandidateResult, list[str]]:
    """``c`` judged without the ``[auc] min`` floor where its cue reference's own macro AUC
    on the cue's audit images is below it, and the floor's message.

    A cue control asks whether the gate tells a shortcut from its uninformative twin by the
    evidence; a floor that the reference trained on those images misses too says how hard
    the biased images are, not what the fine-tune changed. The drop below the reference
    (``max_drop``) and every evidence rule still judge it; the floor's outcome stays in the
    row's detail.
    """
    waived = [
        r
        for r in c.rules
        if r.rule == f"{c.arch}/auc.min" and r.bound is not None and c.reference_auc < r.bound
    ]
    if not waived:
        return c, []
    rules = [r for r in c.rules if r not in waived]
    verdict, label = decide_verdict(rules)
    notes = [
        f"{r.rule} waived ({r.status}: candidate {c.auc:.4f}): the cue reference's own AUC "
        f"{c.reference_auc:.4f} is below the floor {r.bound:g}"
        for r in waived
    ]
    return replace(c, rules=rules, verdict=verdict, label=label), notes


def _cue_control(
    b: _Bench,
    control: str,
    arch: str,
    reference: Path,
    train_on: DataSet,
    cue: _Cue,
    detail: dict[str, Any],
) -> None:
    """A fine-tune of ``reference`` on ``train_on``, gated on the cue's held-out audit
    images against the reference's maps on them (:func:`_cue_reference` made the
    baseline); ``shortcut`` and ``marker`` must fail as evidence drift, ``marker-twin``
    must pass."""
    profile = b.profile
    base = b.out / "baselines" / f"{cue.name}-shortcut"
    b.log(f"[{arch}] {control} control: fine-tuning on {train_on.root}")
    cand = finetune_from(
        reference,
        train_on,
        profile.phase_for(arch, "ft"),
        out=b.out / "candidates" / arch / f"ft.{control}.pt",
        seed=profile.seed,
        batch_size=profile.batch_size,
        device=b.device,
        progress=b.progress,
        log=b.log,
    )
    c, art = b.gate(cand, base, cue.audit.root)
    cues = cue_masks(c.sample_ids, cue.audit_seed, detail["correlation"], art["size"], cue.name)
    energy = {
        "reference": _cue_energy(art["reference"], cues, art["size"]),
        "candidate": _cue_energy(art["candidate"], cues, art["size"]),
        "strip_area": float(cues.mean()),
    }
    c, waived = _without_floors_the_reference_misses(c)
    if waived:
        detail = {**detail, "waived": waived}
    reliance = {"reference": b.reliance(reference, cue), "candidate": b.reliance(cand, cue)}
    points = reliance["candidate"]["points"]
    expected: str
    if control.endswith("-twin"):
        expected, ok = PASS, c.verdict == PASS
    elif points >= SHORTCUT_MIN_POINTS:
        expected, ok = FAIL, c.verdict == FAIL and c.label == SHORTCUT_LABEL
    else:  # not a shortcut by the swap: its verdict is reported, not judged
        expected, ok = WEAK_CUE, True
    b.add(control, expected, c, ok, {"cue_energy": energy, "cue": cue.name, "cue_swap": reliance, **detail})
    b.log(
        f"[{arch}] {control}: {c.verdict} ({c.label}); map mass on the {cue.name} {energy}; "
        f"{cue.name} swapped: accuracy {reliance['candidate']['accuracy']:.3f} -> "
        f"{reliance['candidate']['swapped_accuracy']:.3f} ({points:+.1f} points)"
    )


def _randomised_control(b: _Bench, arch: str, tl: Path, base: Path) -> None:
    """The reference with its head and last block re-initialised: the sanity check must
    find its maps insensitive to the model (whatever the AUC rules say)."""
    what, seed = RANDOMISED_CONTROL
    model, meta = load_checkpoint(tl, "cpu")
    path = b.out / "candidates" / arch / "tl.randomised.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, randomised_copy(model, what, seed), meta)
    thresholds = b.thresholds
    if thresholds.sanity_max_correlation is None:  # the documented example's check
        thresholds = replace(thresholds, sanity_randomise="head+block", sanity_max_correlation=0.6)
    c, _ = b.gate(path, base, b.data.root, thresholds)
    sanity = [r for r in c.rules if r.scope == "sanity"]
    ok = bool(sanity) and all(r.status == INCONCLUSIVE for r in sanity)
    observed = {r.method: r.observed for r in sanity}
    b.add("randomised", "caught by [sanity]", c, ok, {"randomised": what, "sanity": observed})
    b.log(f"[{arch}] randomised: {c.verdict} ({c.label}); sanity correlations {observed}")


def _cues(
    profile: Profile,
    out: Path,
    controls: tuple[str, ...],
    shortcut: float,
    occult: float,
    shortcut_per_class: int,
    progress: bool,
) -> tuple[_Cue | None, _Cue | None, _Cue | None]:
    """The data of each planted cue that ``controls`` asks for (strip, marker, drain)."""
    # The audit images of a cue: a held-out draw (the next phantom seed) as biased as the
    # shortcut's training data, large enough that its test split holds shortcut_per_class
    # images per class (its reference gets many of them wrong, and only true positives count).
    audit_n = max(profile.phantoms.n_per_class, math.ceil(shortcut_per_class / _TEST_SHARE))
    audit_seed = profile.phantoms.seed + 1

    def cue_sets(cue: str, hidden: float) -> _Cue:
        def site(
            kind: str, rho: float, hide: float, n: int | None = None, seed: int | None = None
        ) -> DataSet:
            folder = out / f"data-{cue}-{kind}"
            return phantoms_with_strip(
                profile, folder, rho, hide, progress=progress, cue=cue, n_per_class=n, seed=seed
            )

        audit = site("audit", shortcut, hidden, audit_n, audit_seed)
        swapped = swapped_cue_set(
            audit,
            out / f"data-{cue}-audit-swapped",
            cue=cue,
            seed=audit_seed,
            shortcut=shortcut,
            occult=hidden,
            size=profile.phantoms.size,
            progress=progress,
        )
        return _Cue(
            cue,
            site("uninformative", 0.0, 0.0),
            site("shortcut", shortcut, hidden),
            audit,
            audit_seed,
            swapped,
        )

    # Per cue: the reference's data (present, uninformative), the shortcut's (predictive;
    # for the strip half the findings occult) and the held-out biased audit images.
    strip = marker = drain = None
    if "shortcut" in controls:
        strip = cue_sets("strip", occult)
    if "marker" in controls or "marker-twin" in controls:
        # Every finding visible: the marker competes with real evidence. The twin fine-tunes
        # on the reference's own images (the same patients and findings as the shortcut's,
        # only the marker's grey level uninformative), so it differs from the shortcut in the
        # label correlation alone.
        marker = cue_sets("marker", 0.0)
    if "drain" in controls or "drain-twin" in controls:
        drain = cue_sets("drain", 0.0)  # as the marker: every finding visible, a twin on the same patients
    return strip, marker, drain


def run_validation(
    profile: Profile,
    data: DataSet,
    thresholds: Thresholds,
    out: Path,
    *,
    seed: int,
    shortcut: float = 0.95,
    occult: float = 0.5,
    per_class: int = 10,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    progress: bool = False,
    log: Log = lambda message: None,
    controls: tuple[str, ...] = CONTROLS,
    cache_dir: Path | None = None,
    shortcut_per_class: int = 60,
    honest_seeds: int = HONEST_SEEDS,
    honest_machines: tuple[str, ...] = HONEST_MACHINES,
) -> ValidationResult:
    """Runs the controls for every backbone of ``profile`` (see the module).

    Args:
        data: the profile's (clean) data set.
        seed: the fine-tuning seed of the ``seed`` control; pick one that
            ``calibrate`` did not use, so the control is a fresh draw.
        shortcut: correlation of the planted strip's height with the class.
        occult: share of the biased set's disease images without visible
            findings, whose labels only the strip explains.
        per_class: audit images per class of the clean controls: keep the gate's
            (and calibration's) audit set, or the thresholds judge another quantity.
        shortcut_per_class: audit images per class of the biased set (more: its
            reference misclassifies many of them, and only true positives count).
        cache_dir: synthetic-pretraining cache (the shortcut control trains a TL head).
        honest_seeds, honest_machines: the ``honest`` control's held-out runs: that many
            new seeds, each on every emulated machine.

    Writes ``validate.json`` and ``validate.md`` into ``out``.
    """
    result = ValidationResult(profile.name, thresholds.path, shortcut)
    b = _Bench(
        profile,
        data,
        thresholds,
        out,
        torch.device(device),
        batch_size,
        progress,
        log,
        result,
        shortcut_per_class,
    )
    cache_dir = cache_dir or default_cache_dir()
    detail = {"correlation": shortcut, "occult": occult}

    strip, marker, drain = _cues(profile, out, controls, shortcut, occult, shortcut_per_class, progress)
    for arch in profile.backbones:
        tl = Path(profile.out) / arch / "tl.pt"
        clean = out / "baselines" / "clean"
        create_baseline(
            tl,
            data,
            clean / arch,
            thresholds.methods,
            per_class=per_class,
            device=b.device,
            batch_size=batch_size,
            progress=progress,
            paired=thresholds,
        )
        if "self" in controls or "permuted" in controls:
            _self_and_permuted(b, arch, tl, clean, controls)
        if "seed" in controls:
            _seed_control(b, arch, tl, clean, seed)
        if "randomised" in controls:
            _randomised_control(b, arch, tl, clean)
        if "honest" in controls:
            _honest_control(b, arch, tl, clean, honest_seeds, honest_machines)
        if strip is not None:
            reference = _cue_reference(b, arch, strip, cache_dir)
            _cue_control(b, "shortcut", arch, reference, strip.biased, strip, detail)
        for cue in (c for c in (marker, drain) if c is not None):
            reference = _cue_reference(b, arch, cue, cache_dir)
            for control, train_on in ((cue.name, cue.biased), (f"{cue.name}-twin", cue.uninformative)):
                if control in controls:
                    _cue_control(b, control, arch, reference, train_on, cue, {**detail, "occult": 0.0})
    atomic_write_text(out / "validate.json", json.dumps(result.to_dict(), indent=2) + "\n")
    atomic_write_text(out / "validate.md", validation_markdown(result))
    return result
