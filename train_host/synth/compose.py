"""How every synthesiser finishes: paste an edit inside a region, take the exact mask, retry if invisible."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MIN_SHARE = 0.002  # an anomaly must change at least this share of the pixels (else draw again)
TRIES = 20


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """H×W bool: pixels where any channel differs (the exact mask of a C×H×W edit)."""
    return (before != after).any(axis=0)


def paste(image: np.ndarray, edited: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``edited`` inside ``region`` (H×W bool), ``image`` elsewhere; the mask is what actually changed."""
    edited = np.clip(np.rint(edited), 0, 255).astype(np.uint8) if edited.dtype != np.uint8 else edited
    out = np.where(region[None], edited, image)
    return out, changed(image, out)


def tones(image: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-channel values, or the first one for every channel when the image is gray in RGB,
    so a gray station never gets coloured defects it could not have."""
    return np.full_like(values, values.flat[0]) if is_gray(image) else values


def is_gray(image: np.ndarray) -> bool:
    return image.shape[0] == 1 or bool((image[0] == image[1]).all() and (image[1] == image[2]).all())


def check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"synthesis takes uint8 C×H×W images (C = 1 or 3), got {image.dtype} {image.shape}")


def visible(draw: Callable[[], tuple[np.ndarray, np.ndarray]], image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Call ``draw`` until its edit changes enough pixels; an edit that stays invisible is an error."""
    check_image(image)
    need = MIN_SHARE * image.shape[1] * image.shape[2]
    for _ in range(TRIES):
        out, mask = draw()
        if mask.sum() >= need:
            return out, mask
    raise ValueError(f"no visible anomaly in {TRIES} draws on a {image.shape} image: is the image blank?")
