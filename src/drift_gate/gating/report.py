"""Reports, all written from one :class:`~drift_gate.gate.GateResult`.

* console table (stdout);
* ``gate.json``: the versioned result;
* ``gate.md``: Markdown summary, also appended to ``$GITHUB_STEP_SUMMARY``;
* GitHub error annotations for failed rules (when ``GITHUB_ACTIONS`` is set) and
  ``verdict=…`` in ``$GITHUB_OUTPUT``;
* ``gate.junit.xml``: one test case per rule;
* ``gate.html``: self-contained (images inlined), metric distributions,
  per-class tables and overlays of the samples that drifted most and least.

Every file is written atomically, and the set of them under a folder lock
(concurrent runs into one folder take turns; the files found afterwards all come
from one run).

Size: every report (console, JSON, Markdown, JUnit, GitHub, HTML) is written from one
result here, so that they cannot disagree; the figures are drawn in
:mod:`drift_gate.gating.figures`.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from drift_gate._io import atomic_write_bytes, side_output, uninterrupted, warn, write_lock
from drift_gate._machine import machines_line
from drift_gate.errors import DataError, DriftGateError
from drift_gate.evidence.registry import CORE_METRICS
from drift_gate.gating.figures import Histogram, histograms_svg, overlay_png
from drift_gate.gating.gate import CandidateResult, GateResult
from drift_gate.gating.rules import FAIL, INCONCLUSIVE, PASS
from drift_gate.gating.signing import sign_document

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "Overlays",
    "console_table",
    "html_report",
    "junit",
    "markdown",
    "overlay_pngs",
    "printable",
    "write_reports",
]


T = TypeVar("T")

_MARK = {PASS: "PASS", FAIL: "FAIL", INCONCLUSIVE: "INCONCLUSIVE", "skipped": "skip"}


def printable(text: str) -> str:
    """``text`` as it can always be shown: a file name that is not valid UTF-8 (its bytes
    surrogate-escaped by ``os.fsdecode``) or holds control characters gets their escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _code(text: str) -> str:
    """``text`` as a Markdown code span that a table row keeps in one cell: printable,
    ``|`` escaped, fenced by more backticks than it holds in a row."""
    shown = printable(text).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", shown)), default=0) + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: printable, ``|`` escaped."""
    return printable(text).replace("|", "\\|")


def _f(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.2e}" if 0 < abs(x) < 1e-3 else f"{x:.4f}"
    return str(x)


def groups_line(c: CandidateResult) -> str:
    """How many audit samples each model gets right, as one line."""
    g = c.groups
    if not g:
        return ""
    return (
        f"right under both {g['both_correct']}, newly right {g['newly_correct']} (reference wrong; "
        f"summarised as its own group), newly wrong {g['newly_wrong']}, wrong under both {g['both_wrong']}"
    )


def preprocess_line(c: CandidateResult) -> str:
    """How the audit images became the model's input, as one line."""
    p = c.preprocess
    if not p:
        return ""
    if p.get("transform"):
        return f"your transform {p['transform']} ({p.get('input_size')} px, {p.get('channels')} channel(s))"
    depth = p.get("bit_depth")
    parts = [
        f"{p.get('input_size')} px ({p.get('resize')})",
        f"{p.get('channels')} channel(s)",
        "16-bit images read as "
        + (f"{depth}-bit" if depth else "the PNG's sBIT bit depth, else 16-bit")
        + ", 8-bit as they are",
        f"DICOM window {p.get('dicom')}",
        "normalised with mean "
        + "/".join(f"{v:g}" for v in p.get("mean", []))
        + ", std "
        + "/".join(f"{v:g}" for v in p.get("std", [])),
    ]
    return "; ".join(parts)


def auc_line(c: CandidateResult) -> str:
    """Each class's (finding's) AUC, candidate and reference, as one line."""
    if not c.auc_per_class:
        return ""
    ref = c.reference_auc_per_class
    return ", ".join(f"{printable(k)} {_f(v)} (ref {_f(ref.get(k))})" for k, v in c.auc_per_class.items())


def console_table(result: GateResult) -> str:
    """The verdict table: one block per candidate, one line per rule."""
    lines = []
    width = max([len(r.rule) for c in result.candidates for r in c.rules] + [4]) + 2
    for c in result.candidates:
        lines.append(
            f"{c.arch}  {printable(c.candidate)}  AUC {c.auc:.4f} (reference {c.reference_auc:.4f})  "
            f"samples {c.n_selected}/{c.n_audit}  ->  {_MARK[c.verdict]}: {c.label}"
        )
        lines.append(f"  predictions: {c.predictions}")
        if c.machines:
            lines.append(f"  machines: {printable(machines_line(c.machines))}")
        if c.preprocess:
            lines.append(f"  preprocessing: {preprocess_line(c)}")
        if c.auc_per_class:
            lines.append(f"  AUC per class: {auc_line(c)}")
        if c.groups:
            lines.append(f"  samples: {groups_line(c)}")
        lines += [f"  warning: {printable(w)}" for w in c.warnings]
        lines.append(f"  {'rule':<{width}}{'status':<14}{'observed':>10}  bound")
        for r in c.rules:
            bound = printable(r.message) if r.status == "skipped" else r.direction
            lines.append(f"  {r.rule:<{width}}{_MARK[r.status]:<14}{_f(r.observed):>10}  {bound}")
    lines.append(f"verdict: {_MARK[result.verdict]}")
    return "\n".join(lines)


def markdown(result: GateResult) -> str:
    """A Markdown summary (GitHub job summary)."""
    out = [f"## drift-gate: {_MARK[result.verdict]}", ""]
    out += [
        "| backbone | candidate | predictions | AUC | reference AUC | samples | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result.candidates:
        out.append(
            f"| {c.arch} | {_code(Path(c.candidate).name)} | {c.predictions} | {c.auc:.4f} | "
            f"{c.reference_auc:.4f} | {c.n_selected}/{c.n_audit} | **{_MARK[c.verdict]}** {c.label} |"
        )
    out += _what_it_rests_on(result)
    warnings = [(c, w) for c in result.candidates for w in c.warnings]
    if warnings:
        out += [""] + [f"> **Warning ({c.arch})**: {printable(w)}" for c, w in warnings]
    failed = [(c, r) for c in result.candidates for r in c.rules if r.status in (FAIL, INCONCLUSIVE)]
    if failed:
        out += ["", "| rule | status | observed | bound | |", "|---|---|---|---|---|"]
        for _, r in failed:
            out.append(
                f"| `{r.rule}` | {_MARK[r.status]} | {_f(r.observed)} | {r.direction} | {_cell(r.message)} |"
            )
    methods = sorted({m for c in result.candidates for m in c.summaries})
    for c in result.candidates:
        for m in methods:
            if m not in c.summaries:
                continue
            out += [
                "",
                f"**{c.arch} / {m}** (overall, {c.n_selected} true positives)",
                "",
                "| metric | mean | median | 95 % CI | degenerate |",
                "|---|---|---|---|---|",
            ]
            for metric in CORE_METRICS:
                s = c.summaries[m][metric]["overall"]
                out.append(
                    f"| {metric} | {_f(s['mean'])} | {_f(s['median'])} | "
                    f"[{_f(s['ci_low'])}, {_f(s['ci_high'])}] | {s['n_degenerate']} |"
                )
            got = {k: c.summaries[m][k].get("newly_correct") for k in CORE_METRICS}
            fresh = {k: v for k, v in got.items() if v}
            if len(fresh) == len(got) and fresh["iou"]["n"]:
                out.append(
                    f"| newly right ({fresh['iou']['n']}): "
                    + ", ".join(f"{k} {_f(v['mean'])}" for k, v in fresh.items() if v)
                    + " | | | | |"
                )
            out += _localisation_rows(c.summaries[m])
            out += _faithfulness_rows(c.summaries[m])
            k = c.consistency.get(m)
            if k:
                ref, cand = k["reference"]["overall"]["mean"], k["candidate"]["overall"]["mean"]
                out += [
                    "",
                    "intra-class consistency (mean pairwise soft IoU of one class's maps): "
                    f"reference {_f(ref)} -> candidate {_f(cand)}",
                ]
    return "\n".join(out) + "\n"


def _what_it_rests_on(result: GateResult) -> list[str]:
    """The Markdown lines under the verdict table: per candidate its samples, preprocessing,
    machines and AUC per class."""
    out: list[str] = []
    kinds: tuple[tuple[str, Callable[[CandidateResult], str], Callable[[CandidateResult], object]], ...] = (
        ("samples", groups_line, lambda c: c.groups),
        ("preprocessing", preprocess_line, lambda c: c.preprocess),
        ("machines", lambda c: printable(machines_line(c.machines)), lambda c: c.machines),
        ("AUC per class", auc_line, lambda c: c.auc_per_class),
    )
    for label, line, show in kinds:
        out += [f"\n{c.arch} {label}: {line(c)}" for c in result.candidates if show(c)]
    return out


def _localisation_rows(summaries: Mapping[str, Any]) -> list[str]:
    """Reference-based localisation (means over true positives with a finding mask)."""
    if "mask_energy" not in summaries:
        return []

    def mean(metric: str) -> str:
        return _f(summaries[metric]["overall"]["mean"])

    n = summaries["mask_energy"]["overall"]["n"]
    return [
        "",
        f"| against the ground-truth masks ({n} samples with a finding) | reference | candidate |",
        "|---|---|---|",
        f"| pointing game (maximum inside the mask) | {mean('reference_pointing_game')} | "
        f"{mean('pointing_game')} |",
        f"| mask energy (share of the map inside the mask) | {mean('reference_mask_energy')} | "
        f"{mean('mask_energy')} |",
    ]


def _faithfulness_rows(summaries: Mapping[str, Any]) -> list[str]:
    """Deletion / insertion faithfulness of both maps on the candidate (when computed)."""
    if "faithfulness" not in summaries:
        return []
    ref = summaries["reference_faithfulness"]["overall"]["mean"]
    cand = summaries["faithfulness"]["overall"]["mean"]
    change = summaries["faithfulness_change"]["overall"]["mean"]
    return [
        "",
        "| faithfulness on the candidate (insertion − deletion area) | reference map | candidate map "
        "| change |",
        "|---|---|---|---|",
        f"| mean over the selected samples | {_f(ref)} | {_f(cand)} | {_f(change)} |",
    ]


def junit(result: GateResult) -> str:
    """JUnit XML: a test suite per candidate, a test case per rule."""
    root = ET.Element("testsuites", name="drift-gate")
    for c in result.candidates:
        fails = sum(r.status in (FAIL, INCONCLUSIVE) for r in c.rules)
        skips = sum(r.status == "skipped" for r in c.rules)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{c.arch}:{printable(Path(c.candidate).name)}",
            tests=str(len(c.rules)),
            failures=str(fails),
            skipped=str(skips),
            errors="0",
        )
        for r in c.rules:
            case = ET.SubElement(suite, "testcase", classname=f"drift_gate.{c.arch}", name=r.rule)
            if r.status in (FAIL, INCONCLUSIVE):
                ET.SubElement(
                    case, "failure", message=printable(r.message), type=r.status
                ).text = f"observed {_f(r.observed)}, bound {r.direction} ({r.source})"
            elif r.status == "skipped":
                ET.SubElement(case, "skipped", message=printable(r.message))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _github(result: GateResult, md: str, env: Mapping[str, str]) -> None:
    """Annotations, the job summary and the verdict output: each may fail on its own
    (a missing folder, a full disk) without changing the verdict."""
    if env.get("GITHUB_ACTIONS") == "true":
        with side_output("the GitHub annotations (stdout)"):
            for c in result.candidates:
                for r in c.rules:
                    if r.status in (FAIL, INCONCLUSIVE):
                        msg = (
                            f"{r.message} [{r.source}]".replace("%", "%25")
                            .replace("\r", "%0D")
                            .replace("\n", "%0A")
                        )
                        print(f"::error title=drift-gate {r.rule}::{msg}", flush=True)
    if env.get("GITHUB_STEP_SUMMARY"):
        with (
            side_output(f"the job summary (GITHUB_STEP_SUMMARY={env['GITHUB_STEP_SUMMARY']})"),
            open(env["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8", errors="backslashreplace") as fh,
        ):
            fh.write(md)
    if env.get("GITHUB_OUTPUT"):  # exit_code is written by the CLI, whatever the outcome
        with (
            side_output(f"the verdict output (GITHUB_OUTPUT={env['GITHUB_OUTPUT']})"),
            open(env["GITHUB_OUTPUT"], "a", encoding="utf-8") as fh,
        ):
            fh.write(f"verdict={result.verdict}\n")


def _distributions(c: CandidateResult, method: str) -> str:
    """The four core metrics' distributions over the selected samples, as an SVG data URI."""
    sel = np.array(c.selected, dtype=bool)
    panels = []
    for metric in CORE_METRICS:
        vals = np.array([np.nan if v is None else v for v in c.per_sample[method][metric]], float)
        bounds = [
            (float(r.bound), r.status == FAIL)
            for r in c.rules
            if r.method == method and r.metric == metric and r.bound is not None
        ]
        mean = c.summaries[method][metric]["overall"]["mean"]
        panels.append(Histogram(metric, vals[sel & ~np.isnan(vals)].tolist(), mean, bounds))
    svg = histograms_svg(panels)
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


@dataclass(frozen=True)
class Overlays:
    """One figure of CAM overlays: the PNG (a row per sample: image, reference map,
    candidate map) and each row's caption."""

    png: bytes
    captions: list[str]


def _overlays(c: CandidateResult, method: str, artifacts: Mapping[str, Any], which: list[int]) -> Overlays:
    import torch

    from drift_gate.data.preprocess import read_image
    from drift_gate.evidence.cam import minmax, upsample

    size = int(artifacts["size"])
    rows, images, captions = [], [], []
    for i in which:
        images.append(read_image(artifacts["paths"][i], size, artifacts["preprocess"])[0].numpy())
        ref = minmax(upsample(torch.from_numpy(artifacts["reference"][method][i : i + 1]), size))[0]
        cand = minmax(upsample(torch.from_numpy(artifacts["candidate"][method][i : i + 1]), size))[0]
        rows.append([None, ref.numpy(), cand.numpy()])
        iou = c.per_sample[method]["iou"][i]
        captions.append(f"{printable(c.sample_ids[i])}: image, reference map, candidate map (IoU {_f(iou)})")
    return Overlays(overlay_png(rows, images), captions)


def overlay_pngs(c: CandidateResult, method: str, artifacts: Mapping[str, Any] | None) -> dict[str, Overlays]:
    """Figures of the (up to three) selected samples whose maps drifted most and least
    (lowest and highest IoU), each as image, reference map, candidate map; keyed
    ``most`` and ``least``. Empty without the gate's artifacts or usable samples."""
    iou = np.array([np.nan if v is None else v for v in c.per_sample[method]["iou"]], float)
    usable = np.flatnonzero(np.array(c.selected, bool) & ~np.isnan(iou))
    if artifacts is None or not len(usable):
        return {}
    order = usable[np.argsort(iou[usable], kind="stable")]
    k = min(3, len(order))
    return {
        "most": _overlays(c, method, artifacts, [int(i) for i in order[:k]]),
        "least": _overlays(c, method, artifacts, [int(i) for i in order[::-1][:k]]),
    }


def _class_table(c: CandidateResult, method: str) -> str:
    rows = []
    groups = ["overall", *c.classes, "newly_correct"]
    head = "".join(f"<th>{html.escape(m)} (mean)</th>" for m in CORE_METRICS)
    for g in groups:
        if g not in c.summaries[method]["iou"]:
            continue
        n = c.summaries[method]["iou"][g]["n"]
        cells = "".join(f"<td>{_f(c.summaries[method][m][g]['mean'])}</td>" for m in CORE_METRICS)
        rows.append(f"<tr><td>{html.escape(g)}</td><td>{n}</td>{cells}</tr>")
    return f"<table><tr><th>group</th><th>n</th>{head}</tr>{''.join(rows)}</table>"


def _consistency_table(c: CandidateResult, method: str) -> str:
    k = c.consistency.get(method)
    if not k:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(g)}</td><td>{k['candidate'][g]['n']}</td><td>{_f(k['reference'][g]['mean'])}</td>"
        f"<td>{_f(k['candidate'][g]['mean'])}</td></tr>"
        for g in ["overall", *c.classes]
        if g in k["candidate"]
    )
    return (
        "<table><tr><th>intra-class consistency (mean pairwise soft IoU)</th><th>n</th><th>reference</th>"
        f"<th>candidate</th></tr>{rows}</table>"
    )


def _figure(what: str, draw: Callable[[], T]) -> T | None:
    """A figure of the HTML report, or ``None`` with one warning line when it cannot be
    drawn (an audit image gone since the gate read it): the figures are not the verdict."""
    try:
        return draw()
    except (OSError, ValueError, RuntimeError, DriftGateError) as exc:
        warn(f"could not draw {what} for gate.html ({exc}); the verdict stands, gate.json is the record")
        return None


def html_report(result: GateResult, artifacts: Mapping[str, Mapping[str, Any]]) -> str:
    """The self-contained HTML report: the verdict, then per candidate its summary, its
    rules and per method its figures and tables, then the rules file as the gate read it."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>drift-gate report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}",
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:right}th{background:#f2f2f2}td:first-child{text-align:left}",
        ".pass{color:#1e7b34}.fail{color:#b02a1a}.inconclusive{color:#a66b00}img{max-width:100%}",
        "</style></head><body>",
        f"<h1>drift-gate: <span class='{result.verdict}'>{_MARK[result.verdict]}</span></h1>",
    ]
    for c in result.candidates:
        parts += _html_candidate(c)
        for method in c.summaries:
            parts += _html_method(c, method, artifacts.get(c.candidate))
    parts.append("<h2>Rules</h2><pre>" + html.escape(json.dumps(result.thresholds, indent=2)) + "</pre>")
    # Lets a headless browser (and the test suite) confirm that every image decoded.
    parts.append(
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.dataset.imagesOk=String(i.length>0&&i.every(x=>x.complete&&"
        "x.naturalWidth>0));});</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_candidate(c: CandidateResult) -> list[str]:
    """A candidate's heading, verdict, what its numbers rest on, warnings and rule table."""
    parts = [
        f"<h2>{html.escape(c.arch)} — <code>{html.escape(printable(c.candidate))}</code></h2>",
        f"<p class='{c.verdict}'><b>{_MARK[c.verdict]}</b>: {html.escape(c.label)}. "
        f"AUC {c.auc:.4f} (reference {c.reference_auc:.4f}); {c.n_selected} of "
        f"{c.n_audit} audit samples selected. Predictions: {html.escape(c.predictions)}.</p>",
    ]
    if c.groups:
        parts.append(f"<p>Samples: {html.escape(groups_line(c))}.</p>")
    if c.preprocess:
        parts.append(f"<p>Preprocessing: {html.escape(preprocess_line(c))}.</p>")
    if c.auc_per_class:
        parts.append(f"<p>AUC per class: {html.escape(auc_line(c))}.</p>")
    if c.machines:
        parts.append(f"<p>Machines: {html.escape(printable(machines_line(c.machines)))}.</p>")
    parts += [f"<p class='inconclusive'>Warning: {html.escape(printable(w))}</p>" for w in c.warnings]
    parts.append("<table><tr><th>rule</th><th>status</th><th>observed</th><th>bound</th><th>source</th></tr>")
    for r in c.rules:
        parts.append(
            f"<tr><td>{html.escape(r.rule)}</td><td class='{r.status}'>{_MARK[r.status]}</td>"
            f"<td>{_f(r.observed)}</td><td>{html.escape(r.direction)}</td>"
            f"<td>{html.escape(r.source)}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _html_method(c: CandidateResult, method: str, art: Mapping[str, Any] | None) -> list[str]:
    """One method's section: metric distributions, per-class and consistency tables,
    faithfulness and localisation where measured, and the overlays that drifted most and least."""
    parts = [f"<h3>{html.escape(method)}</h3>"]
    uri = _figure(f"the {method} distributions of {c.arch}", partial(_distributions, c, method))
    if uri:
        parts.append(f"<img alt='metric distributions {html.escape(method)}' src='{uri}'>")
    parts.append(_class_table(c, method))
    parts.append(_consistency_table(c, method))
    f = c.summaries[method]
    if "faithfulness" in f:
        parts.append(
            "<table><tr><th>faithfulness on the candidate (insertion − deletion)</th>"
            f"<th>reference map</th><th>candidate map</th><th>change</th></tr><tr><td>mean</td>"
            f"<td>{_f(f['reference_faithfulness']['overall']['mean'])}</td>"
            f"<td>{_f(f['faithfulness']['overall']['mean'])}</td>"
            f"<td>{_f(f['faithfulness_change']['overall']['mean'])}</td></tr></table>"
        )
    if "mask_energy" in f:
        cells = "".join(
            f"<tr><td>{label}</td><td>{_f(f['reference_' + k]['overall']['mean'])}</td>"
            f"<td>{_f(f[k]['overall']['mean'])}</td></tr>"
            for k, label in (("pointing_game", "pointing game"), ("mask_energy", "mask energy"))
        )
        parts.append(
            "<table><tr><th>against the ground-truth masks</th><th>reference</th>"
            f"<th>candidate</th></tr>{cells}</table>"
        )
    titles = {"most": "drifted most (lowest IoU)", "least": "drifted least (highest IoU)"}
    figures = _figure(f"the {method} overlays of {c.arch}", partial(overlay_pngs, c, method, art)) or {}
    for which, fig in figures.items():
        uri = "data:image/png;base64," + base64.b64encode(fig.png).decode()
        rows = "".join(f"<li>{html.escape(t)}</li>" for t in fig.captions)
        parts.append(
            f"<h4>{titles[which]}</h4><figure><img alt='overlays {html.escape(method)} "
            f"{titles[which]}' src='{uri}'><figcaption><ol>{rows}</ol></figcaption></figure>"
        )
    return parts


def write_reports(
    result: GateResult,
    out: Path,
    artifacts: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str] | None = None,
    name: str = "gate",
    signer: Ed25519PrivateKey | None = None,
) -> dict[str, Path]:
    """Writes every report into ``out`` and prints the console table; with ``signer``,
    ``gate.json`` carries a signature (:func:`drift_gate.gating.signing.sign_document`).

    Returns:
        Kind -> path of each written file.
    """
    env = os.environ if env is None else env
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create the report folder ({exc.strerror or exc})") from None
    md = markdown(result)
    paths = {
        "json": out / f"{name}.json",
        "markdown": out / f"{name}.md",
        "junit": out / f"{name}.junit.xml",
        "html": out / f"{name}.html",
    }
    texts = {
        "json": json.dumps(
            result.to_dict() if signer is None else sign_document(result.to_dict(), signer),
            indent=2,
            sort_keys=True,
        )
        + "\n",
        "markdown": md,
        "junit": junit(result),
        "html": html_report(result, artifacts),
    }
    # Concurrent runs into one folder take turns, and an interrupt cannot split the set.
    # All four are written beside their targets first, then renamed in: an error while
    # writing (disk full) leaves the previous set whole, and an interrupt cannot split it.
    data = {kind: text.encode("utf-8", "backslashreplace") for kind, text in texts.items()}
    staged = {kind: p.with_name(f".{p.name}.new-{os.getpid()}") for kind, p in paths.items()}
    try:
        with write_lock(out), uninterrupted():
            try:
                for kind, blob in data.items():
                    atomic_write_bytes(staged[kind], blob)
                for kind, p in staged.items():
                    os.replace(p, paths[kind])
            finally:
                for p in staged.values():
                    p.unlink(missing_ok=True)
    except OSError as exc:
        raise DataError(
            f"{out}: cannot write the reports ({exc.strerror or exc}); the previous reports are unchanged"
        ) from None
    _github(result, md, env)
    return paths
