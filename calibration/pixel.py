"""The pixel threshold and minimum defect area, from the good images' anomaly maps.

The pixel threshold is the ``1 - pixel_rate`` quantile of good pixels (pooled from a
bounded random sample per image, so memory stays flat). The minimum area is one more
than the ``area_quantile`` quantile of the largest blob each good image shows above that
threshold, so noise on good parts rarely becomes a region. ``edge_infer.decide`` outlines
regions only on NG images, so both only shape the regions reported, never the verdict.
"""

from __future__ import annotations

import numpy as np

from edge_infer.errors import LinesideError
from edge_infer.imaging import connected_components


def pixel_threshold(good_maps, pixel_rate: float = 1e-3, area_quantile: float = 0.99,
                    image_threshold: float | None = None, sample_per_image: int = 4096, seed: int = 0) -> dict:
    """{'pixel', 'min_area', 'details'} for a list of good anomaly maps (h×w or 1×h×w)."""
    maps = [np.asarray(m, dtype=np.float32).reshape(np.shape(m)[-2:]) for m in good_maps]
    if not maps:
        raise LinesideError("no good anomaly maps to set the pixel threshold from: give good images")
    if not 0.0 < pixel_rate < 1.0:
        raise LinesideError(f"pixel rate {pixel_rate} must lie between 0 and 1 (e.g. 0.001)")
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([sample_pixels(m, sample_per_image, rng) for m in maps])
    pixel = float(np.quantile(pooled, 1.0 - pixel_rate))
    note = ""
    if image_threshold is not None and pixel > image_threshold:
        # an NG image's map may peak just above the image threshold: a higher pixel level would show no region
        note = f"clamped from {pixel:.6g} to the image threshold so every NG image can show its region"
        pixel = float(image_threshold)
    blobs = np.array([largest_blob(m, pixel) for m in maps])
    min_area = int(np.quantile(blobs, area_quantile)) + 1
    return {"pixel": pixel, "min_area": min_area,
            "details": {"pixel_rate": pixel_rate, "area_quantile": area_quantile, "maps": len(maps),
                        "pixels_sampled": int(pooled.size), "map_shape": list(maps[0].shape),
                        "good_blob_area_p50_p99_max": [float(np.quantile(blobs, 0.5)),
                                                       float(np.quantile(blobs, 0.99)), int(blobs.max())],
                        "note": note}}


def sample_pixels(amap: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    flat = amap.ravel()
    return flat if flat.size <= size else rng.choice(flat, size=size, replace=False)


def largest_blob(amap: np.ndarray, level: float) -> int:
    """Area in pixels of the largest 8-connected region of the map above ``level`` (0 if none)."""
    mask = (amap > level).astype(np.uint8)
    _, stats = connected_components(mask)
    return int(stats[1:, 4].max()) if len(stats) > 1 else 0  # column 4: the area
