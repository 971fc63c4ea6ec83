"""Noise fields the synthesisers share: fractal Perlin noise and blob masks cut from it."""

from __future__ import annotations

import numpy as np


def perlin(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise over ``cells`` lattice cells, roughly in [-1, 1]."""
    h, w = shape
    ch, cw = cells
    angles = rng.uniform(0, 2 * np.pi, (ch + 1, cw + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys, xs = np.linspace(0, ch, h, endpoint=False), np.linspace(0, cw, w, endpoint=False)
    y, x = np.meshgrid(ys, xs, indexing="ij")
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return np.sqrt(2) * (top * (1 - uy) + bottom * uy)


def fractal_perlin(shape: tuple[int, int], rng: np.random.Generator, octaves: int = 3,
                   base_cells: int | None = None) -> np.ndarray:
    """Sum of Perlin octaves (each twice as fine, half as strong), scaled to [-1, 1]."""
    base = base_cells or int(rng.integers(2, 6))
    total = np.zeros(shape)
    for octave in range(octaves):
        cells = base * 2**octave
        total += perlin(shape, (min(cells, shape[0] // 2), min(cells, shape[1] // 2)), rng) / 2**octave
    return total / (np.abs(total).max() or 1.0)


def blob_mask(shape: tuple[int, int], rng: np.random.Generator, min_area: float = 0.005,
              max_area: float = 0.15) -> np.ndarray:
    """A connected-looking Perlin blob inside a random window, covering min_area..max_area of the image."""
    h, w = shape
    for _ in range(20):
        wh = int(rng.uniform(0.15, 0.5) * h)
        ww = int(rng.uniform(0.15, 0.5) * w)
        top, left = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
        noise = fractal_perlin((wh, ww), rng, octaves=2)
        # Fade toward the window's border so the blob never ends in a straight cut.
        yy, xx = np.meshgrid(np.linspace(-1, 1, wh), np.linspace(-1, 1, ww), indexing="ij")
        noise = noise - 0.8 * np.maximum(np.abs(yy), np.abs(xx)) ** 2
        mask = np.zeros(shape, bool)
        mask[top:top + wh, left:left + ww] = noise > rng.uniform(0.0, 0.3)
        if min_area <= mask.mean() <= max_area:
            return mask
    return rect_mask(shape, rng, 0.1, 0.3)


def rect_mask(shape: tuple[int, int], rng: np.random.Generator, min_side: float, max_side: float) -> np.ndarray:
    h, w = shape
    rh = max(2, int(rng.uniform(min_side, max_side) * h))
    rw = max(2, int(rng.uniform(min_side, max_side) * w))
    top, left = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
    mask = np.zeros(shape, bool)
    mask[top:top + rh, left:left + rw] = True
    return mask
