"""Texture anomalies: Perlin-noise or grain textures blended into a Perlin-shaped blob (DRAEM style)."""

from __future__ import annotations

import numpy as np

from .compose import is_gray, paste, tones, visible
from .noise import blob_mask, fractal_perlin


def texture(image: np.ndarray, rng: np.random.Generator, blend: tuple[float, float] = (0.3, 0.9),
            max_area: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """A foreign texture blended into the surface: out = (1-β)·image + β·texture inside a blob."""
    c, h, w = image.shape

    def draw():
        region = blob_mask((h, w), rng, max_area=max_area)
        if rng.random() < 0.5:  # smooth stains: Perlin noise around a random tone per channel
            field = fractal_perlin((h, w), rng, octaves=int(rng.integers(2, 5)))
            tone = tones(image, rng.uniform(0, 255, (c, 1, 1)))
            tex = tone + rng.uniform(40, 120) * field[None]
        else:  # grain: per-pixel noise of a random strength around the local image
            grain = rng.normal(0, rng.uniform(20, 60), (1 if is_gray(image) else c, h, w))
            tex = image.astype(np.float64) + grain
        beta = rng.uniform(*blend)
        return paste(image, (1 - beta) * image + beta * tex, region)

    return visible(draw, image)
