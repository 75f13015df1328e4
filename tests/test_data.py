"""The data loader: manifests, class folders, DICOM, and every error case."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drift_gate.data.datasets import ImageDataset, load_dataset
from drift_gate.data.phantoms import CLASSES
from drift_gate.data.preprocess import read_image
from drift_gate.errors import DataError
from gatekit import write_dicom


def _folder(tmp_path: Path, classes: tuple[str, ...] = ("a", "b"), n: int = 12) -> Path:
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_manifest_round_trip(phantom_data) -> None:  # type: ignore[no-untyped-def]
    assert phantom_data.classes == CLASSES
    assert len(phantom_data.samples) == 50
    assert {s.split for s in phantom_data.samples} == {"train", "val", "test"}
    assert all(s.mask is not None and s.mask.is_file() for s in phantom_data.samples)
    assert len(phantom_data.manifest_sha256) == 64


def test_class_folders_get_hash_based_splits(tmp_path: Path) -> None:
    ds = load_dataset(_folder(tmp_path, n=30))
    assert ds.classes == ("a", "b")
    again = load_dataset(tmp_path / "folder")
    assert [s.split for s in ds.samples] == [s.split for s in again.samples]


def test_split_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        for c in ("x", "y"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / split / c / "1.png")
    ds = load_dataset(tmp_path)
    assert sorted((s.split, ds.classes[s.label]) for s in ds.samples) == sorted(
        (sp, c) for sp in ("train", "val", "test") for c in ("x", "y")
    )


def test_unknown_label(phantom_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown label"):
        load_dataset(phantom_root, classes=CLASSES[:4])


def test_empty_class_in_a_split(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "1.png")
    Image.fromarray(np.ones((8, 8), np.uint8)).save(root / "2.png")
    (root / "manifest.csv").write_text("path,label,split\n1.png,a,train\n2.png,b,train\n")
    with pytest.raises(DataError, match=r"class\(es\) a, b have no images in the val split"):
        load_dataset(root)


def test_duplicate_image_across_splits(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / f"{i}.png")
    shutil.copy(root / "0.png", root / "dup.png")
    (root / "manifest.csv").write_text(
        "path,label,split\n0.png,a,train\n1.png,a,val\n2.png,a,test\ndup.png,a,test\n"
    )
    with pytest.raises(DataError, match="same image appears in splits test, train"):
        load_dataset(root)


def test_hash_mismatch_names_the_file(phantom_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(phantom_root, copy)
    victim = next((copy / "images" / "covid19").glob("*.png"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(DataError, match=rf"{victim.name}: sha256 .* does not match"):
        load_dataset(copy)


def test_missing_file_and_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data source not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "manifest.csv").write_text("path,label\nghost.png,a\n")
    with pytest.raises(DataError, match=r"ghost\.png: image listed in the data set does not exist"):
        load_dataset(tmp_path)


def test_manifest_without_required_columns(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("file,class\n")
    with pytest.raises(DataError, match=r"needs the columns path and label \(found 'file', 'class'"):
        load_dataset(tmp_path)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_dataset(tmp_path)


def test_dicom(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(16, dtype=np.uint16) * 1000, (16, 1))
    write_dicom(tmp_path / "a.dcm", ramp)
    img = read_image(tmp_path / "a.dcm", 16)[0]
    assert img[0, 0] == 0 and img[0, -1] == 1
    write_dicom(tmp_path / "inv.dcm", ramp, "MONOCHROME1")
    assert read_image(tmp_path / "inv.dcm", 16)[0, 0, 0] == 1


def test_image_dataset_is_normalised_three_channel(phantom_data) -> None:  # type: ignore[no-untyped-def]
    ds = ImageDataset(phantom_data.split("val"), 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, _y = ds[0]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[2])
    assert float(x.min()) >= -2.0 and float(x.max()) <= 2.0
    assert ds.labels.tolist() == [s.label for s in phantom_data.split("val")]


def _two_class_manifest(root: Path, header: str, sep: str, encoding: str) -> Path:
    root.mkdir()
    rows = []
    for i in range(6):
        Image.fromarray(np.full((8, 8), i * 10, np.uint8)).save(root / f"{i}.png")
        rows.append(sep.join((f"{i}.png", "ab"[i % 2], ("train", "val", "test")[i // 2])))
    path = root / "data.csv"
    path.write_text("\r\n".join([header, *rows]) + "\r\n", encoding=encoding)
    return path


@pytest.mark.parametrize(
    ("header", "sep", "encoding"),
    [
        ("path,label,split", ",", "utf-8-sig"),  # Excel's "CSV UTF-8": a byte-order mark
        ("path;label;split", ";", "utf-8"),  # a semicolon list separator (many European locales)
        ("path;label;split", ";", "utf-8-sig"),
        ("path\tlabel\tsplit", "\t", "utf-8"),
        (" path , label , split ", ",", "utf-8"),
    ],
)
def test_manifest_dialects(tmp_path: Path, header: str, sep: str, encoding: str) -> None:
    manifest = _two_class_manifest(tmp_path / "m", header, sep, encoding)
    ds = load_dataset(manifest)
    assert ds.classes == ("a", "b") and len(ds.samples) == 6
    assert [s.split for s in ds.samples] == ["train", "train", "val", "val", "test", "test"]


def test_data_root_of_a_manifest_or_a_folder(tmp_path: Path) -> None:
    from drift_gate.data.datasets import data_root

    manifest = _two_class_manifest(tmp_path / "m", "path,label,split", ",", "utf-8")
    assert data_root(manifest) == tmp_path / "m" and data_root(tmp_path / "m") == tmp_path / "m"
