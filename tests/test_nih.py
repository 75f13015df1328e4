"""NIH ChestX-ray14 in its own layout: a miniature copy with the data set's real entry file
(its header and rows, from the metadata torchxrayvision ships), synthetic pixels, the
official split lists; labels, patient splits, errors, and baseline -> gate on it."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drift_gate.cli import main
from drift_gate.data.datasets import load_dataset
from drift_gate.errors import DataError
from gatekit import assert_error

xrv = pytest.importorskip("torchxrayvision")

FINDINGS = ["Atelectasis", "Effusion", "Infiltration"]
ENTRY = Path(xrv.__file__).parent / "data" / "Data_Entry_2017_v2020.csv.gz"


def _real_rows(n: int) -> tuple[str, list[dict[str, str]]]:
    """The entry file's header line and ``n`` of its rows: a third without findings, the
    rest with at least one of ``FINDINGS``, from distinct patients where possible."""
    with gzip.open(ENTRY, "rt", encoding="utf-8") as fh:
        header = fh.readline()
        rows = list(csv.DictReader(io.StringIO(header + "".join(fh.readline() for _ in range(6000)))))
    chosen, patients = [], set()
    for r in rows:
        findings = set(r["Finding Labels"].split("|"))
        wanted = bool(findings & set(FINDINGS)) if len(chosen) % 3 else findings == {"No Finding"}
        if wanted and r["Patient ID"] not in patients:
            chosen.append(r)
            patients.add(r["Patient ID"])
        if len(chosen) == n:
            break
    return header, chosen


def make_nih(root: Path, n: int = 36, official: bool = True) -> Path:
    header, rows = _real_rows(n)
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for r in rows:
        pixels = (rng.random((48, 48)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / r["Image Index"])
    with (root / "Data_Entry_2017_v2020.csv").open("w", newline="") as fh:
        fh.write(header)
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writerows(rows)
    if official:
        test = [r["Image Index"] for i, r in enumerate(rows) if i % 2 == 0]
        train_val = [r["Image Index"] for i, r in enumerate(rows) if i % 2 == 1]
        (root / "test_list.txt").write_text("\n".join(test) + "\n")
        (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    return root


def _entries(root: Path) -> list[dict[str, str]]:
    with (root / "Data_Entry_2017_v2020.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_labels_and_official_splits(tmp_path: Path) -> None:
    root = make_nih(tmp_path / "nih")
    data = load_dataset(root, FINDINGS, multilabel=True)
    test = {s.id.split("/")[-1] for s in data.split("test")}
    assert test == set((root / "test_list.txt").read_text().split())
    entries = {r["Image Index"]: r["Finding Labels"] for r in _entries(root)}
    for s in data.samples:
        want = {f for f in entries[Path(s.id).name].split("|") if f in FINDINGS}
        assert {FINDINGS[i] for i in s.labels or ()} == want


def test_without_official_lists_patients_never_share_splits(tmp_path: Path) -> None:
    root = make_nih(tmp_path / "nih", official=False)
    data = load_dataset(root, FINDINGS, multilabel=True)
    patient = {r["Image Index"]: r["Patient ID"] for r in _entries(root)}
    by_patient: dict[str, set[str]] = {}
    for s in data.samples:
        by_patient.setdefault(patient[Path(s.id).name], set()).add(s.split)
    assert all(len(v) == 1 for v in by_patient.values())


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (
            lambda r: (r / "train_val_list.txt").unlink(),
            r"train_val_list.txt: missing \(the official split needs both",
        ),
        (
            lambda r: (r / "Data_Entry_2017_v2020.csv").write_text(
                "Image Index,Finding Labels,Follow-up #\n00000001_000.png,Cardiomegaly,0\n"
            ),
            r"Data_Entry_2017_v2020.csv: no column 'Patient ID'",
        ),
        (lambda r: [p.unlink() for p in (r / "images").iterdir()], r"none of the 36 images listed in"),
    ],
    ids=["one official list", "missing column", "no image on disk"],
)
def test_broken_copies_are_refused(tmp_path: Path, damage: object, pattern: str) -> None:
    root = make_nih(tmp_path / "nih")
    damage(root)  # type: ignore[operator]
    with pytest.raises(DataError, match=pattern):
        load_dataset(root, FINDINGS, multilabel=True)


def test_baseline_and_gate_on_the_nih_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_nih(tmp_path / "nih")
    torch.manual_seed(0)
    net = xrv.models.DenseNet(num_classes=len(FINDINGS), in_channels=1)
    torch.save(net.state_dict(), tmp_path / "v1.pt")
    with torch.no_grad():
        net.classifier.weight.add_(1e-3 * torch.randn_like(net.classifier.weight))
    torch.save(net.state_dict(), tmp_path / "v2.pt")
    spec = tmp_path / "model.toml"
    spec.write_text(
        '[model]\narch = "xrv:densenet121"\nname = "nih"\ntask = "multilabel"\n'
        f"classes = {json.dumps(FINDINGS)}\ninput_size = 64\nchannels = 1\n"
        "mean = [0.5]\nstd = [0.00048828125]\n"
    )
    rules = tmp_path / "thresholds.toml"
    rules.write_text(
        '[gate]\nsamples = "all"\nmin_samples = 2\n[auc]\nmin_support = 1\nmax_drop = 0.5\n'
        "[drift]\niou.min = 0.1\n"
    )
    common = [
        "--model",
        str(spec),
        "--data",
        str(root),
        "--thresholds",
        str(rules),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert (
        main(
            [
                "baseline",
                "--reference",
                str(tmp_path / "v1.pt"),
                "--per-class",
                "3",
                "--out",
                str(tmp_path / "baselines" / "nih"),
                *common,
            ]
        )
        == 0
    )
    gate = ["gate", "--candidate", str(tmp_path / "v2.pt"), "--baselines", str(tmp_path / "baselines")]
    code = main([*gate, "--reports", str(tmp_path / "reports"), *common])
    doc = json.loads((tmp_path / "reports" / "gate.json").read_text())["candidates"][0]
    assert code == 0, [(r["rule"], r["status"], r["message"]) for r in doc["rules"]]
    assert all(i.startswith("images/") for i in doc["sample_ids"])
    # a single-label model on this layout is told why not
    spec.write_text(spec.read_text().replace('task = "multilabel"', 'task = "multiclass"'))
    assert_error(
        main(["baseline", "--reference", str(tmp_path / "v1.pt"), "--out", str(tmp_path / "b2"), *common]),
        capsys,
        r"NIH ChestX-ray14 is multi-label",
    )
