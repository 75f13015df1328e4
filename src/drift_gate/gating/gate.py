"""The gate: candidate CAMs vs stored reference maps -> metrics -> rules -> verdict.

:func:`evaluate_rules` is pure (summaries and thresholds in, rule results out);
:func:`run_gate` does the I/O around it: loads the baseline and the candidate,
verifies the audit images, has each rank's share of them passed through the
candidate (:mod:`~drift_gate.gating.audit_pass`: CAMs, predictions, per-sample
metrics and checks), and returns one :class:`GateResult` from which every report is
written.

Size: the gate's five stages (prepare, audit, predictions, judge, record) and the result
types they fill, each stage a function a test calls.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from drift_gate._io import file_sha256
from drift_gate._machine import machine
from drift_gate._memory import AUDIT, allocator_policy
from drift_gate.data.datasets import ImageDataset
from drift_gate.distributed import Dist, gather_shards, in_order
from drift_gate.errors import ConfigError, StaleBaselineError
from drift_gate.evidence.cam import grid_warning
from drift_gate.evidence.classification import (
    classification_metrics,
    multilabel_metrics,
    predicted_class,
    predicted_positive,
)
from drift_gate.evidence.counterfactual import CORNERS
from drift_gate.evidence.metrics import intra_class_consistency
from drift_gate.evidence.summary import Summary, select_samples, summarise
from drift_gate.gating.audit import expand_pairs
from drift_gate.gating.audit_pass import Job, audit_pass, load_masks
from drift_gate.gating.baseline import APPROVED_STATISTIC, check_compatible
from drift_gate.gating.multilabel import is_multilabel, operating_points
from drift_gate.gating.paired import less_reference, paired_mismatch
from drift_gate.gating.rules import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    RuleResult,
    Status,
    auc_rules,
    counterfactual_rule,
    decide_verdict,
    evaluate_rules,
    parity_rule,
    sanity_rule,
)
from drift_gate.gating.signing import SIGNATURE_FILE
from drift_gate.gating.stored import Baseline, baseline_command, load_baseline
from drift_gate.gating.thresholds import Bound, Thresholds
from drift_gate.models.adapters import load_model
from drift_gate.models.export import OnnxModel, onnx_path, parity
from drift_gate.models.spec import ModelSpec

if TYPE_CHECKING:
    from drift_gate.gating.signing import Keyring
    from drift_gate.models.checkpoint import CheckpointMeta

__all__ = [
    "RESULT_SCHEMA",
    "CandidateResult",
    "GateResult",
    "Gathered",
    "Predictions",
    "audit",
    "judge",
    "load_masks",
    "predictions",
    "prepare",
    "record",
    "run_gate",
]


RESULT_SCHEMA = 1


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
    verdict: Status = PASS
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
    #: each class's (finding's) AUC on the audit set, the candidate's and the reference's
    auc_per_class: dict[str, float] = field(default_factory=dict)
    reference_auc_per_class: dict[str, float] = field(default_factory=dict)
    #: how the audit images became the model's input: size, normalisation, bit depth,
    #: DICOM window, resize policy, channels (what every number of the gate rests on)
    preprocess: dict[str, Any] = field(default_factory=dict)
    #: the baseline's files as the gate read them (:func:`~drift_gate.gating.signing.files_digest`);
    #: ``approve`` only records a result made against the baseline as it still is
    baseline_digest: str = ""
    #: whether the baseline's signature was verified against a configured public key
    baseline_signed: bool = False
    #: how many audit samples (image, class pairs for multi-label) each model gets right:
    #: ``both_correct``, ``newly_correct`` (reference wrong, candidate right: where a new
    #: shortcut would carry the prediction; summarised as its own group), ``newly_wrong``,
    #: ``both_wrong``
    groups: dict[str, int] = field(default_factory=dict)
    #: method -> ``reference`` / ``candidate`` -> group (class or ``overall``) ->
    #: ``{"mean", "n"}``: how alike one class's maps are (mean pairwise soft IoU over the
    #: selected samples; :func:`~drift_gate.evidence.metrics.intra_class_consistency`)
    consistency: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    #: the machines behind the numbers (:func:`drift_gate._machine.machine`): ``candidate``
    #: (trained it), ``reference_maps`` (made the baseline), ``gate`` (this run); a key is
    #: absent where that is not known (a model drift-gate did not train, an older file)
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class GateResult:
    """The result of one gate run (one or more candidates)."""

    candidates: list[CandidateResult]
    thresholds: dict[str, Any]
    thresholds_path: str
    versions: dict[str, str]
    schema_version: int = RESULT_SCHEMA
    #: the report files written from this result, by kind (not part of ``gate.json``)
    report_paths: dict[str, Path] = field(default_factory=dict)

    @property
    def verdict(self) -> Status:
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


def _summary_dict(s: dict[str, dict[str, Summary]]) -> dict[str, dict[str, dict[str, Any]]]:
    return {metric: {g: asdict(v) for g, v in groups.items()} for metric, groups in s.items()}


def _none_if_nan(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(float(v)) else float(v) for v in values]


def _image_logits(job: Job) -> tuple[np.ndarray, np.ndarray | None]:
    """A multi-label candidate's logits per audit image, from torch and from its ONNX export."""
    from drift_gate.models.inference import predict

    meta = job.meta
    ds = ImageDataset(
        job.images, meta.input_size, meta.mean, meta.std, cache=False, preprocess=meta.preprocess
    )
    logits, _ = predict(job.model, ds, job.dist.device, job.batch_size)
    return logits, None if job.session is None else job.session.logits(ds, job.batch_size)


def prepare(
    candidate: Path,
    *,
    baselines: Path,
    thresholds: Thresholds,
    data_root: Path,
    reference: Path | None,
    use_onnx: bool,
    dist: Dist,
    batch_size: int,
    progress: bool,
    precision: str,
    spec: ModelSpec | None = None,
    public_key: Keyring | None = None,
    spec_file: Path | None = None,
) -> Job:
    """Stage 1: loads the candidate and its baseline and checks that one may be gated
    against the other (hashes, methods, model, classes, target layer, audit images)."""
    model, meta = load_model(candidate, spec, dist.device)
    base: Baseline = load_baseline(Path(baselines) / meta.arch, public_key)

    remake = baseline_command(base.path, data_root, reference, thresholds.path, spec_file)
    _check_pairing(candidate, model, meta, base, thresholds, reference, remake)
    images = base.audit.resolve(data_root, base.classes, multilabel=is_multilabel(meta))
    samples, pairs = images, None
    if is_multilabel(meta):
        samples, pairs = expand_pairs(images)
        if base.pairs is None or not np.array_equal(pairs, base.pairs):
            raise StaleBaselineError(
                f"{base.path}: its (image, class) pairs do not match its audit set; refresh the baseline"
            )
    exported = onnx_path(candidate)
    session = OnnxModel(exported, dist.device) if use_onnx and exported.is_file() else None
    return Job(
        candidate,
        model,
        meta,
        base,
        samples,
        thresholds,
        dist,
        batch_size,
        progress,
        precision,
        session,
        exported,
        images,
        pairs,
    )


def _check_pairing(
    candidate: Path,
    model: torch.nn.Module,
    meta: CheckpointMeta,
    base: Baseline,
    thresholds: Thresholds,
    reference: Path | None,
    remake: str,
) -> None:
    """Refuses a candidate that may not be gated against ``base``: a baseline made from
    another reference, without maps for the rules' methods, of another model, classes or
    target layer; or per-class rules for classes the model does not have. ``remake`` is the
    command that re-makes the baseline, for the messages."""
    if reference is not None and file_sha256(reference) != base.meta["reference"]["sha256"]:
        raise StaleBaselineError(
            f"{reference}: sha256 differs from the reference the baseline in {base.path} was made from, "
            "so the candidate would be gated against maps of a model it does not descend from. If this "
            f"checkpoint is the right reference, re-make the baseline: {remake}; if the "
            "baseline is, train with the code and settings that made it"
        )
    missing = [m for m in thresholds.methods if m not in base.maps]
    if missing:
        raise StaleBaselineError(
            f"{base.path}: baseline has no maps for {', '.join(missing)}; re-make it with these rules "
            f"from the checkpoint it was made from (sha256 {base.meta['reference']['sha256'][:12]}…): "
            f"{remake}"
        )
    check_compatible(base, meta, candidate, remake)
    why = paired_mismatch(base, thresholds)
    if why:
        raise StaleBaselineError(
            f"{base.path}: {why}; re-make it with these rules from the checkpoint it was made from "
            f"(sha256 {base.meta['reference']['sha256'][:12]}…): {remake}"
        )
    for cls, bounds in thresholds.label_bounds(meta.arch).items():  # before any CAM is computed
        if cls not in meta.classes:
            raise ConfigError(
                f"{bounds[0].source}: drift.{meta.arch}.labels.{cls}: {cls!r} is not one of the "
                f"model's classes ({', '.join(meta.classes)})"
            )
    layer, stored = getattr(getattr(model, "target", None), "path", None), base.meta["maps"].get("layer")
    if layer != stored:
        raise StaleBaselineError(
            f"{candidate}: its CAM target layer is {layer!r}, the baseline in {base.path} was made on "
            f"{stored!r}; name the layer in the "
            + (
                "spec (target_layer)"
                if meta.model is not None
                else "training profile (per_backbone.<arch>.target_layer)"
            )
            + " or refresh the baseline"
        )


def _approved(base: Baseline, thresholds: Thresholds) -> dict[str, Any]:
    """The approved statistics for relative bounds, recorded under the statistic in use."""
    approved: dict[str, Any] = base.approved.get("statistics", {})
    recorded = base.approved.get("statistic")
    if approved and recorded != APPROVED_STATISTIC[thresholds.statistic]:
        raise StaleBaselineError(
            f"{base.path / 'baseline.json'}: the approved result was recorded as the {recorded}, "
            f"but the thresholds now use statistic {thresholds.statistic!r}; gate and "
            "`drift-gate approve` the candidate again under these thresholds"
        )
    return approved


def _correct_groups(ref_ok: np.ndarray, cand_ok: np.ndarray) -> dict[str, int]:
    return {
        "both_correct": int((ref_ok & cand_ok).sum()),
        "newly_correct": int((~ref_ok & cand_ok).sum()),
        "newly_wrong": int((ref_ok & ~cand_ok).sum()),
        "both_wrong": int((~ref_ok & ~cand_ok).sum()),
    }


def _drift(
    job: Job,
    values: dict[str, dict[str, np.ndarray]],
    selected: np.ndarray,
    labels: np.ndarray,
    newly: np.ndarray,
) -> tuple[list[RuleResult], dict[str, Any], dict[str, Any]]:
    """Per method: the summaries of the per-sample metrics (overall, per class, and the
    ``newly_correct`` group), the drift rules on them, and the per-sample values for the
    reports."""
    approved = _approved(job.base, job.thresholds)
    rules, summaries, per_sample = [], {}, {}
    classes = job.meta.classes
    # (group, its bounds, its audit rows, its classes, its own min_samples): the whole set,
    # each class's own bounds, and the samples the candidate newly gets right
    groups: list[tuple[str, list[Bound] | None, int, int, int | None]] = [
        ("overall", None, len(job.samples), len(classes), None)
    ]
    groups += [
        (cls, bounds, int((labels == classes.index(cls)).sum()), 1, None)
        for cls, bounds in job.thresholds.label_bounds(job.meta.arch).items()
    ]
    if job.thresholds.newly_correct:
        t = job.thresholds
        groups.append(("newly_correct", t.newly_correct_bounds(), 0, 0, t.newly_correct_min_samples))
    for method, v in values.items():
        summary = summarise(v, selected, labels, classes)
        fresh = summarise(v, newly, labels, classes)
        for metric in summary:
            summary[metric]["newly_correct"] = fresh[metric]["overall"]
        for group, bounds, n_audit, n_classes, required in groups:
            rules += evaluate_rules(
                job.meta.arch,
                method,
                summary,
                job.thresholds,
                approved=approved,
                n_audit=n_audit,
                n_classes=n_classes,
                group=group,
                bounds=bounds,
                required=required,
            )
        summaries[method] = _summary_dict(summary)
        per_sample[method] = {k: _none_if_nan(x) for k, x in v.items() if k != "degenerate"}
        per_sample[method]["degenerate"] = [float(x) for x in v["degenerate"]]
    return rules, summaries, per_sample


@dataclass
class Gathered:
    """Stage 2's output: every rank's share of the audit pass, joined back in audit order."""

    #: per method, the candidate's maps at the target layer's grid
    maps: dict[str, np.ndarray]
    #: per method, per metric, the per-sample values (``degenerate`` among them)
    values: dict[str, dict[str, np.ndarray]]
    #: the checkpoint's logits, and its ONNX export's when one is used
    torch_logits: np.ndarray
    onnx_logits: np.ndarray | None
    #: ``sanity`` / ``class_sanity`` per method, where its rule is configured
    sanity: dict[str, dict[str, np.ndarray]]


@dataclass
class Predictions:
    """Stage 3's output: what the deployed model predicts, and which samples are gated."""

    logits: np.ndarray
    labels: np.ndarray
    scores: dict[str, Any]
    ref_scores: dict[str, Any]
    selected: np.ndarray
    ref_ok: np.ndarray
    cand_ok: np.ndarray
    #: the ONNX parity record (empty when predictions come from torch), and its rule
    onnx: dict[str, Any]
    parity_rules: list[RuleResult]


def _dig(part: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        part = part[k]
    return part


def audit(job: Job) -> Gathered:
    """Stage 2: the candidate's pass over the audit set (each rank its batches under
    ``torchrun``), gathered on every rank."""
    t, samples = job.thresholds, job.samples
    shards = gather_shards(job.dist, len(samples), job.batch_size, lambda idx: audit_pass(job, idx))
    parts = [(idx, part) for idx, part in shards if part is not None]

    def joined(*keys: str) -> np.ndarray:
        """One array of every shard (each shard's ``part[k1][k2]...``), back in audit order."""
        return cast(np.ndarray, in_order(parts, partial(_dig, keys=keys)))

    maps = {m: joined("maps", m) for m in t.methods}
    if job.pairs is None:
        torch_logits = joined("logits")
        onnx_logits = joined("onnx") if job.session is not None else None
    else:  # multi-label: map rows are (image, class) pairs; predictions are per image
        torch_logits, onnx_logits = _image_logits(job)
    values = {m: {k: joined("metrics", m, k) for k in parts[0][1]["metrics"][m]} for m in t.methods}
    sanity = {
        key: {m: joined(key, m) for m in t.methods}
        for key, bound in (
            ("sanity", t.sanity_max_correlation),
            ("class_sanity", t.sanity_max_class_correlation),
        )
        if bound is not None
    }
    return Gathered(maps, values, torch_logits, onnx_logits, sanity)


def predictions(job: Job, gathered: Gathered) -> Predictions:
    """Stage 3: predictions come from what is deployed (the exported model when there is
    one, with a parity rule against the checkpoint), scored against the reference's, and
    the samples the drift rules judge (``[gate] samples``)."""
    meta, base, t = job.meta, job.base, job.thresholds
    logits, onnx_info, rules = gathered.torch_logits, {}, []
    if job.session is not None and gathered.onnx_logits is not None:
        logits = gathered.onnx_logits
        par = parity(gathered.torch_logits, logits, job.session.provider)
        rules.append(parity_rule(meta.arch, par, t))
        onnx_info = {"path": str(job.exported), "sha256": file_sha256(job.exported), **asdict(par)}
    labels = np.array([s.label for s in job.samples])
    if job.pairs is None:
        scores = classification_metrics(logits, labels, meta.classes)
        ref_scores = classification_metrics(base.logits, labels, meta.classes)
        selected = select_samples(labels, predicted_class(base.logits), predicted_class(logits), t.samples)
        ref_ok, cand_ok = predicted_class(base.logits) == labels, predicted_class(logits) == labels
    else:
        ops = operating_points(base.meta)
        scores = multilabel_metrics(logits, base.labels.astype(bool), meta.classes, ops)
        ref_scores = multilabel_metrics(base.logits, base.labels.astype(bool), meta.classes, ops)
        img, cls = job.pairs[:, 0], job.pairs[:, 1]
        ref_ok = predicted_positive(base.logits, ops)[img, cls]
        cand_ok = predicted_positive(logits, ops)[img, cls]
        selected = np.ones(len(job.samples), dtype=bool) if t.samples == "all" else ref_ok & cand_ok
    return Predictions(logits, labels, scores, ref_scores, selected, ref_ok, cand_ok, onnx_info, rules)


def _worst_corner(values: dict[str, dict[str, np.ndarray]], judged: np.ndarray, key: str) -> str | None:
    """The corner whose mean drop over the judged samples is largest (``key``: the
    ``(N, 4)`` drops, ``counterfactual_drop`` under ``region = "corners"``, ``corner_drop``
    under ``max_corner_drop``); every method's ``key`` becomes that corner's column (one
    per sample, as the reports and the rule expect). ``None``: no judged drop."""
    drops = next(iter(values.values()))[key]
    means = [float(np.nanmean(c)) if np.isfinite(c).any() else -np.inf for c in drops[judged].T]
    worst = int(np.argmax(means))
    for v in values.values():
        v[key] = v[key][:, worst]
    return CORNERS[worst] if np.isfinite(means[worst]) else None


def judge(
    job: Job, gathered: Gathered, preds: Predictions
) -> tuple[list[RuleResult], dict[str, Any], dict[str, Any]]:
    """Stage 4: every rule (parity, AUC, drift per group, counterfactual, sanity); returns
    the rule results, the summaries and the per-sample values for the reports."""
    meta, t, values = job.meta, job.thresholds, gathered.values
    baseline_auc = float(job.base.approved.get("auc", job.base.meta["auc"]))
    rules = [*preds.parity_rules]
    rules += auc_rules(meta.arch, preds.scores, preds.ref_scores, baseline_auc, t)
    newly = ~preds.ref_ok & preds.cand_ok
    judged = preds.selected | newly
    if t.counterfactual_paired:  # what the update added to each sample's swap drop
        less_reference(values, job.base)
    corner = (
        _worst_corner(values, judged, "counterfactual_drop") if t.counterfactual_region == "corners" else None
    )
    costliest = None
    if t.counterfactual_max_corner_drop is not None:
        costliest = _worst_corner(values, judged, "corner_drop")
    drift_rules, summaries, per_sample = _drift(job, values, preds.selected, preds.labels, newly)
    rules += drift_rules
    if t.counterfactual_border is not None:  # map-free: one rule, the drops are every method's
        methods = t.methods if t.counterfactual_region == "map" else t.methods[:1]
        rules += [
            counterfactual_rule(meta.arch, m, values[m]["counterfactual_drop"][judged], t, corner=corner)
            for m in methods
        ]
        if t.counterfactual_max_corner_drop is not None:  # beside the region's rule
            drops = values[t.methods[0]]["corner_drop"][judged]
            rules.append(
                counterfactual_rule(meta.arch, t.methods[0], drops, t, corner=costliest, corners=True)
            )
    for key, per_method in gathered.sanity.items():
        rules += [sanity_rule(meta.arch, m, per_method[m], t, key == "class_sanity") for m in t.methods]
    return rules, summaries, per_sample


def record(
    job: Job,
    gathered: Gathered,
    preds: Predictions,
    judged: tuple[list[RuleResult], dict[str, Any], dict[str, Any]],
    public_key: Keyring | None,
) -> tuple[CandidateResult, dict[str, Any]]:
    """Stage 5: the result record every report is written from, and the arrays the HTML
    overlays need (native-resolution maps, image paths, input size)."""
    meta, base, samples, t = job.meta, job.base, job.samples, job.thresholds
    rules, summaries, per_sample = judged
    verdict, label = decide_verdict(rules)
    coarse = grid_warning(next(iter(gathered.maps.values())).shape[1:], meta.input_size)
    unverified = None
    if public_key is None and (base.path / SIGNATURE_FILE).is_file():
        unverified = "the baseline is signed, but no public key is configured: its signature was not checked"
    artifacts = {
        "size": meta.input_size,
        "preprocess": meta.preprocess,
        "paths": [s.path for s in samples],
        "reference": base.maps,
        "candidate": gathered.maps,
    }
    labels, selected = preds.labels, preds.selected
    return CandidateResult(
        candidate=str(job.candidate),
        candidate_sha256=file_sha256(job.candidate),
        arch=meta.arch,
        baseline=str(base.path),
        reference_sha256=base.meta["reference"]["sha256"],
        audit_sha256=base.audit.sha256,
        classes=tuple(meta.classes),
        auc=float(preds.scores["auc_macro"]),
        reference_auc=float(base.approved.get("auc", base.meta["auc"])),
        auc_per_class=dict(preds.scores["auc_per_class"]),
        reference_auc_per_class=dict(preds.ref_scores["auc_per_class"]),
        preprocess={
            "input_size": meta.input_size,
            "mean": list(meta.mean),
            "std": list(meta.std),
            **meta.preprocess.as_dict(),
        },
        n_audit=len(samples),
        n_selected=int(selected.sum()),
        summaries=summaries,
        rules=rules,
        verdict=verdict,
        label=label,
        per_sample=per_sample,
        sample_ids=[s.id if job.pairs is None else f"{s.id} [{meta.classes[s.label]}]" for s in samples],
        selected=[bool(x) for x in selected],
        predictions=(
            f"onnxruntime ({preds.onnx['provider']})" if preds.onnx else f"torch ({job.dist.device.type})"
        ),
        onnx=preds.onnx,
        precision=job.precision,
        warnings=[w for w in (coarse, unverified) if w],
        baseline_digest=base.digest,
        baseline_signed=public_key is not None,
        groups=_correct_groups(preds.ref_ok, preds.cand_ok),
        consistency={
            m: {
                "reference": intra_class_consistency(base.maps[m], labels, selected, meta.classes),
                "candidate": intra_class_consistency(gathered.maps[m], labels, selected, meta.classes),
            }
            for m in t.methods
        },
        machines=_machines(job),
    ), artifacts


def _machines(job: Job) -> dict[str, dict[str, Any]]:
    """The machines that trained the candidate, made the reference maps and run this gate
    (``CandidateResult.machines``), those that are known."""
    known = (("candidate", job.meta.machine), ("reference_maps", job.base.meta.get("machine")))
    return {**{k: v for k, v in known if v}, "gate": machine(job.dist.device)}


def run_gate(
    candidate: Path,
    *,
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
    spec: ModelSpec | None = None,
    public_key: Keyring | None = None,
    spec_file: Path | None = None,
) -> tuple[CandidateResult, dict[str, Any]]:
    """Gates one candidate checkpoint against the stored baseline ``baselines/<arch>``, in
    five stages a test can call one by one: :func:`prepare` (load and check the candidate
    and its baseline), :func:`audit` (the audit pass), :func:`predictions`, :func:`judge`
    (the rules) and :func:`record` (the result).

    When ``<candidate stem>.onnx`` exists beside the candidate (and ``use_onnx``),
    predictions (AUC, true-positive selection) come from ONNX Runtime and a parity
    rule checks its logits against the checkpoint's; the CAMs always come from the
    checkpoint (they need gradients). A candidate drift-gate did not train (a state
    dict) needs its ``spec``, which must equal the one its baseline was made with.

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
    allocator_policy(AUDIT)  # peak memory independent of the audit set's size
    job = prepare(
        candidate,
        baselines=baselines,
        thresholds=thresholds,
        data_root=data_root,
        reference=reference,
        use_onnx=use_onnx,
        dist=dist,
        batch_size=batch_size,
        progress=progress,
        precision=precision,
        spec=spec,
        public_key=public_key,
        spec_file=spec_file,
    )
    gathered = audit(job)
    preds = predictions(job, gathered)
    return record(job, gathered, preds, judge(job, gathered, preds), public_key)
