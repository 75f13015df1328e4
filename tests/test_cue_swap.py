"""The cue swap: how much a planted cue carries a model's predictions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from drift_gate.data.datasets import DataSet, load_dataset
from drift_gate.data.phantom_set import generate_dataset
from drift_gate.data.shortcut import MARKER_LEVELS, STRIP_HEIGHTS, _marker_box
from drift_gate.errors import ConfigError
from drift_gate.studies import cue_swap
from drift_gate.studies.cue_swap import swapped_cue_set, swapped_level

SIZE, SEED, RHO = 64, 5, 0.95


def _biased(root: Path, cue: str, occult: float = 0.0) -> DataSet:
    generate_dataset(
        root, 5, seed=SEED, size=SIZE, progress=False, workers=1, shortcut=RHO, occult=occult, cue=cue
    )
    return load_dataset(root)


@pytest.mark.parametrize(("cue", "occult"), [("strip", 0.5), ("marker", 0.0), ("drain", 0.0)])
def test_unswapped_renders_reproduce_the_audit_images_and_swapped_ones_differ(
    tmp_path: Path, cue: str, occult: float
) -> None:
    """The counterfactual is exact: rendered with the cue at its own level, every test image
    is the generated one, byte for byte; with the cue swapped, every one differs."""
    audit = _biased(tmp_path / "audit", cue, occult)
    kw: dict[str, Any] = {"cue": cue, "seed": SEED, "shortcut": RHO, "occult": occult, "size": SIZE}
    same = swapped_cue_set(audit, tmp_path / "same", swap=False, **kw)
    swapped = swapped_cue_set(audit, tmp_path / "swapped", **kw)
    original = {s.id: s.sha256 for s in audit.split("test")}
    assert [s.id for s in same.samples] == [s.id for s in swapped.samples] == list(original)
    assert all(original[s.id] == s.sha256 for s in same.samples)
    assert not any(original[s.id] == s.sha256 for s in swapped.samples)
    assert {s.split for s in swapped.samples} == {"test"} and swapped.classes == audit.classes
    # written once: a second call with the same settings reads the stamp, renders nothing
    stamp = (tmp_path / "swapped" / "swapped.json").stat().st_mtime_ns
    assert swapped_cue_set(audit, tmp_path / "swapped", **kw).samples == swapped.samples
    assert (tmp_path / "swapped" / "swapped.json").stat().st_mtime_ns == stamp


def test_the_swapped_level_is_always_another_class() -> None:
    levels = [
        (level, swapped_level(level, SEED, i)) for level in range(len(STRIP_HEIGHTS)) for i in range(200)
    ]
    assert all(new != old and 0 <= new < len(STRIP_HEIGHTS) for old, new in levels)
    assert {new for _, new in levels} == set(range(len(STRIP_HEIGHTS)))  # every other form is drawn


def test_a_model_that_reads_the_marker_loses_its_accuracy_and_one_that_does_not_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the box's grey level read as the class, accuracy is the cue's correlation and
    falls to nothing with the marker swapped; a model blind to it loses 0 points."""
    audit = _biased(tmp_path / "audit", "marker")
    swapped = swapped_cue_set(
        audit, tmp_path / "swapped", cue="marker", seed=SEED, shortcut=RHO, occult=0.0, size=SIZE
    )
    lo, hi = _marker_box(SIZE)

    def marker_reader(model: Any, meta: Any, data: DataSet, split: str, batch_size: int) -> np.ndarray:
        grey = np.array(
            [
                np.asarray(Image.open(s.path))[lo + 2 : hi - 2, lo + 2 : hi - 2].mean()
                for s in data.split(split)
            ]
        )
        return -((grey[:, None] - np.array(MARKER_LEVELS)[None, :]) ** 2)

    monkeypatch.setattr(cue_swap, "_logits", marker_reader)
    monkeypatch.setattr("drift_gate.models.checkpoint.load_checkpoint", lambda path, device: (None, None))
    reader = cue_swap.cue_reliance(Path("unused.pt"), audit, swapped)
    assert reader["n"] == len(audit.split("test")) == 5
    assert reader["accuracy"] >= 0.8 and reader["swapped_accuracy"] == 0.0
    assert reader["points"] == pytest.approx(100 * reader["accuracy"]) and reader["score_drop"] > 0.5

    def blind(model: Any, meta: Any, data: DataSet, split: str, batch_size: int) -> np.ndarray:
        return np.eye(len(data.classes))[[s.label for s in data.split(split)]]

    monkeypatch.setattr(cue_swap, "_logits", blind)
    assert cue_swap.cue_reliance(Path("unused.pt"), audit, swapped)["points"] == 0.0


def test_a_swap_needs_the_phantoms_it_was_made_from(tmp_path: Path, phantom_data: DataSet) -> None:
    audit = _biased(tmp_path / "audit", "marker")
    swapped = swapped_cue_set(
        audit, tmp_path / "swapped", cue="marker", seed=SEED, shortcut=RHO, occult=0.0, size=SIZE
    )
    with pytest.raises(ConfigError, match="not the 'test' images"):
        cue_swap.cue_reliance(Path("unused.pt"), phantom_data, swapped)
    # a data set of the user's own: ids that no render index can be read from
    foreign = replace(audit, samples=tuple(replace(s, id=f"{s.id[:-4]}-scan.png") for s in audit.samples))
    with pytest.raises(ConfigError, match="not a generated phantom"):
        swapped_cue_set(foreign, tmp_path / "x", cue="marker", seed=0, shortcut=RHO, occult=0.0, size=SIZE)
