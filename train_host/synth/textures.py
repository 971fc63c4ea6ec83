"""Procedural textures for DRAEM-style anomalies, made on the spot: no texture dataset needed.

DRAEM fills its Perlin masks with images from the DTD texture set; a factory cannot download
it, so (as anomalib does offline) the fill is generated: fractal Perlin noise, stripes, a
checkerboard, or the image's own patches shuffled, each put through a colour jitter. A gray
station only gets gray textures (``compose.tones``).
"""

from __future__ import annotations

import numpy as np

from .compose import is_gray, tones
from .noise import fractal_perlin

KINDS = ("perlin", "stripes", "checker", "shuffled")


def procedural_texture(image: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A float C×H×W texture in 0..255 the size of ``image`` (uint8 C×H×W), of ``kind`` or a random one."""
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"unknown texture kind {kind!r}: choose from {', '.join(KINDS)}")
    c, h, w = image.shape
    if kind == "shuffled":
        field = shuffled_patches(image, rng)
    else:
        pattern = {"perlin": perlin_field, "stripes": stripes, "checker": checker}[kind]((h, w), rng)
        field = np.repeat(pattern[None] * 255.0, c, axis=0)
    return jitter(field, image, rng)


def perlin_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Fractal Perlin noise in 0..1 (stains, mottling)."""
    return 0.5 + 0.5 * fractal_perlin(shape, rng, octaves=int(rng.integers(1, 5)), base_cells=int(rng.integers(2, 9)))


def stripes(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Parallel bands in 0..1 at a random angle and period, soft or hard-edged."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(3, max(4.0, min(shape) / 4))
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    return (wave > 0.5).astype(np.float64) if rng.random() < 0.5 else wave


def checker(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A checkerboard in {0, 1} with random cell size and rotation."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    angle, cell = rng.uniform(0, np.pi / 2), rng.uniform(2, max(3.0, min(shape) / 6))
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float64)


def shuffled_patches(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image cut into a grid of patches and put back in random order: the station's own material, out of place."""
    c, h, w = image.shape
    grid = int(rng.integers(2, 9))
    ph, pw = max(1, h // grid), max(1, w // grid)
    gh, gw = h // ph, w // pw
    core = image[:, :gh * ph, :gw * pw].reshape(c, gh, ph, gw, pw).transpose(1, 3, 0, 2, 4).reshape(gh * gw, c, ph, pw)
    core = core[rng.permutation(len(core))].reshape(gh, gw, c, ph, pw).transpose(2, 0, 3, 1, 4).reshape(c, gh * ph, gw * pw)
    out = image.astype(np.float64).copy()
    out[:, :gh * ph, :gw * pw] = core
    return out


def jitter(field: np.ndarray, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter: per-channel gain and offset (one for every channel on a gray image), sometimes inverted."""
    c = field.shape[0]
    gain = tones(image, rng.uniform(0.4, 1.6, (c, 1, 1)))
    offset = tones(image, rng.uniform(-80, 80, (c, 1, 1)))
    out = field * gain + offset
    if rng.random() < 0.25:
        out = 255.0 - out
    if is_gray(image) and c > 1:
        out = np.repeat(out[:1], c, axis=0)
    return np.clip(out, 0, 255)
