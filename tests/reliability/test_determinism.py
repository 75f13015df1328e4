"""The same inputs give the same results: byte-identical JSON, and thread counts
that change no metric by more than 1e-6."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from gatekit import gate, result


def test_same_candidate_twice_gives_byte_identical_json(env: dict[str, Path]) -> None:
    assert gate(env, env["ft"]) == 0
    first = (env["reports"] / "gate.json").read_bytes()
    shutil.rmtree(env["reports"])
    assert gate(env, env["ft"]) == 0
    assert (env["reports"] / "gate.json").read_bytes() == first
    for name in ("gate.md", "gate.junit.xml"):
        assert (env["reports"] / name).is_file()


def test_one_or_two_threads_agree_within_1e_6(env: dict[str, Path]) -> None:
    runs = []
    for threads in ("1", "2"):
        assert gate(env, env["ft"], "--threads", threads) == 0
        runs.append(result(env)["candidates"][0])
    one, two = runs
    assert one["verdict"] == two["verdict"] and math.isclose(one["auc"], two["auc"], abs_tol=1e-6)
    compared = 0
    for method, metrics in one["per_sample"].items():
        for metric, values in metrics.items():
            for a, b in zip(values, two["per_sample"][method][metric], strict=True):
                assert (a is None) == (b is None), (method, metric)
                if a is not None:
                    assert abs(a - b) <= 1e-6, (method, metric, a, b)
                    compared += 1
    assert compared >= 2 * 8 * len(one["sample_ids"])
