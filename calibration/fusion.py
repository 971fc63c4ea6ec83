"""Several detectors at one station: put each score on a common scale, then fuse.

Raw scores of different models (a Mahalanobis distance, a reconstruction error, ...)
are not comparable. Each model's score is mapped relative to its own good distribution:
``(score - median) / (q99 - median)``, so on every model a typical good part scores 0
and the good 99th percentile scores 1. The fused score is the max (a part is NG when any
model objects) or the mean (models vote) of the normalised scores; its threshold is then
calibrated like a single model's.

The normalisation is fitted on the same good images as the fused threshold, which makes
the fused threshold's bound a little optimistic; with a few hundred good images the
median and q99 are stable enough that this is small next to the bound's width.
"""

from __future__ import annotations

import numpy as np

from edge_infer.errors import LinesideError

FUSIONS = ("max", "mean")


def fit_normaliser(good_scores, upper_q: float = 0.99) -> dict:
    """The affine map that sends a model's good median to 0 and its good q99 to 1."""
    x = np.asarray(good_scores, dtype=np.float64)
    center = float(np.median(x))
    scale = float(np.quantile(x, upper_q)) - center
    if scale <= 0:  # a model that gives (nearly) every good part the same score
        scale = float(np.std(x)) or 1.0
    return {"method": "good-median-q99", "center": center, "scale": scale, "upper_quantile": upper_q}


def normalise(scores, normaliser: dict) -> np.ndarray:
    return (np.asarray(scores, dtype=np.float64) - normaliser["center"]) / normaliser["scale"]


def fuse(per_model: list, normalisers: list[dict], how: str = "max") -> np.ndarray:
    """Fused score per image from each model's raw scores (one array per model, same images)."""
    if how not in FUSIONS:
        raise LinesideError(f"unknown fusion {how!r}: use one of {', '.join(FUSIONS)}")
    if len(per_model) != len(normalisers) or not per_model:
        raise LinesideError("fusion needs one normaliser per model and at least one model")
    sizes = {np.size(s) for s in per_model}
    if len(sizes) != 1:
        raise LinesideError(f"the models scored different numbers of images ({sorted(sizes)}): an image failed "
                            "on one model; check the images with `lineside score` on each bundle")
    stacked = np.stack([normalise(s, n) for s, n in zip(per_model, normalisers)])
    return stacked.max(axis=0) if how == "max" else stacked.mean(axis=0)
