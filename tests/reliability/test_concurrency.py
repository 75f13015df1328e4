"""Two gate runs writing reports into one folder at the same time (two processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from gatekit import gate_args


def test_two_gates_into_one_report_folder(env: dict[str, Path]) -> None:
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "drift_gate", *gate_args(env, env[which], "--threads", "1")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for which in ("tl", "ft")
    ]
    for proc in runs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    reports = env["reports"]
    res = json.loads((reports / "gate.json").read_text())  # whole and valid
    (c,) = res["candidates"]
    winner = Path(c["candidate"]).name
    other = {"tl.pt": "ft.pt", "ft.pt": "tl.pt"}[winner]
    # Every report in the folder comes from the same run as gate.json.
    for name in ("gate.md", "gate.html"):
        text = (reports / name).read_text()
        assert winner in text and other not in text, name
    suite = ET.parse(reports / "gate.junit.xml").getroot()
    assert len(suite.findall(".//testcase")) == len(c["rules"])
    assert sorted(p.name for p in reports.iterdir()) == [
        ".lock",
        "gate.html",
        "gate.json",
        "gate.junit.xml",
        "gate.md",
    ], "no temporary files are left"
