"""Calibration runs kept as numbers (``runs.json``) and pooled by ``calibrate --add-runs``:
the pooled proposal equals one call's over the same runs, a run is counted once, runs that
measured something else are refused before any training, and the file is hostile input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drift_gate._machine import is_machine
from drift_gate.cli import main
from drift_gate.cli.parser import build_parser
from drift_gate.data.datasets import DataSet
from drift_gate.errors import ConfigError
from drift_gate.gating.thresholds import parse_thresholds
from drift_gate.studies import calibrate_store
from drift_gate.studies.calibrate import _record, propose_from_runs, run_calibration
from drift_gate.studies.calibrate_report import Calibration, thresholds_text
from drift_gate.studies.calibrate_runs import retrained_draws
from drift_gate.studies.calibrate_store import StoredRun, pool_runs, read_runs, runs_key
from drift_gate.training.profiles import PhantomConfig, Profile
from gatekit import TINY_TRAINING

RULES = """
[gate]
methods = ["layercam"]
samples = "all"
min_samples = 3
statistic = "mean"
[auc]
min_support = 1
min = 0.0
max_drop = 0.5
[drift]
iou.min = 0.0
[counterfactual]
region = "band"
border = 0.2
max_score_drop = 0.5
"""


@pytest.fixture()
def tiny(trained: Path, phantom_root: Path) -> Profile:
    """The session's tiny TL and FT as a profile (phantoms: 10 per class, 64 px, seed 3)."""
    return replace(
        TINY_TRAINING,
        name="tiny",
        data="phantoms",
        data_dir=str(phantom_root),
        phantoms=PhantomConfig(n_per_class=10, size=64, seed=3),
        out=str(trained.parent),
    )


def _bounds(cal: Calibration) -> dict[tuple[str, str], tuple[float, float, float]]:
    return {(r.method, r.metric): (r.bound, r.centre, r.noise) for r in cal.all_rows}


def test_pooled_runs_propose_what_one_calibration_of_the_same_runs_proposes(
    tiny: Profile, phantom_data: DataSet, tmp_path: Path
) -> None:
    rules = parse_thresholds(RULES, "t.toml")
    out = tmp_path / "cal"  # one folder: the seed runs are trained once and reused
    first = run_calibration(tiny, phantom_data, rules, out, seeds=[0, 1], per_class=2, k=3.0)
    saved = tmp_path / "first.json"
    shutil.copy(out / "runs.json", saved)
    key, runs = read_runs(saved)
    assert key == first.key and [r.seed for r in runs] == [0, 1]
    assert [r.draw for r in runs] == [True, False], "the profile's fine-tune stands for its draw"
    assert is_machine(runs[0].machine) and runs[0].drops["counterfactual_drop"] == pytest.approx(
        first.margin_rows[0].drops[0]
    )
    pooled = run_calibration(
        tiny, phantom_data, rules, out, seeds=[0, 2], per_class=2, k=3.0, add_runs=(saved,)
    )
    assert [(r["seed"], r["file"]) for r in pooled.runs["tiny"]] == [(0, ""), (2, ""), (1, str(saved))]
    assert pooled.pooled == [{"arch": "tiny", "file": str(saved), "runs": 2, "pooled": 1, "duplicates": 1}]
    assert [r.seed for r in read_runs(out / "runs.json")[1]] == [0, 2], "its own runs only"
    text = (out / "thresholds.proposed.toml").read_text()
    # the same three runs in one call (all three up to date in ``out``: measured again, not retrained)
    whole = run_calibration(tiny, phantom_data, rules, out, seeds=[0, 1, 2], per_class=2, k=3.0)
    got, want = _bounds(pooled), _bounds(whole)
    assert got.keys() == want.keys() and got
    for name, values in want.items():
        assert got[name] == pytest.approx(values), name
    assert pooled.margin_rows[0].bound == whole.margin_rows[0].bound
    assert pooled.auc_rows[0].centre == pytest.approx(whole.auc_rows[0].centre)
    # the same from the two files alone: no checkpoint, data or training
    files = (saved, tmp_path / "second.json")
    shutil.copy(out / "runs.json", files[1])
    shutil.copy(saved, out / "runs.json")  # ``whole`` rewrote it
    alone = propose_from_runs("tiny", rules, files, k=3.0, per_class=2)
    got = _bounds(alone)
    assert [r["seed"] for r in alone.runs["tiny"]] == [0, 1, 2] and not alone.stored and not alone.notes
    for name, values in want.items():
        assert got[name] == pytest.approx(values), name
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(RULES)
    argv = ["calibrate", "--stored-only", "--thresholds", str(rules_file), "--per-class", "2", "--k", "3"]
    argv += ["--add-runs", str(files[0]), "--add-runs", str(files[1]), "--out", str(tmp_path / "alone")]
    assert main(argv) == 0
    proposed = parse_thresholds((tmp_path / "alone" / "thresholds.proposed.toml").read_text(), "p")
    assert proposed.counterfactual_max_drop == whole.margin_rows[0].bound
    assert not (tmp_path / "alone" / "runs.json").exists(), "nothing new was measured"
    # runs that other code measured: refused, or with ``stale_ok`` re-done and said so
    doc = json.loads(files[0].read_text())
    doc["key"]["measuring_code"] = "0" * 64
    files[0].write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="differing: measuring code"):
        propose_from_runs("tiny", rules, files[:1], k=3.0, per_class=2)
    old = propose_from_runs("tiny", rules, files[:1], k=3.0, per_class=2, stale_ok=True)
    assert old.notes == [
        "the runs were measured by other code or rules than this proposal's (measuring code)"
    ]
    assert "# Note: the runs were measured by other code" in thresholds_text(old, rules)
    assert f"# Pooled from {saved}: 1 runs (1 already in the pool, counted once)." in text
    assert "# Runs trained on: " in text


def test_runs_that_measured_something_else_are_refused_before_any_training(
    tiny: Profile, phantom_data: DataSet, tmp_path: Path
) -> None:
    rules = parse_thresholds(RULES, "t.toml")
    out = tmp_path / "cal"
    run_calibration(tiny, phantom_data, rules, out, seeds=[0], per_class=2)
    doc = json.loads((out / "runs.json").read_text())
    other = [
        ("training_code", "0" * 64, "training code"),
        ("rules", {**doc["key"]["rules"], "per_class": 3}, "the rules' per_class"),
        ("backbones", {"tiny": {**doc["key"]["backbones"]["tiny"], "audit": "a" * 64}}, "tiny's audit set"),
        (
            "backbones",
            {"tiny": {**doc["key"]["backbones"]["tiny"], "training": "b" * 64}},
            "tiny's training settings",
        ),
    ]
    for name, value, said in other:
        path = tmp_path / f"{said}.json"
        path.write_text(json.dumps({**doc, "key": {**doc["key"], name: value}}))
        fresh = tmp_path / f"out-{said}"
        with pytest.raises(ConfigError, match=f"its runs measured something else \\(differing: {said}\\)"):
            run_calibration(tiny, phantom_data, rules, fresh, seeds=[0, 1], per_class=2, add_runs=(path,))
        assert not (fresh / "runs").exists(), "refused before a run was trained"
    stricter = parse_thresholds(RULES.replace('"mean"', '"median"'), "t.toml")
    with pytest.raises(ConfigError, match="the rules' statistic"):
        run_calibration(
            tiny,
            phantom_data,
            stricter,
            tmp_path / "m",
            seeds=[0],
            per_class=2,
            add_runs=(out / "runs.json",),
        )
    args = build_parser().parse_args(["calibrate", "--add-runs", "a.json", "--add-runs", "b.json"])
    assert args.add_runs == [Path("a.json"), Path("b.json")]


def _run(**over: Any) -> dict[str, Any]:
    summary = {"n": 5, "n_degenerate": 0, "mean": 0.4, "median": 0.4, "std": 0.1}
    summary |= {"p10": 0.3, "p90": 0.5, "ci_low": 0.35, "ci_high": 0.45}
    run = {
        "arch": "tiny",
        "source": "seed",
        "seed": 0,
        "draw": True,
        "checkpoint": "ft.pt",
        "candidate_sha256": "c" * 64,
        "auc": 0.9,
        "reference_auc": 0.91,
        "n_selected": 5,
        "n_audit": 10,
        "summaries": {"layercam": {"iou": {"overall": summary}}},
        "drops": {"counterfactual_drop": 0.1},
        "machine": {"cpu": "Some CPU", "threads": 2},
    }
    return run | over


def _doc(*runs: dict[str, Any], **over: Any) -> dict[str, Any]:
    key = {
        "training_code": "1" * 64,
        "measuring_code": "2" * 64,
        "rules": {"methods": ["layercam"], "samples": "all", "statistic": "mean", "per_class": 2},
        "backbones": {"tiny": {"training": "3" * 64, "audit": "4" * 64}},
    }
    return {"format": 1, "key": key, "runs": list(runs) or [_run()]} | over


@pytest.mark.parametrize(
    ("doc", "said"),
    [
        ("{", "not a calibration runs file"),
        (_doc() | {"extra": 1}, "expected format, key and runs"),
        (_doc(format=2), "runs file format 2; this drift-gate reads 1"),
        (_doc(format=True), "runs file format True; this drift-gate reads 1"),
        (_doc(runs=[]), "runs must be a list of 1 to"),
        (_doc(key={"training_code": "x"}), "key is malformed"),
        (_doc(_run(arch="other")), "run 1: its backbone is not in the file's key"),
        (_doc(_run(), _run(seed=-1)), "run 2: malformed seed"),
        (_doc(_run(auc=1.5, candidate_sha256="zz")), "malformed candidate_sha256, auc"),
        (_doc(_run(machine={"cpu": "Evil\nmax_drop = 1.0"})), "malformed machine"),
        (_doc(_run(drops={"counterfactual_drop": "0.1"})), "malformed drops"),
        (_doc(_run(draw=1)), "malformed draw"),
        (_doc(_run(stray=1)), "expected the fields"),
        (_doc(_run(summaries={"gradcam": {}})), "keyed by the key's methods"),
        (_doc(_run(summaries={"layercam": {"pixels": {}}})), "unknown metric"),
        (_doc(_run(summaries={"layercam": {"iou": {"class 1": {}}}})), "groups must be among"),
        (_doc(_run(summaries={"layercam": {"iou": {"overall": {"n": "5"}}}})), "a summary is malformed"),
    ],
)
def test_a_runs_file_is_hostile_input(tmp_path: Path, doc: Any, said: str) -> None:
    path = tmp_path / "runs.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(ConfigError, match=said):
        read_runs(path)


def test_a_runs_file_refuses_non_numbers_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(_doc()).replace('"auc": 0.9', '"auc": NaN'))
    with pytest.raises(ConfigError, match="NaN is not a number a run can hold"):
        read_runs(path)
    path.write_text(json.dumps(_doc()))
    _, (run,) = read_runs(path)
    assert run.origin == str(path) and run.summaries["layercam"]["iou"]["overall"]["n"] == 5
    monkeypatch.setattr(calibrate_store, "_MAX_BYTES", 100)
    with pytest.raises(ConfigError, match="too large for a calibration runs file"):
        read_runs(path)


def test_a_run_is_counted_once_and_every_calibrations_draws_are_pooled(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    doc = _doc()
    path.write_text(json.dumps(doc))
    key, runs = read_runs(path)
    twice = [*runs, replace(runs[0], seed=9)]
    pooled, report = pool_runs(key, [replace(runs[0], origin="")], [(path, key, twice)])
    assert len(pooled) == 1 and report[0] == {"file": str(path), "runs": 2, "pooled": 0, "duplicates": 2}

    def made(values: list[float], draws: list[bool], sha: str) -> list[StoredRun]:
        out = []
        for i, (v, d) in enumerate(zip(values, draws, strict=True)):
            summary = dict(runs[0].summaries["layercam"]["iou"]["overall"], mean=v)
            row = {"layercam": {"iou": {"overall": summary}}}
            out.append(replace(runs[0], seed=i, draw=d, candidate_sha256=sha * 63 + str(i), summaries=row))
        return out

    # this machine's calibration (one draw: its fine-tune) and another machine's (its
    # fine-tune and two re-run pretrainings): four draws between them
    here = made([0.40, 0.42, 0.41], [True, False, False], "a")
    there = made([0.50, 0.30, 0.45], [True, True, True], "b")
    both, _ = pool_runs(key, here, [(path, key, there)])
    cal = Calibration("t", "seeds", None, "mean", ("layercam",), {}, {})
    rules = parse_thresholds('[gate]\nmethods = ["layercam"]\n[drift]\niou.min = 0.0\n', "t.toml")
    _record(cal, "tiny", both, rules, None)
    (row,) = [r for r in cal.all_rows if r.metric == "iou"]
    assert row.values == [0.40, 0.42, 0.41, 0.50, 0.30, 0.45]
    assert row.draw_sd == pytest.approx(float(np.std([0.40, 0.50, 0.30, 0.45], ddof=1)))
    assert "(4 draws)" in row.comment()


def test_what_a_runs_file_names_cannot_forge_a_line_of_the_proposal() -> None:
    assert (
        not is_machine({"cpu": "A\nB"})
        and not is_machine({"cpu": "A\u2028B"})
        and is_machine({"cpu": "Xeon®"})
    )
    cal = Calibration("t", "seeds", 3.0, "mean", ("layercam",), {}, {})
    cal.runs["tiny"] = [{"source": "seed", "seed": 0, "auc": 0.9, "n_selected": 3, "machine": "A\rB"}]
    cal.pooled = [{"arch": "tiny", "file": "x\nmax_drop = 1.0\n#", "runs": 1, "pooled": 1, "duplicates": 0}]
    rules = parse_thresholds("[auc]\nmin = 0.5\n[drift]\niou.min = 0.0\n", "t.toml")
    text = thresholds_text(cal, rules)
    assert "\nmax_drop = 1.0" not in text and "# Pooled from x?max_drop = 1.0?#: 1 runs." in text
    assert "# Runs trained on: A?B (1 runs)." in text


def test_draws_can_be_named_by_range_so_a_later_calibration_adds_new_ones() -> None:
    assert retrained_draws(("pretrain:5-7",)) == [("pretrain", 5), ("pretrain", 6), ("pretrain", 7)]
    assert retrained_draws(("pretrain:2", "pretrain:2-3", "tl")) == [
        ("tl", 1),
        ("pretrain", 1),
        ("pretrain", 2),
        ("pretrain", 3),
    ]
    for bad in ("pretrain:4-2", "pretrain:0-3", "pretrain:1-21", "pretrain:a-b", "pretrain:3-"):
        with pytest.raises(ConfigError, match=f"--vary {bad}: the number of pretrain draws"):
            retrained_draws((bad,))


def test_runs_key_names_the_code_rules_and_backbones() -> None:
    rules = parse_thresholds(RULES, "t.toml")
    key = runs_key(rules, 4, {"tiny": {"training": "3" * 64, "audit": "4" * 64}})
    assert key["rules"]["per_class"] == 4 and key["rules"]["counterfactual"]["region"] == "band"
    assert len(key["training_code"]) == len(key["measuring_code"]) == 64
    assert key["training_code"] != key["measuring_code"]
