"""DRAEM's training anomalies: a thresholded Perlin mask filled with a procedural texture.

Zavrtanik et al. (DRAEM, ICCV 2021): Perlin noise at a random lattice scale, thresholded
into a mask of irregular blobs; inside it the image becomes (1-β)·texture + β·image with
β uniform in [0, 0.8], so the texture always shows. Here the threshold is the noise's own
quantile for an area drawn uniformly from ``area``, so the mask covers that share of the
image whatever the lattice scale (DRAEM's fixed 0.5 threshold gives anything from a speck
to half the image).
"""

from __future__ import annotations

import numpy as np

from .noise import perlin
from .textures import procedural_texture

AREA = (0.005, 0.2)  # share of the image a mask covers
BETA = (0.0, 0.8)  # share of the original image kept inside the mask (DRAEM's)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, area: tuple[float, float] = AREA) -> np.ndarray:
    """Bool H×W: the top ``a`` share of a Perlin field, a drawn uniformly from ``area``."""
    h, w = shape
    cells = tuple(int(min(2 ** rng.integers(0, 6), max(1, s // 2))) for s in (h, w))
    noise = perlin(shape, cells, rng) + 1e-9 * rng.standard_normal(shape)  # break ties: exact quantiles
    share = rng.uniform(*area)
    return noise > np.quantile(noise, 1 - share)


def perlin_anomaly(image: np.ndarray, rng: np.random.Generator, area: tuple[float, float] = AREA,
                   beta: tuple[float, float] = BETA) -> tuple[np.ndarray, np.ndarray]:
    """(float C×H×W anomalous image in 0..255, bool H×W mask) from a uint8 C×H×W image."""
    mask = perlin_mask(image.shape[1:], rng, area)
    texture = procedural_texture(image, rng)
    b = rng.uniform(*beta)
    inside = (1 - b) * texture + b * image
    return np.where(mask[None], inside, image.astype(np.float64)), mask
