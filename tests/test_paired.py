"""``[counterfactual] paired = true``: the candidate's swap drops judged less the reference's
on the same samples and donors, the reference's stored in the baseline when it is made."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from drift_gate.cli import main
from drift_gate.errors import ConfigError
from drift_gate.gating.stored import load_baseline
from drift_gate.gating.thresholds import parse_thresholds
from gatekit import RULES, assert_error, baseline_args, gate, result

#: The band and the corners, with the same-class control: every per-sample drop pairing changes.
BAND = (
    "[counterfactual]\nmax_score_drop = {bound}\nregion = 'band'\nborder = 0.3\n"
    "max_corner_drop = {bound}\ncontrol = 'same-class'\n"
)


def _rules(bound: float = 1.0, paired: bool = True, extra: str = "") -> str:
    section = BAND.format(bound=bound) + ("paired = true\n" if paired else "") + extra
    return RULES.format(drift="iou.min = 0.0") + section


def _drops(env: dict[str, Path], candidate: Path) -> dict[str, np.ndarray]:
    """The candidate's per-sample band and corner drops as the last gate reported them."""
    assert gate(env, candidate) == 0
    per = result(env)["candidates"][0]["per_sample"]["layercam"]
    return {k: np.array(per[k], dtype=float) for k in ("counterfactual_drop", "corner_drop")}


def test_paired_needs_a_map_free_region_and_a_yes_or_no() -> None:
    assert parse_thresholds(_rules()).as_dict()["counterfactual"]["paired"] is True
    assert "paired" not in parse_thresholds(_rules(paired=False)).as_dict()["counterfactual"]
    with pytest.raises(ConfigError, match=r"paired: needs a map-free region"):
        parse_thresholds(
            RULES.format(drift="iou.min = 0.0") + "[counterfactual]\nmax_score_drop = 0.1\npaired = true\n"
        )
    with pytest.raises(ConfigError, match=r"paired: expected true or false, got 'yes'"):
        parse_thresholds(_rules(paired=False, extra="paired = 'yes'\n"))


def test_paired_drops_are_the_candidates_less_the_references(env: dict[str, Path]) -> None:
    """The baseline stores the reference's drops; the gate subtracts them sample by sample,
    so the reference gated against itself adds exactly nothing, and a fine-tune's paired
    drops are its own less the reference's as the unpaired gate measures both."""
    env["thresholds"].write_text(_rules(paired=False))
    raw_ft, raw_tl = _drops(env, env["ft"]), _drops(env, env["tl"])
    env["thresholds"].write_text(_rules(bound=0.0))
    assert main(baseline_args(env, env["tl"])) == 0
    stored = load_baseline(env["baselines"] / "tiny")
    assert (
        stored.meta["counterfactual"]["control"] == "same-class" and stored.meta["counterfactual"]["corners"]
    )
    assert np.array_equal(stored.drops["counterfactual_drop"], raw_tl["counterfactual_drop"])
    # the corner the unpaired gate judged is a column of the stored (N, 4) corner drops
    assert any(np.array_equal(col, raw_tl["corner_drop"]) for col in stored.drops["corner_drop"].T)
    assert np.abs(raw_tl["counterfactual_drop"]).max() > 1e-3, "the reference's own drops are not 0"
    itself = _drops(env, env["tl"])  # bound 0: passes only if every paired drop is 0
    assert all(np.abs(v).max() == 0 for v in itself.values())
    named = [r for r in result(env)["candidates"][0]["rules"] if "drop.max" in r["rule"]]
    assert len(named) == 2 and all("more than the reference's" in r["message"] for r in named)
    env["thresholds"].write_text(_rules())
    paired = _drops(env, env["ft"])
    want = raw_ft["counterfactual_drop"] - raw_tl["counterfactual_drop"]
    assert np.allclose(paired["counterfactual_drop"], want, atol=1e-12)
    assert not np.allclose(paired["counterfactual_drop"], raw_ft["counterfactual_drop"])


def test_a_baseline_without_the_drops_or_made_under_other_settings_is_refused(
    env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    env["thresholds"].write_text(_rules())
    code = gate(env, env["ft"])
    assert_error(code, capsys, r"stores no reference drops for \[counterfactual\] paired = true; re-make it")
    assert main(baseline_args(env, env["tl"])) == 0
    capsys.readouterr()
    env["thresholds"].write_text(_rules().replace("border = 0.3", "border = 0.2"))
    code = gate(env, env["ft"])
    assert_error(
        code, capsys, r"measured under other \[counterfactual\] settings: border 0.2 \(baseline 0.3\)"
    )
    env["thresholds"].write_text(_rules().replace("max_corner_drop", "# max_corner_drop"))
    assert main(baseline_args(env, env["tl"])) == 0
    capsys.readouterr()
    env["thresholds"].write_text(_rules())
    assert_error(gate(env, env["ft"]), capsys, r"stores no corner drops for max_corner_drop")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda a: a[:-1], r"the stored counterfactual_drop has shape \(\d+,\), not one per map row"),
        (
            lambda a: np.where(np.arange(len(a)) == 0, np.nan, a),
            r"holds NaN, Inf or values outside \[-2, 2\]",
        ),
        (lambda a: a + 5, r"holds NaN, Inf or values outside \[-2, 2\]"),
    ],
    ids=["one-short", "nan", "out-of-range"],
)
def test_stored_drops_that_do_not_fit_are_refused(
    env: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    change: Callable[[np.ndarray], np.ndarray],
    why: str,
) -> None:
    """A hostile baseline whose recorded hash was updated to match still has to hold one
    finite drop per map row."""
    env["thresholds"].write_text(_rules())
    assert main(baseline_args(env, env["tl"])) == 0
    folder = env["baselines"] / "tiny"
    with np.load(folder / "maps.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["drop_counterfactual"] = change(arrays["drop_counterfactual"])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (folder / "maps.npz").write_bytes(buf.getvalue())
    doc = json.loads((folder / "baseline.json").read_text())
    doc["maps"]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (folder / "baseline.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert_error(gate(env, env["ft"]), capsys, why)
