"""Confetti noise: small blobs of random colour scattered over an image (FCDD, used by ADTR).

Liznerski et al. (FCDD, ICLR 2021) introduced it as a cheap stand-in for real defects, and
ADTR trains its anomaly-available loss on it: a handful of local, sharply bounded
patches whose colour has nothing to do with the part. Here each blob is an axis-aligned
rectangle or ellipse with a random size and one random colour, pasted onto the image
(optionally half-transparent). The mask is exactly the set of pixels that changed.
"""

from __future__ import annotations

import cv2
import numpy as np


def confetti(image: np.ndarray, rng: np.random.Generator, blobs: tuple[int, int] = (1, 8),
             size: tuple[float, float] = (0.02, 0.08), opacity: tuple[float, float] = (0.6, 1.0),
             ellipse_share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``blobs`` (inclusive range) blobs; each side is a share ``size`` of the shorter image side.

    image: uint8 C×H×W. Returns (uint8 C×H×W, bool H×W). At least one pixel always changes.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"confetti takes a uint8 C×H×W image, got {image.dtype} with shape {image.shape}")
    channels, h, w = image.shape
    side = min(h, w)
    out = image.astype(np.float32)
    for _ in range(int(rng.integers(blobs[0], blobs[1] + 1))):
        bh, bw = (max(1, round(side * rng.uniform(*size))) for _ in range(2))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        shape = np.ones((bh, bw), np.uint8)
        if rng.random() < ellipse_share and min(bh, bw) >= 3:
            shape = np.zeros((bh, bw), np.uint8)
            cv2.ellipse(shape, (bw // 2, bh // 2), (max(1, bw // 2), max(1, bh // 2)), 0, 0, 360, 1, -1)
        colour = rng.integers(0, 256, channels).astype(np.float32)[:, None, None]
        a = float(rng.uniform(*opacity)) * shape.astype(np.float32)
        patch = out[:, y:y + bh, x:x + bw]
        out[:, y:y + bh, x:x + bw] = (1 - a) * patch + a * colour
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    mask = (result != image).any(axis=0)
    if not mask.any():  # every blob happened to match the image: force one visible pixel
        yx = (int(rng.integers(h)), int(rng.integers(w)))
        result[:, yx[0], yx[1]] = 255 - image[:, yx[0], yx[1]]
        mask[yx] = True
    return result, mask
