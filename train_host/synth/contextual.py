"""Contextual anomalies: material from elsewhere on the station's parts, pasted where it does not belong.

``contextual`` is CutPaste-style: an irregular patch from another image of the station
(a donor), rotated and re-toned, lands at a different place. ``cutpaste`` is plain
Cut&Paste: a rectangle from a donor pasted as it is at a different position.
"""

from __future__ import annotations

import cv2
import numpy as np

from .compose import paste, visible
from .noise import blob_mask, rect_mask


def contextual(image: np.ndarray, rng: np.random.Generator, donors: list[np.ndarray] | None = None,
               max_area: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    c, h, w = image.shape

    def draw():
        donor = _donor(image, donors, rng).astype(np.float64)
        region = blob_mask((h, w), rng, max_area=max_area)
        ys, xs = np.nonzero(region)
        # Take the donor's content from a different place, turned by a random angle.
        shift = (rng.uniform(-0.5, 0.5) * w, rng.uniform(-0.5, 0.5) * h)
        centre = (float(xs.mean()), float(ys.mean()))
        matrix = cv2.getRotationMatrix2D(centre, float(rng.uniform(-90, 90)), float(rng.uniform(0.8, 1.25)))
        matrix[:, 2] += shift
        moved = cv2.warpAffine(np.ascontiguousarray(donor.transpose(1, 2, 0)), matrix, (w, h),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).reshape(h, w, c)
        moved = moved.transpose(2, 0, 1) * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)  # re-tone (CutPaste jitter)
        return paste(image, moved, region)

    return visible(draw, image)


def cutpaste(image: np.ndarray, rng: np.random.Generator, donors: list[np.ndarray] | None = None,
             min_side: float = 0.08, max_side: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    _, h, w = image.shape

    def draw():
        donor = _donor(image, donors, rng)
        region = rect_mask((h, w), rng, min_side, max_side)
        ys, xs = np.nonzero(region)
        rh, rw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        sy, sx = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
        edited = image.copy()
        edited[:, ys.min():ys.min() + rh, xs.min():xs.min() + rw] = donor[:, sy:sy + rh, sx:sx + rw]
        return paste(image, edited, region)

    return visible(draw, image)


def _donor(image: np.ndarray, donors: list[np.ndarray] | None, rng: np.random.Generator) -> np.ndarray:
    """Another image of the station (the image itself when there is none) in the same geometry."""
    if not donors:
        return image
    donor = donors[int(rng.integers(len(donors)))]
    if donor.shape != image.shape or donor.dtype != np.uint8:
        raise ValueError(f"donor images must be uint8 {image.shape} like the image, got {donor.dtype} {donor.shape}")
    return donor
