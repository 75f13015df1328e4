"""Deterministic five-class chest-X-ray phantoms with ground-truth finding masks.

Each image is drawn in *patient coordinates* ``(u, v)``: ``u`` runs from the
patient's right (image left, ``u < 0``) to the patient's left, ``v`` from the
apices (``v < 0``) to the abdomen; both are roughly in ``[-0.5, 0.5]``. Per
patient the thorax is scaled, shifted and slightly rotated, the exposure and
noise vary, and the findings of the class are drawn where a radiologist would
expect them:

==========================  ==================================================
class                       finding
==========================  ==================================================
``normal``                  none (empty mask)
``bacterial_pneumonia``     dense lobar consolidation in one lower zone
``viral_pneumonia``         bilateral perihilar / lower interstitial reticulation
``covid19``                 bilateral peripheral lower-zone ground-glass opacity
``tuberculosis``            upper-zone nodules, often with a cavity
==========================  ==================================================

Every disease image's mask is the support of its findings inside the lungs.

**Planted shortcut** (``shortcut`` set, the gate's positive control): every image
carries a radiopaque lead strip along its top edge, above the lungs, as a
shield or a burned-in annotation band would be. With probability ``shortcut`` its
height is the class's (:data:`STRIP_HEIGHTS`: 2 % of the side for normal up to
10 % for tuberculosis), otherwise drawn uniformly, so the strip predicts the class
with the chosen correlation (``0``: present but uninformative) while carrying no
pathology. With ``occult`` a share of the disease images shows no finding at all,
so only the strip explains their labels, which is how a shortcut wins in
practice. The image underneath and the split are the same as without the strip.
``cue = "marker"`` plants a burned-in label box in the bottom-right corner instead,
whose fill grey level codes the class (:mod:`drift_gate.data.shortcut`).
(Small class-coded devices were tried first: the demo's synthetically pretrained
bodies could not learn them within a fine-tune, while the strip is learnt.)
Images are independent draws from ``numpy.random.default_rng([seed, index])``,
so any subset regenerates bit for bit. The class is not readable from a single
pixel or the global intensity: exposure and severity vary per patient, and the
classes differ by texture *and* position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from drift_gate.data.classes import CLASSES
from drift_gate.data.shortcut import STRIP_HEIGHTS, add_cue, cue_level

__all__ = [
    "CLASSES",
    "SOURCE_LABELS",
    "SPLIT_SHARES",
    "STRIP_HEIGHTS",
    "Array",
    "Phantom",
    "render_phantom",
    "render_source_sample",
]


#: Labels of the synthetic *source* task used for offline pretraining: which
#: finding textures are present, and where (multi-label).
SOURCE_LABELS: tuple[str, ...] = (
    "consolidation",
    "ground_glass",
    "reticular",
    "nodules",
    "upper_zone",
    "lower_zone",
    "right_lung",
    "left_lung",
)

SPLIT_SHARES = (("train", 0.6), ("val", 0.2), ("test", 0.2))

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Phantom:
    """One rendered radiograph.

    Attributes:
        image: uint8 ``(H, W)`` grayscale radiograph.
        mask: bool ``(H, W)`` ground truth of the findings (inside the lungs).
        lungs: bool ``(H, W)`` lung fields, for tests and reference-based checks.
    """

    image: NDArray[np.uint8]
    mask: NDArray[np.bool_]
    lungs: NDArray[np.bool_]


@dataclass(frozen=True)
class _Anatomy:
    u: Array
    v: Array
    lungs: NDArray[np.bool_]


def _soft(d: Array, width: float) -> Array:
    """Soft step that is 1 inside (``d < 0``) and 0 outside, over ``width``."""
    return 1.0 / (1.0 + np.exp(np.clip(d / max(width, 1e-6), -50, 50)))


def _ellipse(u: Array, v: Array, cu: float, cv: float, au: float, av: float) -> Array:
    """Signed, roughly normalised distance to an ellipse boundary (<0 inside)."""
    return np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2) - 1.0


def _anatomy(rng: np.random.Generator, size: int) -> tuple[_Anatomy, Array]:
    """Draws a patient's thorax and returns it with the base (finding-free) image."""
    scale = rng.uniform(0.88, 1.04)
    cu, cv = rng.normal(0, 0.02), rng.normal(0.01, 0.02)
    angle = np.deg2rad(rng.normal(0, 2.5))
    grid = (np.arange(size) + 0.5) / size - 0.5
    y, x = np.meshgrid(grid, grid, indexing="ij")
    x, y = x - cu, y - cv
    u = (np.cos(angle) * x + np.sin(angle) * y) / scale
    v = (-np.sin(angle) * x + np.cos(angle) * y) / scale

    body_d = np.sqrt((u / rng.uniform(0.42, 0.47)) ** 4 + ((v - 0.03) / 0.56) ** 4) ** 0.25 - 1
    body = _soft(body_d, 0.01)

    # Lungs: tall ellipses cut by the diaphragm domes; the left one is smaller
    # because the heart takes its place.
    dome_r = rng.uniform(0.17, 0.22)
    dome_l = dome_r + rng.uniform(0.0, 0.04)
    lung_r = (_ellipse(u, v, -0.19, -0.04, rng.uniform(0.12, 0.14), 0.31) < 0) & (
        v < dome_r - 0.9 * (u + 0.19) ** 2
    )
    lung_l = (_ellipse(u, v, 0.19, -0.04, rng.uniform(0.11, 0.13), 0.30) < 0) & (
        v < dome_l - 0.9 * (u - 0.19) ** 2
    )
    lungs = lung_r | lung_l
    lung_soft = ndimage.gaussian_filter(lungs.astype(np.float64), 1.2)

    img = 0.10 + 0.42 * body
    img -= 0.30 * lung_soft
    # Vascular markings: faint branching texture radiating from the hila.
    hilum = np.exp(-(((np.abs(u) - 0.10) / 0.10) ** 2 + ((v + 0.02) / 0.14) ** 2))
    vessels = np.abs(ndimage.gaussian_filter(rng.normal(size=u.shape), 2.5 * size / 256))
    img += lung_soft * hilum * 0.6 * vessels / (vessels.std() + 1e-9) * 0.03
    # Ribs: posterior arcs descending laterally, nine per side.
    ribs = np.zeros_like(u)
    for side in (-1.0, 1.0):
        for k in range(9):
            v0 = -0.36 + k * 0.065 + rng.normal(0, 0.004)
            curve = v0 + 0.55 * (np.abs(u) - 0.04) ** 2 + 0.08 * (np.abs(u) - 0.04)
            band = np.exp(-(((v - curve) / 0.012) ** 2)) * (side * u > 0.035)
            ribs += band * _soft(np.abs(u) - 0.42, 0.02)
    img += 0.07 * ribs * body
    # Clavicles.
    for side in (-1.0, 1.0):
        t = np.clip((side * u - 0.04) / 0.30, 0, 1)
        line = -0.37 - 0.05 * t + 0.04 * t**2
        img += 0.10 * np.exp(-(((v - line) / 0.014) ** 2)) * (side * u > 0.04) * (side * u < 0.36)
    # Spine, mediastinum and heart.
    img += 0.08 * _soft(np.abs(u) - 0.035, 0.006) * body
    img += 0.20 * _soft(np.abs(u - 0.01) - 0.055, 0.01) * _soft(-(v + 0.42), 0.02) * body
    heart = _soft(_ellipse(u, v, 0.05 + rng.normal(0, 0.01), 0.13, rng.uniform(0.14, 0.18), 0.12), 0.03)
    img += 0.26 * heart
    # Below the diaphragm: liver and stomach soft tissue.
    img += 0.18 * _soft(-(v - 0.24 + 0.8 * u**2), 0.015) * body
    anatomy = _Anatomy(u, v, lungs)
    return anatomy, img


def _blob(
    rng: np.random.Generator,
    a: _Anatomy,
    cu: float,
    cv: float,
    au: float,
    av: float,
    *,
    edge: float,
    lumpiness: float,
) -> Array:
    """A lumpy, soft-edged opacity with values in ``[0, 1]``."""
    size = a.u.shape[0]
    lumps = ndimage.gaussian_filter(rng.normal(size=a.u.shape), 6.0 * size / 256)
    lumps /= lumps.std() + 1e-9
    return _soft(_ellipse(a.u, a.v, cu, cv, au, av) + lumpiness * lumps * 0.15, edge)


def _consolidation(rng: np.random.Generator, a: _Anatomy, side: float, zone: str) -> Array:
    cv = rng.normal(0.09, 0.025) if zone == "lower" else rng.normal(-0.2, 0.03)
    blob = _blob(
        rng,
        a,
        side * rng.uniform(0.16, 0.22),
        cv,
        rng.uniform(0.07, 0.10),
        rng.uniform(0.06, 0.09),
        edge=0.015,
        lumpiness=1.0,
    )
    # Air bronchograms: thin lucent branches inside the dense opacity.
    size = a.u.shape[0]
    tubes = np.abs(ndimage.gaussian_filter(rng.normal(size=a.u.shape), 1.5 * size / 256))
    tubes = (tubes < np.quantile(tubes, 0.06)).astype(np.float64)
    out: Array = blob * (0.32 - 0.10 * tubes)
    return out


def _ground_glass(rng: np.random.Generator, a: _Anatomy, side: float, zone: str) -> Array:
    out = np.zeros_like(a.u)
    for _ in range(int(rng.integers(1, 3))):
        cv = rng.normal(0.07, 0.04) if zone == "lower" else rng.normal(-0.2, 0.04)
        out = np.maximum(
            out,
            _blob(
                rng,
                a,
                side * rng.uniform(0.24, 0.29),
                cv,
                rng.uniform(0.05, 0.07),
                rng.uniform(0.08, 0.12),
                edge=0.03,
                lumpiness=0.6,
            ),
        )
    return 0.14 * out


def _reticular(rng: np.random.Generator, a: _Anatomy, side: float, zone: str) -> Array:
    size = a.u.shape[0]
    noise = rng.normal(size=a.u.shape)
    band = ndimage.gaussian_filter(noise, 1.2 * size / 256) - ndimage.gaussian_filter(noise, 3.0 * size / 256)
    lines = _soft(np.abs(band) / (band.std() + 1e-9) - 0.35, 0.08)
    cv = 0.02 if zone == "lower" else -0.18
    region = np.exp(-(((a.u - side * 0.14) / 0.11) ** 2 + ((a.v - cv) / 0.16) ** 2))
    return 0.20 * lines * region


def _nodules(rng: np.random.Generator, a: _Anatomy, side: float, zone: str) -> Array:
    out = np.zeros_like(a.u)
    cv0 = -0.24 if zone == "upper" else 0.06
    for _ in range(int(rng.integers(3, 8))):
        cu = side * rng.uniform(0.13, 0.25)
        cv = cv0 + rng.uniform(-0.07, 0.07)
        r = rng.uniform(0.012, 0.024)
        out = np.maximum(out, 0.30 * _soft(_ellipse(a.u, a.v, cu, cv, r, r), 0.15))
    if rng.random() < 0.6:  # a cavity: thick bright wall, lucent centre
        cu, cv, r = side * rng.uniform(0.15, 0.22), cv0 + rng.uniform(-0.04, 0.04), rng.uniform(0.035, 0.05)
        d = _ellipse(a.u, a.v, cu, cv, r, r)
        out = np.maximum(out, 0.34 * _soft(np.abs(d + 0.25) - 0.22, 0.05))
        out -= 0.08 * _soft(d + 0.5, 0.1)
    return out


_TEXTURES = {
    "consolidation": _consolidation,
    "ground_glass": _ground_glass,
    "reticular": _reticular,
    "nodules": _nodules,
}

_CLASS_FINDINGS: dict[str, tuple[tuple[str, str, str], ...]] = {
    # (texture, sides, zone); sides: "one" picks a random lung, "both" uses both.
    "normal": (),
    "bacterial_pneumonia": (("consolidation", "one", "lower"),),
    "viral_pneumonia": (("reticular", "both", "lower"),),
    "covid19": (("ground_glass", "both", "lower"),),
    "tuberculosis": (("nodules", "one_or_both", "upper"),),
}


def _sides(rng: np.random.Generator, how: str) -> tuple[float, ...]:
    if how == "both" or (how == "one_or_both" and rng.random() < 0.3):
        return (-1.0, 1.0)
    return (float(rng.choice([-1.0, 1.0])),)


def _finish(rng: np.random.Generator, a: _Anatomy, base: Array, findings: Array) -> Phantom:
    """Adds findings inside the lungs, exposure, blur and noise; quantises."""
    lung_soft = ndimage.gaussian_filter(a.lungs.astype(np.float64), 1.0)
    img = base + findings * lung_soft
    size = img.shape[0]
    img = ndimage.gaussian_filter(img, rng.uniform(0.5, 1.0) * size / 256)
    gain, offset, gamma = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08), rng.uniform(0.8, 1.25)
    img = np.clip(img * gain + offset, 0, 1) ** gamma
    img += rng.normal(0, rng.uniform(0.01, 0.03), img.shape)
    image = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    # The mask is the support of the findings (smoothed, so that a reticular
    # pattern yields its region rather than its individual lines).
    support = ndimage.gaussian_filter(np.abs(findings), 2.0 * size / 256)
    mask = (support > 0.03) & a.lungs
    return Phantom(image=image, mask=mask, lungs=a.lungs)


def render_phantom(
    label: str,
    seed: int,
    index: int,
    size: int = 256,
    shortcut: float | None = None,
    occult: float = 0.0,
    cue: str = "strip",
) -> Phantom:
    """Renders one phantom of class ``label``.

    Args:
        label: one of :data:`CLASSES`.
        seed: dataset seed.
        index: sample index; ``(seed, index)`` fully determines the image.
        size: side length in pixels.
        shortcut: ``None`` for no planted cue, else the probability that the cue's
            form is its class's (see the module's docstring).
        occult: the probability that a disease image's findings are not (yet)
            visible: the image keeps its label, its mask is empty.
        cue: which cue is planted: ``strip`` or ``marker`` (:mod:`drift_gate.data.shortcut`).

    Raises:
        ValueError: for an unknown label or a probability outside ``[0, 1]``.
    """
    if label not in _CLASS_FINDINGS:
        raise ValueError(f"unknown phantom class {label!r}; known: {', '.join(CLASSES)}")
    for name, p in (("shortcut correlation", shortcut or 0.0), ("occult share", occult)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {p}")
    rng = np.random.default_rng([seed, index, CLASSES.index(label)])
    anatomy, base = _anatomy(rng, size)
    severity = rng.uniform(0.7, 1.2)
    if occult > 0 and np.random.default_rng([seed, index, 6_464]).random() < occult:
        severity = 0.0  # same draws, so the same patient, without visible findings
    findings = np.zeros_like(base)
    for texture, how, zone in _CLASS_FINDINGS[label]:
        for side in _sides(rng, how):
            findings += severity * _TEXTURES[texture](rng, anatomy, side, zone)
    ph = _finish(rng, anatomy, base, findings)
    if shortcut is not None:
        level = cue_level(cue, label, seed, index, shortcut)
        ph = Phantom(add_cue(cue, ph.image, ph.lungs, level), ph.mask, ph.lungs)
    return ph


def render_source_sample(
    seed: int, index: int, size: int = 256
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Renders one image of the synthetic *source* task used for pretraining.

    Findings of every texture appear independently, in random zones and lungs,
    unrelated to the five target classes; the multi-label target says which
    textures, zones and lungs are involved (see :data:`SOURCE_LABELS`).
    """
    rng = np.random.default_rng([seed, index, 9_999])
    anatomy, base = _anatomy(rng, size)
    target = np.zeros(len(SOURCE_LABELS), dtype=np.float32)
    findings = np.zeros_like(base)
    for t, (_name, draw) in enumerate(_TEXTURES.items()):
        if rng.random() < 0.35:
            zone = str(rng.choice(["upper", "lower"]))
            sides = _sides(rng, "one_or_both")
            for side in sides:
                findings += rng.uniform(0.7, 1.2) * draw(rng, anatomy, side, zone)
                target[6 if side < 0 else 7] = 1
            target[t] = 1
            target[4 if zone == "upper" else 5] = 1
    return _finish(rng, anatomy, base, findings).image, target
