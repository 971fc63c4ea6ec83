"""A small generated MVTec AD-layout category: textured good parts, defects with masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def texture(rng, size=72) -> np.ndarray:
    base = cv2.GaussianBlur(rng.normal(128, 40, (size, size)).astype(np.float32), (0, 0), 2)
    return np.clip(base, 0, 255).astype(np.uint8)


def make_mvtec(root: Path, n_train=16, n_good=6, n_defect=6, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / f"train/good/{i:03d}.png"), texture(rng))
    for i in range(n_good):
        cv2.imwrite(str(root / f"test/good/{i:03d}.png"), texture(rng))
    for i in range(n_defect):
        image, mask = texture(rng), np.zeros((72, 72), np.uint8)
        x, y = rng.integers(8, 44, 2)
        cv2.rectangle(image, (int(x), int(y)), (int(x) + 18, int(y) + 6), 255, -1)
        cv2.rectangle(mask, (int(x), int(y)), (int(x) + 18, int(y) + 6), 255, -1)
        cv2.imwrite(str(root / f"test/scratch/{i:03d}.png"), image)
        cv2.imwrite(str(root / f"ground_truth/scratch/{i:03d}_mask.png"), mask)
    return root
