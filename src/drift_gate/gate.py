"""The gate: candidate CAMs vs stored reference maps -> metrics -> rules -> verdict.

:func:`evaluate_rules` is pure (summaries and thresholds in, rule results out);
:func:`run_gate` does the I/O around it: loads the baseline and the candidate,
verifies the audit images, computes the candidate's CAMs and predictions, and
returns one :class:`GateResult` from which every report is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ._io import file_sha256
from .baseline import APPROVED_STATISTIC, Baseline, StaleBaselineError, check_compatible, load_baseline
from .cam import compute_cams, grid_warning, upsample
from .checkpoint import load_checkpoint
from .classification import classification_metrics, predicted_class
from .data import ImageDataset, Sample, read_image
from .distributed import Dist, gather_shards, in_order
from .errors import CheckpointError
from .export import OnnxModel, Parity, onnx_path, parity
from .metrics import METRICS, Direction, Summary, drift_metrics, localisation, select_samples, summarise
from .preprocess import DEFAULT, Preprocess
from .thresholds import Thresholds

__all__ = [
    "RESULT_SCHEMA",
    "CandidateResult",
    "GateResult",
    "RuleResult",
    "evaluate_rules",
    "load_masks",
    "run_gate",
]

RESULT_SCHEMA = 1
PASS, FAIL, INCONCLUSIVE, SKIPPED = "pass", "fail", "inconclusive", "skipped"


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome.

    Attributes:
        rule: a stable name, e.g. ``densenet201/layercam/iou.min``.
        status: ``pass``, ``fail``, ``inconclusive`` or ``skipped``.
        observed: the value compared (``None`` when there was nothing to compare).
        bound: the bound it was compared with.
        direction: how the comparison reads, e.g. ``>= 0.3``.
        message: one line for people.
        source: where the bound was set (``thresholds.toml:12``).
    """

    rule: str
    status: str
    observed: float | None
    bound: float | None
    direction: str
    message: str
    source: str = ""


@dataclass
class CandidateResult:
    """Everything the gate found for one candidate."""

    candidate: str
    candidate_sha256: str
    arch: str
    baseline: str
    reference_sha256: str
    audit_sha256: str
    classes: tuple[str, ...]
    auc: float
    reference_auc: float
    n_audit: int
    n_selected: int
    summaries: dict[str, dict[str, dict[str, dict[str, Any]]]]  # method -> metric -> group -> stats
    rules: list[RuleResult]
    verdict: str = PASS
    label: str = ""
    per_sample: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    sample_ids: list[str] = field(default_factory=list)
    selected: list[bool] = field(default_factory=list)
    #: what computed the predictions: ``onnxruntime (<provider>)`` or ``torch (<device>)``
    predictions: str = ""
    #: the exported model's path, sha256 and parity (empty without one)
    onnx: dict[str, Any] = field(default_factory=dict)
    #: numeric precision of the CAM forward pass (``fp32`` or ``bf16``)
    precision: str = "fp32"
    #: things a reviewer should know that do not change the verdict (e.g. a coarse CAM grid)
    warnings: list[str] = field(default_factory=list)


@dataclass
class GateResult:
    """The result of one gate run (one or more candidates)."""

    candidates: list[CandidateResult]
    thresholds: dict[str, Any]
    thresholds_path: str
    versions: dict[str, str]
    schema_version: int = RESULT_SCHEMA

    @property
    def verdict(self) -> str:
        """``fail`` if any candidate failed, else ``inconclusive`` if any was, else ``pass``."""
        verdicts = {c.verdict for c in self.candidates}
        return FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS

    @property
    def exit_code(self) -> int:
        """0 pass, 1 otherwise (a gate that checked nothing never passes)."""
        return 0 if self.candidates and self.verdict == PASS else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "thresholds_path": self.thresholds_path,
            "thresholds": self.thresholds,
            "versions": self.versions,
            "candidates": [asdict(c) for c in self.candidates],
        }


def _statistic(s: Summary, statistic: str, direction: Direction, kind: str) -> float | None:
    """The value a bound is compared with; ``ci`` takes the conservative end."""
    if statistic == "mean":
        return s.mean
    if statistic == "median":
        return s.median
    if s.ci_low is None or s.ci_high is None:
        return None
    if kind == "abs_max":
        return max(abs(s.ci_low), abs(s.ci_high))
    # The end of the interval that is worse for this bound.
    return s.ci_low if kind in ("min", "max_drop") else s.ci_high


def _bound(kind: str, value: float, approved: float | None) -> tuple[str, float]:
    """(direction text, effective bound) of one bound; relative kinds need ``approved``."""
    if kind == "min":
        return f">= {value:g}", value
    if kind == "max":
        return f"<= {value:g}", value
    if kind == "abs_max":
        return f"|x| <= {value:g}", value
    assert approved is not None
    if kind == "max_drop":
        return f">= approved {approved:.4f} - {value:g}", approved - value
    return f"<= approved {approved:.4f} + {value:g}", approved + value


def _passes(kind: str, observed: float, bound: float) -> bool:
    if kind in ("min", "max_drop"):
        return observed >= bound
    if kind == "abs_max":
        return abs(observed) <= bound
    return observed <= bound


def samples_needed(n_usable: int, n_audit: int, required: int, n_classes: int, share: float | None) -> str:
    """What the audit set would need for ``required`` usable samples, at the rate seen."""
    if n_usable == 0 or n_audit == 0:
        return "no audit sample was usable, so a larger audit set alone will not help"
    if share is not None:
        return (
            f"only {n_usable / n_audit:.0%} of the audit set was usable, below min_samples "
            f"{share:.0%}; a larger audit set keeps that share, so lower min_samples or improve the models"
        )
    audit = math.ceil(required * n_audit / n_usable)
    return (
        f"at this rate ({n_usable} of {n_audit} audit images usable) it needs an audit set of about "
        f"{audit} images ({math.ceil(audit / max(n_classes, 1))} per class: baseline --per-class)"
    )


def evaluate_rules(
    arch: str,
    method: str,
    summaries: dict[str, dict[str, Summary]],
    thresholds: Thresholds,
    approved: dict[str, Any],
    n_audit: int = 0,
    n_classes: int = 0,
) -> list[RuleResult]:
    """Applies the drift bounds of one backbone x method to its overall summaries.

    Args:
        summaries: metric -> group -> :class:`Summary` (from :func:`summarise`).
        approved: the approved candidate's statistics, ``{method: {metric: value}}``,
            for relative bounds; relative bounds without one are skipped.
        n_audit: audit images (what a relative ``min_samples`` is a share of).
        n_classes: classes of the audit set (to say how large an audit set would do).
    """
    out = []
    required = thresholds.required_samples(n_audit)
    for b in thresholds.bounds(arch, method):
        name = f"{arch}/{method}/{b.metric}.{b.kind}"
        s = summaries.get(b.metric, {}).get("overall")
        spec = METRICS[b.metric]
        approved_value = (approved.get(method) or {}).get(b.metric)
        relative = b.kind in ("max_drop", "max_rise")
        bound: float | None = None
        direction = b.kind  # a relative bound without an approved value has no number yet
        if not relative or approved_value is not None:
            direction, bound = _bound(b.kind, b.value, approved_value)
        if s is None:
            out.append(
                RuleResult(name, SKIPPED, None, bound, direction, f"{b.metric} not computed", b.source)
            )
            continue
        if s.n < required:
            shown = thresholds.min_samples_text
            if thresholds.min_samples_share is not None:
                shown += f" of {n_audit} = {required}"
            out.append(
                RuleResult(
                    name,
                    INCONCLUSIVE,
                    None,
                    bound,
                    direction,
                    f"only {s.n} usable samples ({s.n_degenerate} degenerate), min_samples is {shown}: "
                    f"inconclusive, not a pass; "
                    + samples_needed(s.n, n_audit, required, n_classes, thresholds.min_samples_share),
                    b.source,
                )
            )
            continue
        observed = _statistic(s, thresholds.statistic, spec.direction, b.kind)
        if relative and approved_value is None:
            out.append(
                RuleResult(
                    name,
                    SKIPPED,
                    observed,
                    None,
                    b.kind,
                    "no approved result yet (run `drift-gate approve`)",
                    b.source,
                )
            )
            continue
        assert observed is not None and bound is not None
        ok = _passes(b.kind, observed, bound)
        word = "ok" if ok else "violated"
        out.append(
            RuleResult(
                name,
                PASS if ok else FAIL,
                observed,
                bound,
                direction,
                f"{b.metric} {thresholds.statistic} {observed:.4f} {word}: must be {direction} "
                f"({spec.direction.value} is better)",
                b.source,
            )
        )
    return out


def _auc_rules(arch: str, auc: float, baseline_auc: float, thresholds: Thresholds) -> list[RuleResult]:
    out = []
    if thresholds.auc_min is not None:
        ok = auc >= thresholds.auc_min
        out.append(
            RuleResult(
                f"{arch}/auc.min",
                PASS if ok else FAIL,
                auc,
                thresholds.auc_min,
                f">= {thresholds.auc_min:g}",
                f"macro AUC {auc:.4f} {'ok' if ok else 'violated'}: must be >= {thresholds.auc_min:g}",
                f"{thresholds.path} [auc]",
            )
        )
    if thresholds.auc_max_drop is not None:
        bound = baseline_auc - thresholds.auc_max_drop
        ok = auc >= bound
        out.append(
            RuleResult(
                f"{arch}/auc.max_drop",
                PASS if ok else FAIL,
                auc,
                bound,
                f">= {baseline_auc:.4f} - {thresholds.auc_max_drop:g}",
                f"macro AUC {auc:.4f} {'ok' if ok else 'violated'}: may drop at most "
                f"{thresholds.auc_max_drop:g} below {baseline_auc:.4f}",
                f"{thresholds.path} [auc]",
            )
        )
    return out


def _verdict(rules: list[RuleResult]) -> tuple[str, str]:
    statuses = {r.status for r in rules}
    checked = statuses & {PASS, FAIL, INCONCLUSIVE}
    if not checked:
        return INCONCLUSIVE, "no rule could be checked"
    failed = [r.rule for r in rules if r.status == FAIL]
    auc_failed = any("/auc." in r for r in failed)
    onnx_failed = any("/onnx." in r for r in failed)
    drift_failed = any("/auc." not in r and "/onnx." not in r for r in failed)
    labels = []
    if drift_failed:
        labels.append(
            "evidence drift despite stable AUC" if not auc_failed else "evidence drift and AUC regression"
        )
    elif auc_failed:
        labels.append("AUC regression")
    if onnx_failed:
        labels.append("the exported ONNX model differs from the audited checkpoint")
    if labels:
        return FAIL, "; ".join(labels)
    if INCONCLUSIVE in statuses:
        return INCONCLUSIVE, "too few usable samples to judge the evidence"
    return PASS, "evidence and AUC within bounds"


def _parity_rule(arch: str, p: Parity, thresholds: Thresholds) -> RuleResult:
    ok = p.ok(thresholds.onnx_max_rel_diff)
    return RuleResult(
        f"{arch}/onnx.parity",
        PASS if ok else FAIL,
        p.max_rel_diff,
        thresholds.onnx_max_rel_diff,
        f"<= {thresholds.onnx_max_rel_diff:g}",
        f"ONNX Runtime ({p.provider}) vs the audited checkpoint: max relative logit difference "
        f"{p.max_rel_diff:.3g} {'ok' if ok else 'violated'} on {p.n} audit images",
        f"{thresholds.path} [onnx]",
    )


def _summary_dict(s: dict[str, dict[str, Summary]]) -> dict[str, dict[str, dict[str, Any]]]:
    return {metric: {g: asdict(v) for g, v in groups.items()} for metric, groups in s.items()}


def _none_if_nan(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(float(v)) else float(v) for v in values]


def load_masks(samples: Sequence[Sample], size: int, preprocess: Preprocess = DEFAULT) -> np.ndarray:
    """Ground-truth finding masks at the model's input size (resized like the images,
    by the same policy, then thresholded at one half). A sample without a mask gets an
    empty one, so its localisation metrics are undefined (NaN)."""
    out = np.zeros((len(samples), size, size), dtype=bool)
    for i, s in enumerate(samples):
        if s.mask is not None:
            out[i] = read_image(s.mask, size, preprocess)[0].numpy() >= 0.5
    return out


def _streamed_metrics(
    ref: np.ndarray, cand: np.ndarray, size: int, masks: np.ndarray | None = None, block: int = 64
) -> dict[str, np.ndarray]:
    """Drift metrics of native-resolution maps, upsampled to ``size`` ``block`` pairs
    at a time, so that only one block of full-size maps is ever in memory; with
    ``masks``, also the localisation of both maps against them."""
    parts = []
    for i in range(0, max(len(ref), 1), block):
        a = upsample(torch.from_numpy(ref[i : i + block]), size)
        b = upsample(torch.from_numpy(cand[i : i + block]), size)
        part = drift_metrics(a, b, ranks=True)
        if masks is not None:
            ka = localisation(a, masks[i : i + block])
            kb = localisation(b, masks[i : i + block])
            part.update(
                pointing_game=kb["pointing_game"],
                mask_energy=kb["mask_energy"],
                reference_pointing_game=ka["pointing_game"],
                reference_mask_energy=ka["mask_energy"],
                mask_energy_change=kb["mask_energy"] - ka["mask_energy"],
            )
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def run_gate(
    candidate: Path,
    baselines: Path,
    thresholds: Thresholds,
    data_root: Path,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    reference: Path | None = None,
    progress: bool = False,
    use_onnx: bool = True,
    dist: Dist | None = None,
    precision: str = "fp32",
) -> tuple[CandidateResult, dict[str, Any]]:
    """Gates one candidate checkpoint against the stored baseline ``baselines/<arch>``.

    When ``<candidate stem>.onnx`` exists beside the candidate (and ``use_onnx``),
    predictions (AUC, true-positive selection) come from ONNX Runtime and a parity
    rule checks its logits against the checkpoint's; the CAMs always come from the
    checkpoint (they need gradients).

    Under ``torchrun`` (``dist``), each rank computes its batches of the audit set
    and the per-sample results are gathered on every rank, so every rank returns
    the same result, equal to the single-process one.

    Returns:
        The result, and the arrays the HTML overlays need (native-resolution
        maps, image paths, input size).

    Raises:
        StaleBaselineError: the baseline is missing, damaged, lacks a configured
            method, does not fit the candidate, or ``reference`` is not the file
            it was made from.
        CheckpointError, DataError: unusable candidate or audit images.
    """
    dist = dist or Dist(0, 1, torch.device(device))
    model, meta = load_checkpoint(candidate, dist.device)
    base: Baseline = load_baseline(Path(baselines) / meta.arch)
    if reference is not None and file_sha256(reference) != base.meta["reference"]["sha256"]:
        raise StaleBaselineError(
            f"{reference}: sha256 differs from the reference the baseline in {base.path} was made "
            f"from; refresh it with `drift-gate baseline --reference {reference} --out {base.path}`"
        )
    missing = [m for m in thresholds.methods if m not in base.maps]
    if missing:
        raise StaleBaselineError(
            f"{base.path}: baseline has no maps for {', '.join(missing)}; "
            f"refresh it with `drift-gate baseline --out {base.path}`"
        )
    check_compatible(base, meta, candidate)
    samples = base.audit.resolve(data_root, base.classes)
    exported = onnx_path(candidate)
    session = OnnxModel(exported, dist.device) if use_onnx and exported.is_file() else None
    size = meta.input_size
    with_masks = any(s.mask is not None for s in samples)

    def shard(indices: Sequence[int]) -> dict[str, Any] | None:
        """CAMs, predictions and per-sample metrics of some audit images (one rank's batches)."""
        if not indices:
            return None
        # One pass, nothing cached: memory stays flat as the audit set grows.
        chosen = [samples[i] for i in indices]
        ds = ImageDataset(chosen, size, meta.mean, meta.std, cache=False, preprocess=meta.preprocess)
        cams = compute_cams(
            model,
            ds,
            thresholds.methods,
            dist.device,
            batch_size,
            progress=progress and dist.main,
            precision=precision,
        )
        out: dict[str, Any] = {"logits": cams.logits, "maps": cams.maps, "metrics": {}}
        masks = load_masks(chosen, size, meta.preprocess) if with_masks else None
        if session is not None:
            out["onnx"] = session.logits(ds, batch_size)
        for method in thresholds.methods:
            try:
                out["metrics"][method] = _streamed_metrics(
                    base.maps[method][list(indices)], cams.maps[method], size, masks
                )
            except ValueError as exc:  # non-finite or absurd CAM values from this candidate
                raise CheckpointError(f"{candidate}: its {method} maps cannot be compared ({exc})") from exc
        return out

    parts = [
        (idx, part) for idx, part in gather_shards(dist, len(samples), batch_size, shard) if part is not None
    ]

    def joined(get: Callable[[dict[str, Any]], np.ndarray]) -> np.ndarray:
        """One array of every shard, back in audit order."""
        return cast(np.ndarray, in_order(parts, get))

    torch_logits = joined(lambda p: p["logits"])
    maps = {m: joined(lambda p, m=m: p["maps"][m]) for m in thresholds.methods}  # type: ignore[misc]
    # Predictions come from what is deployed: the exported model when there is one.
    logits, onnx_info, parity_rules = torch_logits, {}, []
    if session is not None:
        logits = joined(lambda p: p["onnx"])
        par = parity(torch_logits, logits, session.provider)
        parity_rules.append(_parity_rule(meta.arch, par, thresholds))
        onnx_info = {"path": str(exported), "sha256": file_sha256(exported), **asdict(par)}
    labels = np.array([s.label for s in samples])
    auc = classification_metrics(logits, labels, meta.classes)["auc_macro"]
    selected = select_samples(
        labels, predicted_class(base.logits), predicted_class(logits), thresholds.samples
    )
    approved = base.approved.get("statistics", {})
    recorded = base.approved.get("statistic")
    if approved and recorded != APPROVED_STATISTIC[thresholds.statistic]:
        raise StaleBaselineError(
            f"{base.path / 'baseline.json'}: the approved result was recorded as the {recorded}, "
            f"but the thresholds now use statistic {thresholds.statistic!r}; gate and "
            "`drift-gate approve` the candidate again under these thresholds"
        )
    baseline_auc = float(base.approved.get("auc", base.meta["auc"]))
    rules = parity_rules + _auc_rules(meta.arch, auc, baseline_auc, thresholds)
    summaries, per_sample = {}, {}
    for method in thresholds.methods:
        values = {
            k: joined(lambda p, m=method, k=k: p["metrics"][m][k])  # type: ignore[misc]
            for k in parts[0][1]["metrics"][method]
        }
        summary = summarise(values, selected, labels, meta.classes)
        rules += evaluate_rules(
            meta.arch,
            method,
            summary,
            thresholds,
            approved,
            n_audit=len(samples),
            n_classes=len(meta.classes),
        )
        summaries[method] = _summary_dict(summary)
        per_sample[method] = {k: _none_if_nan(v) for k, v in values.items() if k != "degenerate"}
        per_sample[method]["degenerate"] = [float(x) for x in values["degenerate"]]
    verdict, label = _verdict(rules)
    coarse = grid_warning(next(iter(maps.values())).shape[1:], size)
    artifacts = {
        "size": size,
        "preprocess": meta.preprocess,
        "paths": [s.path for s in samples],
        "reference": base.maps,
        "candidate": maps,
    }
    return CandidateResult(
        candidate=str(candidate),
        candidate_sha256=file_sha256(candidate),
        arch=meta.arch,
        baseline=str(base.path),
        reference_sha256=base.meta["reference"]["sha256"],
        audit_sha256=base.audit.sha256,
        classes=tuple(meta.classes),
        auc=auc,
        reference_auc=baseline_auc,
        n_audit=len(samples),
        n_selected=int(selected.sum()),
        summaries=summaries,
        rules=rules,
        verdict=verdict,
        label=label,
        per_sample=per_sample,
        sample_ids=[s.id for s in samples],
        selected=[bool(x) for x in selected],
        predictions=f"onnxruntime ({onnx_info['provider']})" if onnx_info else f"torch ({dist.device.type})",
        onnx=onnx_info,
        precision=precision,
        warnings=[coarse] if coarse else [],
    ), artifacts
