"""File names are data (hypothesis): generated names for the candidate and the audit
images, with control characters, bytes that are not UTF-8, mathtext, format strings,
HTML and XML specials, go into every report the gate writes from a real result. Each
report stays parseable, shows the name as printable text and never lets a name add a
line, a tag or a table cell."""

from __future__ import annotations

import dataclasses
import html
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drift_gate.gating.gate import CandidateResult, GateResult, run_gate
from drift_gate.gating.report import console_table, html_report, junit, markdown, printable
from drift_gate.gating.thresholds import parse_thresholds
from gatekit import RULES

#: what a name on a POSIX file system can hold: any byte but ``/`` and NUL, as the OS
#: hands it to Python (bytes that are not UTF-8 surrogate-escaped by os.fsdecode)
_SPECIALS = st.sampled_from(
    ["$x^2$", "\\frac", "%s", "{0}", "{}", "<b>", "&amp;", "]]>", "\n", "\r", "\t", "|", "`"]
)
_BYTES = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_"))
_NAMES = st.lists(
    st.one_of(
        _SPECIALS, _BYTES.map(os.fsdecode), st.text(st.characters(exclude_characters="/\0"), max_size=12)
    ),
    min_size=1,
    max_size=5,
).map("".join)


class _Gated(tuple):  # type: ignore[type-arg]
    def __repr__(self) -> str:  # hypothesis shows the arguments of a failing example
        return "<a gate result>"


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, trained: Path, phantom_root: Path) -> tuple[Any, ...]:
    """One real gate result of the tiny FT checkpoint, its artifacts and an audit image."""
    from gatekit import make_env

    env = make_env(tmp_path_factory.mktemp("names"), phantom_root, trained / "tl.pt", trained / "ft.pt")
    rules = parse_thresholds(RULES.format(drift="iou.min = 0.3"))
    c, artifacts = run_gate(
        env["ft"],
        baselines=env["baselines"],
        thresholds=rules,
        data_root=env["data"],
        batch_size=4,
        use_onnx=False,
    )
    assert any(c.selected), "the overlays need selected samples"
    return _Gated((c, artifacts, {}, Path(artifacts["paths"][0])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_NAMES)
def test_a_generated_file_name_is_shown_never_interpreted(
    gated: tuple[Any, ...], tmp_path: Path, name: str
) -> None:
    base, artifacts, thresholds, image = gated
    folder = tmp_path / "n"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:  # the name is a real file: the overlays read the image from it
        path = folder / (name[:80] + ".png")
        shutil.copy(image, path)
    except OSError:  # a name the file system refuses (too long in bytes) is no file name
        return
    candidate = str(folder / (name + ".pt"))
    c: CandidateResult = dataclasses.replace(
        base, candidate=candidate, sample_ids=[path.name] * base.n_audit, warnings=[f"about {path.name}"]
    )
    art = {candidate: {**artifacts, "paths": [path] * base.n_audit}}
    result = GateResult(candidates=[c], thresholds=thresholds, thresholds_path="thresholds.toml", versions={})
    shown = printable(Path(candidate).name)
    assert shown.isprintable()

    clean = dataclasses.replace(c, candidate="c.pt", sample_ids=["s"] * c.n_audit, warnings=["about s"])
    plain = GateResult(
        candidates=[clean], thresholds=thresholds, thresholds_path="thresholds.toml", versions={}
    )
    for render in (console_table, markdown):  # a name never adds or removes a line
        text, before = render(result), render(plain)
        assert len(text.splitlines()) == len(before.splitlines()), render.__name__
        assert (shown if render is console_table else shown.replace("|", "\\|")) in text, render.__name__
        text.encode("utf-8", "backslashreplace")
    # nor a cell of the job summary's table: its row has as many unescaped | as a plain one
    row, plain_row = (
        next(x for x in markdown(r).splitlines() if x.startswith("| tiny |")) for r in (result, plain)
    )
    assert len(re.findall(r"(?<!\\)\|", row)) == len(re.findall(r"(?<!\\)\|", plain_row)), row

    suites = ET.fromstring(junit(result).encode("utf-8", "backslashreplace"))
    assert suites[0].get("name") == f"tiny:{shown}"

    page = html_report(result, art)
    assert html.escape(printable(candidate)) in page
    assert html.escape(printable(path.name)) in page  # in a caption of the overlays
    # every tag the page has is the report's own: as many as with a plain name
    assert page.count("<") == html_report(plain, {"c.pt": artifacts}).count("<")
