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
                labels), gated on equally biased audit images: its
                AUC holds, its evidence moves
==============  =====================================================  =========

The shortcut's audit images get their own baseline (its reference's maps on
them), so the only difference the gate can see is the candidate's. The clean
controls use the gate's audit set (what ``calibrate`` measured). Every
candidate is gated with the given ``thresholds.toml`` by the same
:func:`~drift_gate.gate.run_gate` as ``drift-gate gate``. Besides the verdicts,
the share of each map's mass on the planted strip (``cue energy``) shows
*where* the shortcut candidate's evidence went.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drift_gate._io import atomic_write_text, default_cache_dir
from drift_gate.data.datasets import DataSet, load_dataset
from drift_gate.data.phantom_set import generate_dataset
from drift_gate.data.phantoms import cue_masks
from drift_gate.errors import ConfigError
from drift_gate.evidence.cam import minmax, upsample
from drift_gate.evidence.metrics import LOCALISATION_METRICS, METRICS, localisation
from drift_gate.gating.baseline import create_baseline
from drift_gate.gating.gate import CandidateResult, run_gate
from drift_gate.gating.rules import FAIL, PASS, RuleResult
from drift_gate.gating.thresholds import Thresholds
from drift_gate.studies.controls import write_permuted_candidate
from drift_gate.training.pipeline import finetune_from, train_backbone
from drift_gate.training.profiles import Profile

__all__ = [
    "CONTROLS",
    "PERMUTED_TOLERANCE",
    "SELF_TOLERANCE",
    "SHORTCUT_LABEL",
    "ControlRow",
    "ValidationResult",
    "deciding_rules",
    "phantoms_with_strip",
    "run_validation",
    "validation_markdown",
]


CONTROLS = ("self", "permuted", "seed", "shortcut")
#: The label a planted shortcut must get: the evidence moved, the AUC did not.
SHORTCUT_LABEL = "evidence drift despite stable AUC"
#: Largest |metric - ideal| accepted for the reference gated against itself (the
#: maps are recomputed, so only float rounding separates them from the stored ones).
SELF_TOLERANCE = 1e-3
#: Largest difference between the permuted candidate's min-max normalised maps and
#: the reference's, both computed now in float32 (only the summation order differs).
PERMUTED_TOLERANCE = 1e-4
Log = Callable[[str], None]


@dataclass
class ControlRow:
    """One control's outcome for one backbone."""

    control: str
    arch: str
    expected: str
    verdict: str
    label: str
    ok: bool
    auc: float
    reference_auc: float
    n_selected: int
    n_audit: int
    deciding: list[str]
    detail: dict[str, Any] = field(default_factory=dict)
    candidate: str = ""


@dataclass
class ValidationResult:
    """Every control's row, and whether all of them got their expected verdict."""

    profile: str
    thresholds_path: str
    shortcut: float
    rows: list[ControlRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "thresholds_path": self.thresholds_path,
            "shortcut": self.shortcut,
            "ok": self.ok,
            "rows": [asdict(r) for r in self.rows],
        }


def _margin(r: RuleResult) -> float:
    """How far a checked rule is from failing, in the metric's units (< 0: failed)."""
    assert r.observed is not None and r.bound is not None
    if r.kind == "abs_max":
        return r.bound - abs(r.observed)
    if r.kind in ("min", "max_drop"):
        return r.observed - r.bound
    return r.bound - r.observed


def _rule_text(r: RuleResult) -> str:
    name = f"{r.method}/{r.metric}.{r.kind}" if r.method else f"{r.metric}.{r.kind}"
    return f"{name} {r.observed:.3f} (bound {r.direction})"


def deciding_rules(c: CandidateResult) -> list[str]:
    """The rules that decided the verdict: every failed one, or else the one
    closest to failing."""
    failed = [r for r in c.rules if r.status == FAIL]
    if failed:
        return [_rule_text(r) for r in failed]
    checked = [r for r in c.rules if r.status == PASS and r.observed is not None and r.bound is not None]
    if not checked:
        return [r.message for r in c.rules if r.status != PASS][:2]
    closest = min(checked, key=_margin)
    return [f"closest: {_rule_text(closest)}"]


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
    detail = {**detail, "localisation": _localisation_summary(c)}
    return ControlRow(
        control, c.arch, expected, c.verdict, c.label, ok, c.auc, c.reference_auc, c.n_selected, c.n_audit,
        deciding_rules(c), detail, c.candidate,
    )  # fmt: skip


def phantoms_with_strip(
    profile: Profile, out: Path, shortcut: float, occult: float, progress: bool
) -> DataSet:
    """The profile's phantoms with the lead strip (generated once into ``out``)."""
    if profile.data != "phantoms":
        raise ConfigError(
            f"profile {profile.name!r}: the planted-shortcut control needs the phantom generator "
            "(data = 'phantoms'); leave it out with --controls self,permuted,seed"
        )
    p = profile.phantoms
    stamp = out / ".phantoms.json"
    want = json.dumps(
        {"n_per_class": p.n_per_class, "size": p.size, "seed": p.seed, "shortcut": shortcut, "occult": occult}
    )
    if not ((out / "manifest.csv").is_file() and stamp.is_file() and stamp.read_text() == want):
        generate_dataset(
            out, p.n_per_class, p.seed, p.size, progress=progress, shortcut=shortcut, occult=occult
        )
        atomic_write_text(stamp, want)
    return load_dataset(out)


def run_validation(
    profile: Profile,
    data: DataSet,
    thresholds: Thresholds,
    out: Path,
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
    shortcut_per_class: int = 20,
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

    Writes ``validate.json`` and ``validate.md`` into ``out``.
    """
    device = torch.device(device)
    cache_dir = cache_dir or default_cache_dir()
    result = ValidationResult(profile.name, thresholds.path, shortcut)
    site_a = site_b = None
    if "shortcut" in controls:
        # Site A: the strip is there but says nothing; site B: it predicts the class.
        site_a = phantoms_with_strip(profile, out / "data-strip-uninformative", 0.0, 0.0, progress)
        site_b = phantoms_with_strip(profile, out / "data-strip-shortcut", shortcut, occult, progress)
    for arch in profile.backbones:
        tl = Path(profile.out) / arch / "tl.pt"
        phase = profile.phase_for(arch, "ft")
        clean_base, biased_base = out / "baselines" / "clean", out / "baselines" / "shortcut"
        create_baseline(
            tl, data, clean_base / arch, thresholds.methods, per_class, device, batch_size, progress
        )

        def gate(candidate: Path, base: Path, root: Path) -> tuple[CandidateResult, dict[str, Any]]:
            return run_gate(candidate, base, thresholds, root, device, batch_size, progress=progress,
                            use_onnx=False)  # fmt: skip

        own: dict[str, Any] | None = None
        if "self" in controls or "permuted" in controls:
            c, own = gate(tl, clean_base, data.root)
            if "self" in controls:
                dev = _ideal_deviation(c)
                worst = max(dev.values(), default=0.0)
                result.rows.append(
                    _row(
                        "self",
                        PASS,
                        c,
                        c.verdict == PASS and worst <= SELF_TOLERANCE,
                        {"max_deviation_from_ideal": worst, "deviations": dev},
                    )
                )
                log(f"[{arch}] self: {c.verdict} (max |metric - ideal| {worst:.2e})")
        if "permuted" in controls:
            assert own is not None
            permuted = write_permuted_candidate(tl, out / "candidates" / arch / "tl.permuted.pt", seed=1)
            c, art = gate(permuted, clean_base, data.root)
            diff = max(
                float((_normalised(art["candidate"][m]) - _normalised(own["candidate"][m])).abs().max())
                for m in thresholds.methods
            )
            result.rows.append(
                _row(
                    "permuted",
                    PASS,
                    c,
                    c.verdict == PASS and diff <= PERMUTED_TOLERANCE,
                    {"max_map_difference": diff},
                )
            )
            log(f"[{arch}] permuted: {c.verdict} (max normalised map difference {diff:.2e})")
        if "seed" in controls:
            log(f"[{arch}] seed control: fine-tuning with seed {seed}")
            cand = finetune_from(tl, data, phase, out / "candidates" / arch / f"ft.seed{seed}.pt", seed,
                                 profile.batch_size, device, progress, log)  # fmt: skip
            c, _ = gate(cand, clean_base, data.root)
            result.rows.append(_row("seed", PASS, c, c.verdict == PASS, {"seed": seed}))
            log(f"[{arch}] seed: {c.verdict} ({c.label})")
        if site_a is not None and site_b is not None:
            log(f"[{arch}] shortcut control: reference = TL on phantoms whose strip is uninformative")
            ref_profile = replace(profile, out=str(out / "shortcut-reference"))
            reference = train_backbone(ref_profile, arch, site_a, device, cache_dir, progress, log=log,
                                       phases=("tl",)).checkpoints["tl"]  # fmt: skip
            create_baseline(reference, site_b, biased_base / arch, thresholds.methods, shortcut_per_class,
                            device, batch_size, progress)  # fmt: skip
            log(f"[{arch}] shortcut control: fine-tuning on phantoms whose strip predicts the class "
                f"(correlation {shortcut:g}, {occult:.0%} of findings occult)")  # fmt: skip
            cand = finetune_from(reference, site_b, phase, out / "candidates" / arch / "ft.shortcut.pt",
                                 profile.seed, profile.batch_size, device, progress, log)  # fmt: skip
            c, art = gate(cand, biased_base, site_b.root)
            cues = cue_masks(c.sample_ids, profile.phantoms.seed, shortcut, art["size"])
            energy = {
                "reference": _cue_energy(art["reference"], cues, art["size"]),
                "candidate": _cue_energy(art["candidate"], cues, art["size"]),
                "strip_area": float(cues.mean()),
            }
            ok = c.verdict == FAIL and c.label == SHORTCUT_LABEL
            result.rows.append(
                _row(
                    "shortcut", FAIL, c, ok, {"cue_energy": energy, "correlation": shortcut, "occult": occult}
                )
            )
            log(f"[{arch}] shortcut: {c.verdict} ({c.label}); map mass on the strip {energy}")
    atomic_write_text(out / "validate.json", json.dumps(result.to_dict(), indent=2) + "\n")
    atomic_write_text(out / "validate.md", validation_markdown(result))
    return result


_WHAT = {
    "self": "reference gated against itself",
    "permuted": "target channels permuted (same function)",
    "seed": "fine-tune with another seed (clean data)",
    "shortcut": "fine-tuned where a lead strip predicts the class",
}


def _extra(r: ControlRow) -> str:
    d = r.detail
    if r.control == "self":
        return f"max \\|metric − ideal\\| {d['max_deviation_from_ideal']:.1e}"
    if r.control == "permuted":
        return f"max map difference {d['max_map_difference']:.1e}"
    if r.control == "shortcut":
        e = d["cue_energy"]
        parts = [f"{m} {e['reference'][m]:.2f} → {e['candidate'][m]:.2f}" for m in e["candidate"]]
        return f"map mass on the strip (area {e['strip_area']:.2f}): " + ", ".join(parts)
    return ""


def validation_markdown(result: ValidationResult) -> str:
    """The controls table (README and ``validate.md``)."""
    out = [
        f"## drift-gate validate: profile {result.profile}, `{result.thresholds_path}` — "
        f"{'every control got its expected verdict' if result.ok else 'SOME CONTROLS GOT THE WRONG VERDICT'}",
        "",
        "| control | backbone | expected | verdict | AUC (reference → candidate) | true positives "
        "| deciding metrics | also |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        mark = "" if r.ok else " ✗"
        verdict = f"**{r.verdict.upper()}**{mark}" + (f": {r.label}" if r.verdict == FAIL else "")
        out.append(
            f"| {_WHAT[r.control]} | {r.arch} | {r.expected} | {verdict} | "
            f"{r.reference_auc:.3f} → {r.auc:.3f} | {r.n_selected}/{r.n_audit} | "
            f"{'; '.join(r.deciding)} | {_extra(r)} |"
        )
    loc = [
        (r, m, v)
        for r in result.rows
        for m, v in r.detail.get("localisation", {}).items()
        if v.get("mask_energy") is not None
    ]
    if loc:
        out += [
            "",
            "Reference-based localisation (ground-truth finding masks; true positives with a finding):",
            "",
            "| control | backbone | method | pointing game (ref → cand) | mask energy (ref → cand) |",
            "|---|---|---|---|---|",
        ]
        for r, m, v in loc:

            def f(x: float | None) -> str:
                return "—" if x is None else f"{x:.3f}"

            out.append(
                f"| {r.control} | {r.arch} | {m} | {f(v.get('reference_pointing_game'))} → "
                f"{f(v.get('pointing_game'))} | {f(v.get('reference_mask_energy'))} → "
                f"{f(v.get('mask_energy'))} |"
            )
    return "\n".join(out) + "\n"
