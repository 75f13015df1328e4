"""Preprocessing on small files in the real formats: each case checks decoded pixels or the message."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from drift_gate.data.datasets import ImageDataset, Sample, load_dataset
from drift_gate.data.preprocess import Preprocess, decode_image, read_image, resize
from drift_gate.errors import ConfigError, DataError
from gatekit import write_dicom

RAMP12 = np.tile(np.linspace(0, 4095, 16).round().astype(np.uint16), (16, 1))


def _png16(path: Path, values: np.ndarray, sbit: int | None = None) -> Path:
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(values.astype(np.uint16)).save(path, pnginfo=info)
    return path


def test_8bit_png(tmp_path: Path) -> None:
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(values).save(tmp_path / "a.png")
    np.testing.assert_allclose(decode_image(tmp_path / "a.png"), values / 255.0)


def test_12bit_in_16bit_png_without_sbit_needs_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from drift_gate.data import preprocess

    monkeypatch.setattr(preprocess, "_WARNED_LOW_BITS", set())
    path = _png16(tmp_path / "a.png", RAMP12)
    assert decode_image(path).max() == pytest.approx(4095 / 65535)  # near black: what a 16-bit reader sees
    err = capsys.readouterr().err
    assert err.count("drift-gate: warning:") == 1, err
    assert "fit in 12 bits (max 4095)" in err and "set preprocess.bit_depth = 12" in err, err
    decode_image(_png16(tmp_path / "b.png", RAMP12 // 2))  # 11 bits: a line of its own
    decode_image(path)
    assert capsys.readouterr().err.count("drift-gate: warning:") == 1  # then none for images already seen
    np.testing.assert_allclose(decode_image(path, Preprocess(bit_depth=12)), RAMP12 / 4095.0)
    full = _png16(tmp_path / "c.png", RAMP12 * 16)  # uses all 16 bits: nothing to say
    decode_image(full)
    decode_image(_png16(tmp_path / "d.png", RAMP12, sbit=12))  # sBIT says it
    assert capsys.readouterr().err == ""


def test_bit_depth_that_does_not_fit_is_an_error(tmp_path: Path) -> None:
    path = _png16(tmp_path / "a.png", RAMP12 * 4)
    with pytest.raises(DataError, match=r"values up to 16380 do not fit bit_depth = 12 \(max 4095\)"):
        decode_image(path, Preprocess(bit_depth=12))


@pytest.mark.parametrize("stored", ["shifted", "replicated", "unscaled"])
def test_sbit_chunk_gives_the_significant_bits(tmp_path: Path, stored: str) -> None:
    values = {
        "shifted": RAMP12 << 4,  # as the PNG standard asks
        "replicated": (RAMP12 << 4) | (RAMP12 >> 8),
        "unscaled": RAMP12,  # as many detector exports write it
    }[stored]
    path = _png16(tmp_path / "a.png", values, sbit=12)
    np.testing.assert_allclose(decode_image(path), RAMP12 / 4095.0)


def test_sbit_that_contradicts_the_values(tmp_path: Path) -> None:
    values = RAMP12 << 4
    values[0, 0] += 1  # neither scaled (low bits) nor below 2**12
    with pytest.raises(DataError, match="sBIT says 12 significant bits"):
        decode_image(_png16(tmp_path / "a.png", values, sbit=12))


def test_dicom_window_is_applied_and_ignores_a_burned_in_label(tmp_path: Path) -> None:
    pixels = np.tile(np.linspace(500, 1500, 32).round().astype(np.uint16), (32, 1))
    pixels[:4, :4] = 4095  # a burned-in label at the maximum value
    write_dicom(tmp_path / "w.dcm", pixels, WindowCenter=1000, WindowWidth=1001)
    img = decode_image(tmp_path / "w.dcm")
    # PS3.3 C.11.2.1.2 (LINEAR): (x - (c - 0.5)) / (w - 1) + 0.5 on [0, 1]
    want = np.clip((pixels - 999.5) / 1000 + 0.5, 0, 1)
    np.testing.assert_allclose(img, want, atol=1e-6)
    minmax = decode_image(tmp_path / "w.dcm", Preprocess(dicom="minmax"))
    assert minmax[4:].mean() < 0.6 * img[4:].mean()  # the label darkens min-max scaling


def test_dicom_rescale_then_window_and_monochrome1(tmp_path: Path) -> None:
    pixels = np.tile(np.arange(0, 2000, 125, dtype=np.uint16), (16, 1))
    write_dicom(
        tmp_path / "r.dcm",
        pixels,
        "MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=1000,
        WindowWidth=2001,
    )
    hu = pixels * 2.0 - 1000
    want = 1.0 - np.clip((hu - 999.5) / 2000 + 0.5, 0, 1)
    np.testing.assert_allclose(decode_image(tmp_path / "r.dcm"), want, atol=1e-6)


def test_dicom_policies_and_bad_tags(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(16, dtype=np.uint16) * 1000, (16, 1))
    write_dicom(tmp_path / "plain.dcm", ramp)
    img = decode_image(tmp_path / "plain.dcm")  # no window: the image's own min-max
    assert img[0, 0] == 0 and img[0, -1] == 1
    with pytest.raises(DataError, match=r"preprocess\.dicom = 'voi' but the file has no window"):
        decode_image(tmp_path / "plain.dcm", Preprocess(dicom="voi"))
    write_dicom(tmp_path / "multi.dcm", ramp, RescaleSlope=[1, 2])
    with pytest.raises(DataError, match=r"RescaleSlope .* is not a single number"):
        decode_image(tmp_path / "multi.dcm")


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff(tmp_path: Path, bits: int) -> None:
    values = np.arange(256).reshape(16, 16)
    if bits == 8:
        Image.fromarray(values.astype(np.uint8)).save(tmp_path / "a.tif")
        np.testing.assert_allclose(decode_image(tmp_path / "a.tif"), values / 255)
    else:
        Image.fromarray((values * 256).astype(np.uint16)).save(tmp_path / "a.tif")
        np.testing.assert_allclose(decode_image(tmp_path / "a.tif"), values * 256 / 65535)


def test_tiff_in_class_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(30):
            suffix = (".png", ".tif", ".tiff", ".jpg")[i % 4]
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / c / f"{i}{suffix}")
    ds = load_dataset(tmp_path)
    assert len(ds.samples) == 60 and sum(s.path.suffix in (".tif", ".tiff") for s in ds.samples) == 30


def test_decoders_are_limited_to_the_documented_formats(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png", format="BMP")
    with pytest.raises(DataError, match="not a readable PNG, JPEG, TIFF or DICOM image"):
        decode_image(tmp_path / "x.png")


def test_header_declaring_a_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", 50_000, 50_000) + bytes(data[24:29])  # width, height, the rest as saved
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    assert path.stat().st_size < 100
    with pytest.raises(DataError, match=r"bomb\.png: .*(50000x50000|too large)"):
        decode_image(path)


def test_resize_policies_on_a_wide_image() -> None:
    wide = torch.ones(1, 1, 10, 20)
    wide[..., :, :5] = 0  # the left quarter is black
    squash = resize(wide, 10, "squash")
    assert squash.shape == (1, 1, 10, 10) and float(squash[..., :, 0].max()) == 0
    box = resize(wide, 10, "letterbox")
    assert float(box[..., :2, :].abs().max()) == 0 and float(box[..., -2:, :].abs().max()) == 0  # padding
    assert float(box[..., 5, 9]) == pytest.approx(1)
    crop = resize(wide, 10, "crop")
    assert float(crop.min()) == 1  # the central square misses the black quarter


def test_masks_and_images_share_the_geometry(tmp_path: Path) -> None:
    Image.fromarray(np.full((10, 20), 255, np.uint8)).save(tmp_path / "wide.png")
    img = read_image(tmp_path / "wide.png", 10, Preprocess(resize="letterbox"))
    assert img.shape == (1, 10, 10) and float(img[0, 0, 0]) == 0 and float(img[0, 5, 5]) == 1


def test_user_transform_replaces_the_pipeline(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    sample = Sample("a.png", tmp_path / "a.png", 0, "test", "x")
    ds = ImageDataset(
        [sample], 12, (0.5,) * 3, (0.5,) * 3, preprocess=Preprocess(transform="user_transform:prepare")
    )
    x, y = ds[0]
    assert x.shape == (3, 12, 12) and float(x[1, 0, 0]) == 7.0 and y == 0
    bad = Preprocess(transform="user_transform:wrong_shape")
    with pytest.raises(DataError, match=r"returned shape \(1, 4, 4\), expected \(3, 12, 12\)"):
        ImageDataset([sample], 12, (0.5,) * 3, (0.5,) * 3, preprocess=bad)[0]
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        ImageDataset(
            [sample], 12, (0.5,) * 3, (0.5,) * 3, preprocess=Preprocess(transform="no_such_module:f")
        )


def test_one_channel_input() -> None:
    assert Preprocess(channels=1).channels == 1
    with pytest.raises(ConfigError, match="channels must be 1 or 3"):
        Preprocess(channels=2)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"resize": "zoom"}, "resize must be one of squash, letterbox, crop"),
        ({"bit_depth": 17}, "bit_depth must be an integer from 1 to 16"),
        ({"dicom": "window"}, "dicom must be one of auto, voi, minmax"),
        ({"transform": "nocolon"}, "transform must be 'module:function'"),
        ({"colour": 1}, "unknown preprocess key"),
        ([1], "preprocess must be a table"),
    ],
)
def test_stored_preprocess_is_validated(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Preprocess.from_dict(raw, "x")
