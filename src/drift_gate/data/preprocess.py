"""How a file becomes the model's input: stated, configurable, stored with the model.

:class:`Preprocess` is part of a checkpoint's metadata and of every baseline, and
the gate refuses a candidate whose preprocessing differs from its baseline's. The
steps, in order:

1. **Decode** to a 2-D float image in ``[0, 1]`` at its own size
   (:func:`decode_image`). Formats: PNG, JPEG, TIFF (Pillow, restricted to these
   three whatever the content says) and DICOM (pydicom).

   * 8-bit images: ``value / 255``; RGB is converted to luminance.
   * 16-bit images (PNG, TIFF): ``bit_depth`` says how many bits carry the signal.
     Unset, a PNG's ``sBIT`` chunk says it; values scaled up to 16 bits as the PNG
     standard asks (low bits zero or replicated) are shifted back, values stored
     as they came off a 12-bit detector are divided by ``2**sBIT - 1``. Without
     ``sBIT``: ``value / 65535``. Set, every value must fit in ``bit_depth`` bits
     (else an error) and is divided by ``2**bit_depth - 1``.
   * DICOM: the modality LUT (rescale slope and intercept), then with
     ``dicom = "auto"`` (the default) the file's VOI LUT or window centre/width
     when it has one (pydicom's ``apply_voi_lut``, first window), scaled by the
     window's output range, else the image's own min-max; ``"voi"`` requires a
     window, ``"minmax"`` ignores it. ``MONOCHROME1`` is inverted.
2. **Resize** to ``size x size`` (bilinear, antialiased): ``resize = "squash"``
   (the default: the whole image, aspect ratio not kept), ``"letterbox"`` (the
   longer side fits, the rest is padded with black) or ``"crop"`` (the central
   square). Finding masks are resized the same way.
3. **Channels**: the grey image is repeated into ``channels`` (1 or 3) channels,
   then normalised with the checkpoint's mean and std.

``transform = "package.module:function"`` replaces all three steps with the user's
own callable, the one their production code uses: it is called with the image's
path and must return a float tensor or array ``(channels, size, size)``: the model
input exactly, normalisation included. It is imported by name from the user's
code (never unpickled); it must be importable where drift-gate runs.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from drift_gate.errors import ConfigError, DataError

__all__ = [
    "DEFAULT",
    "DICOM_POLICIES",
    "MAX_PIXELS",
    "RESIZE_POLICIES",
    "Preprocess",
    "apply_transform",
    "decode_image",
    "load_transform",
    "read_image",
    "resize",
]


RESIZE_POLICIES = ("squash", "letterbox", "crop")
DICOM_POLICIES = ("auto", "voi", "minmax")
#: Pillow decoders that may be used (the content cannot pick another, e.g. EPS).
_PIL_FORMATS = ("PNG", "JPEG", "TIFF")
#: Largest image a header may declare (width x height), checked before decoding.
MAX_PIXELS = 12_000 * 12_000


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing of a model's input (see the module docstring).

    Attributes:
        bit_depth: significant bits of 16-bit images; ``None``: from the PNG's
            ``sBIT`` chunk, else 16.
        dicom: ``auto``, ``voi`` or ``minmax``.
        resize: ``squash``, ``letterbox`` or ``crop``.
        channels: 1 or 3.
        transform: ``module:function`` that replaces decoding, resizing and
            normalisation.
    """

    bit_depth: int | None = None
    dicom: str = "auto"
    resize: str = "squash"
    channels: int = 3
    transform: str | None = None

    def __post_init__(self) -> None:
        if self.bit_depth is not None and not (
            isinstance(self.bit_depth, int)
            and not isinstance(self.bit_depth, bool)
            and 1 <= self.bit_depth <= 16
        ):
            raise ConfigError(f"preprocess.bit_depth must be an integer from 1 to 16, got {self.bit_depth!r}")
        if self.dicom not in DICOM_POLICIES:
            raise ConfigError(
                f"preprocess.dicom must be one of {', '.join(DICOM_POLICIES)}, got {self.dicom!r}"
            )
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(
                f"preprocess.resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}"
            )
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ConfigError(f"preprocess.channels must be 1 or 3, got {self.channels!r}")
        if self.transform is not None and (
            not isinstance(self.transform, str) or self.transform.count(":") != 1 or self.transform[0] == ":"
        ):
            raise ConfigError(f"preprocess.transform must be 'module:function', got {self.transform!r}")

    def as_dict(self) -> dict[str, Any]:
        """All fields (``None`` included), for baselines and reports."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: object, source: str) -> Preprocess:
        """Validates a stored preprocessing table (checkpoint metadata, baseline)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: preprocess must be a table, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown preprocess key(s) {', '.join(map(str, unknown))}")
        try:
            return cls(**raw)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


DEFAULT = Preprocess()


def _png_significant_bits(path: Path) -> int | None:
    """The largest value of a PNG's ``sBIT`` chunk, if it has one before its image data."""
    try:
        with path.open("rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            for _ in range(64):  # sBIT must come before IDAT; headers are few
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    data = fh.read(min(length, 4))
                    return max(data) if data else None
                if kind in (b"IDAT", b"IEND") or length > 1 << 20:
                    return None
                fh.seek(length + 4, 1)
    except OSError:
        return None
    return None


#: bit counts already warned about in this process (one line per count, not one per image)
_WARNED_LOW_BITS: set[int] = set()


def _warn_low_bits(top: int, path: Path) -> None:
    """A 16-bit image without ``sBIT`` whose values all fit in 8 to 15 bits is most likely
    a detector's 10-, 12- or 14-bit values stored as they came: read as 16-bit it is
    near-black. It is read so (the stated rule), with one warning per bit count."""
    bits = top.bit_length()
    if not 8 <= bits < 16 or bits in _WARNED_LOW_BITS:
        return
    _WARNED_LOW_BITS.add(bits)
    from drift_gate._io import warn

    warn(
        f"{path}: a 16-bit image with no sBIT chunk whose values fit in {bits} bits "
        f"(max {top}) is read as 16-bit (value / 65535, near-black); if it holds {bits}-bit "
        f"detector values, set preprocess.bit_depth = {bits} (further such images: no warning)"
    )


def _scale_16bit(arr: NDArray[np.int64], path: Path, bit_depth: int | None) -> NDArray[np.float64]:
    """A 16-bit image's values in ``[0, 1]`` (see the module docstring)."""
    top = int(arr.max()) if arr.size else 0
    if bit_depth is not None:
        if top > 2**bit_depth - 1:
            raise DataError(
                f"{path}: values up to {top} do not fit bit_depth = {bit_depth} "
                f"(max {2**bit_depth - 1}); set preprocess.bit_depth to the bits the image really has"
            )
        return arr / float(2**bit_depth - 1)
    sbit = _png_significant_bits(path)
    if sbit is None or not 1 <= sbit < 16:
        _warn_low_bits(top, path)
        return arr / 65535.0
    shift = 16 - sbit
    original = arr >> shift
    zero_filled = np.array_equal(arr, original << shift)
    replicated = sbit >= shift and np.array_equal(arr, (original << shift) | (original >> (sbit - shift)))
    if zero_filled or replicated:
        return original / float(2**sbit - 1)
    if top <= 2**sbit - 1:  # stored unscaled, as many exports do
        return arr / float(2**sbit - 1)
    raise DataError(
        f"{path}: sBIT says {sbit} significant bits, but the values (up to {top}) are neither "
        f"scaled to 16 bits nor below {2**sbit}; set preprocess.bit_depth"
    )


def _read_raster(path: Path, bit_depth: int | None) -> NDArray[np.float64]:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path, formats=_PIL_FORMATS)
        with im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise DataError(
                    f"{path}: the header declares {w}x{h} pixels, more than the limit of {MAX_PIXELS:,}"
                )
            im.load()
            mode = im.mode
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                raise DataError(
                    f"{path}: image has an alpha channel (mode {mode}); save it as grayscale or RGB"
                )
            if mode in ("I;16", "I;16B", "I;16L"):
                return _scale_16bit(np.asarray(im, dtype=np.int64), path, bit_depth)
            if mode == "I":
                arr = np.asarray(im, dtype=np.float64)
                return arr / max(float(arr.max()), 1.0)
            if mode not in ("L", "RGB", "P", "1"):
                raise DataError(f"{path}: unsupported image mode {mode}")
            return np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: image too large to decode safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{path}: not a readable PNG, JPEG, TIFF or DICOM image ({exc.__class__.__name__}: {exc})"
        ) from exc


def _dicom_float(ds: Any, name: str, default: float, path: Path) -> float:
    value = ds.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}: DICOM {name} {value!r} is not a single number") from None
    if not np.isfinite(number):
        raise DataError(f"{path}: DICOM {name} is not finite")
    return number


def _read_dicom(path: Path, policy: str) -> NDArray[np.float64]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_voi_lut  # type: ignore[attr-defined]

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data")
    try:
        arr = ds.pixel_array.astype(np.float64)
    except Exception as exc:  # pydicom raises many types for bad pixel data
        raise DataError(f"{path}: cannot decode DICOM pixel data ({exc})") from exc
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a single-frame grayscale DICOM, got shape {arr.shape}")
    slope = _dicom_float(ds, "RescaleSlope", 1.0, path)
    intercept = _dicom_float(ds, "RescaleIntercept", 0.0, path)
    arr = arr * slope + intercept
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if policy == "voi" and not has_voi:
        raise DataError(f"{path}: preprocess.dicom = 'voi' but the file has no window or VOI LUT")
    if has_voi and policy != "minmax":
        try:
            out = apply_voi_lut(arr, ds)
            # The VOI output range: where the lowest and highest possible inputs land.
            ends = apply_voi_lut(np.array([[-1e12, 1e12]]), ds).ravel()
        except Exception as exc:  # pydicom raises many types for malformed VOI attributes
            raise DataError(f"{path}: cannot apply the DICOM window / VOI LUT ({exc})") from exc
        lo, hi = float(ends.min()), float(ends.max())
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise DataError(f"{path}: the DICOM window / VOI LUT has an empty output range")
        arr = np.clip((np.asarray(out, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    else:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = 1.0 - arr
    return arr


def decode_image(path: Path, preprocess: Preprocess = DEFAULT) -> NDArray[np.float64]:
    """Decodes a radiograph to a 2-D float array in ``[0, 1]`` at its own size.

    Raises:
        DataError: unreadable, truncated, oversized or unsupported files.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            is_dicom = path.suffix.lower() in (".dcm", ".dicom") or (
                fh.seek(128) == 128 and fh.read(4) == b"DICM"
            )
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from exc
    arr = _read_dicom(path, preprocess.dicom) if is_dicom else _read_raster(path, preprocess.bit_depth)
    if arr.size == 0:
        raise DataError(f"{path}: empty image")
    return arr


def resize(image: torch.Tensor, size: int, policy: str = "squash") -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C, size, size)`` by ``policy`` (see the module docstring)."""
    h, w = image.shape[-2:]
    if policy == "crop" and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[..., top : top + side, left : left + side]
        h = w = side
    if policy == "letterbox" and h != w:
        scale = size / max(h, w)
        inner = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = torch.nn.functional.interpolate(
            image, size=inner, mode="bilinear", align_corners=False, antialias=True
        )
        out = image.new_zeros((*image.shape[:-2], size, size))
        top, left = (size - inner[0]) // 2, (size - inner[1]) // 2
        out[..., top : top + inner[0], left : left + inner[1]] = scaled
        return out
    if (h, w) == (size, size):
        return image
    return torch.nn.functional.interpolate(
        image, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


def read_image(path: Path, size: int, preprocess: Preprocess = DEFAULT) -> torch.Tensor:
    """Reads a radiograph as a ``(1, size, size)`` float tensor in ``[0, 1]``.

    Raises:
        DataError: unreadable, truncated or unsupported files.
    """
    arr = decode_image(path, preprocess)
    t = torch.from_numpy(arr.astype(np.float32))[None, None]
    return resize(t, size, preprocess.resize)[0].clamp_(0, 1)


def load_transform(spec: str) -> Callable[[Path], Any]:
    """Imports ``module:function`` (the user's own preprocessing).

    Raises:
        ConfigError: the module cannot be imported or has no such callable.
    """
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything on import
        raise ConfigError(
            f"preprocess.transform {spec!r}: cannot import {module_name!r} "
            f"({exc.__class__.__name__}: {exc}); "
            "it must be importable where drift-gate runs (installed or on PYTHONPATH)"
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"preprocess.transform {spec!r}: {module_name} has no callable {attr!r}")
    return fn  # type: ignore[no-any-return]


def apply_transform(fn: Callable[[Path], Any], path: Path, channels: int, size: int) -> torch.Tensor:
    """Calls the user's transform and checks what it returns."""
    try:
        out = fn(path)
    except DataError:
        raise
    except Exception as exc:  # the user's code may raise anything
        raise DataError(f"{path}: the preprocess transform failed ({exc.__class__.__name__}: {exc})") from exc
    t = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out).float()
    if tuple(t.shape) != (channels, size, size):
        raise DataError(
            f"{path}: the preprocess transform returned shape {tuple(t.shape)}, "
            f"expected ({channels}, {size}, {size})"
        )
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{path}: the preprocess transform returned NaN or Inf")
    return t
