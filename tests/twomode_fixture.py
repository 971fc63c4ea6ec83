"""A station with two kinds of normal (horizontal stripes, smooth blobs), or one: MVTec layout.

Its defects are a square of the other kind's texture pasted in: normal somewhere on this
station, so a single Gaussian per location, which must cover both kinds, hardly sees them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SIZE = 64


def stripes(rng) -> np.ndarray:
    y = np.arange(SIZE)[:, None]
    image = 128 + 60 * np.sin(2 * np.pi * y / rng.uniform(5, 7) + rng.uniform(0, 2 * np.pi))
    return np.clip(image + rng.normal(0, 8, (SIZE, SIZE)), 0, 255).astype(np.uint8)


def blobs(rng) -> np.ndarray:
    base = cv2.GaussianBlur(rng.normal(128, 60, (SIZE, SIZE)).astype(np.float32), (0, 0), 3)
    base = (base - base.mean()) / (base.std() + 1e-6) * 40 + 128
    return np.clip(base, 0, 255).astype(np.uint8)


def make_station(root: Path, modes=(stripes, blobs), n_train=160, n_good=16, n_defect=24, seed=0) -> Path:
    """Images of each mode in turn; a defect is a 20 px square of another mode (of the inverted image, for one)."""
    rng = np.random.default_rng(seed)
    for sub in ("train/good", "test/good", "test/swap", "ground_truth/swap"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / f"train/good/{i:03d}.png"), modes[i % len(modes)](rng))
    for i in range(n_good):
        cv2.imwrite(str(root / f"test/good/{i:03d}.png"), modes[i % len(modes)](rng))
    for i in range(n_defect):
        image = modes[i % len(modes)](rng)
        other = modes[(i + 1) % len(modes)](rng) if len(modes) > 1 else 255 - image
        mask = np.zeros((SIZE, SIZE), np.uint8)
        x, y = (int(v) for v in rng.integers(8, SIZE - 28, 2))
        image[y:y + 20, x:x + 20] = other[y:y + 20, x:x + 20]
        mask[y:y + 20, x:x + 20] = 255
        cv2.imwrite(str(root / f"test/swap/{i:03d}.png"), image)
        cv2.imwrite(str(root / f"ground_truth/swap/{i:03d}_mask.png"), mask)
    return root
