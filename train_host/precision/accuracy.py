"""Is a precision variant still the same detector? Measured, not assumed.

Every variant is scored with onnxruntime on the CPU on the run's evaluation split, next
to the FP32 graph (itself parity-checked against PyTorch): the largest relative error
of its outputs, the Spearman correlation of its image scores with FP32's (does it rank
the parts the same way?) and the change in image AUROC. A variant that loses more than
the tolerance in AUROC is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from edge_infer.backends.base import ModelOutputs, relative_error
from edge_infer.backends.ort import OrtBackend
from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec

from ..metrics import image_auroc

HINTS = {
    "int8": "try more calibration images (--calib-images), another --calib-method (entropy, percentile, "
            "minmax), or ship FP16 for this detector",
    "fp16": "ship FP32 for this detector, or report the run: the FP16 graph keeps only the backbone in half precision",
}


@dataclass
class EvalSet:
    """Preprocessed evaluation images with their labels (0 good, 1 defective).

    A tiled bundle's ``images`` are the graph inputs (every tile); ``image_of`` says which image
    each is from, and ``per_image`` reduces outputs to one score per image as the runtime does."""

    images: np.ndarray
    labels: np.ndarray  # one per image
    source: str
    image_of: np.ndarray | None = None  # per input, its image's position in ``labels`` (tiled)

    def per_image(self, out: ModelOutputs) -> ModelOutputs:
        """Scores per image (the max over its tiles); maps stay per input, which is what they are compared on."""
        if self.image_of is None:
            return out
        scores = np.full(len(self.labels), -np.inf, np.float32)
        np.maximum.at(scores, self.image_of, out.score)
        return ModelOutputs(out.anomaly_map, scores)


def score_graph(path: Path, spec: InputSpec, images: np.ndarray, batch: int = 8) -> ModelOutputs:
    """Run a graph over all images with the runtime's own CPU backend."""
    return OrtBackend(path, spec, max_batch=batch).run_all(images)


def compare(variant: ModelOutputs, reference: ModelOutputs, labels: np.ndarray) -> dict:
    """Error, rank agreement and AUROC of a variant against the FP32 reference outputs."""

    if not (np.isfinite(variant.score).all() and np.isfinite(variant.anomaly_map).all()):
        return {"finite": False, "score_rel_err": float("inf"), "map_rel_err": float("inf"), "spearman": None,
                "auroc_fp32": _auroc(labels, reference.score), "auroc": None, "auroc_change_points": None}
    good = labels == 0
    result = {
        "finite": True,
        "score_rel_err": relative_error(variant.score, reference.score),
        "map_rel_err": relative_error(variant.anomaly_map, reference.anomaly_map),
        # good parts decide the threshold: how far their scores move matters most for calibration
        "good_score_median_rel_err": float(np.median(np.abs(variant.score[good] - reference.score[good])
                                                      / np.abs(reference.score[good]).clip(1e-12))) if good.any() else None,
        "spearman": float(spearmanr(variant.score, reference.score).statistic) if len(labels) > 2 else None,
        "auroc_fp32": _auroc(labels, reference.score),
        "auroc": _auroc(labels, variant.score),
    }
    if result["auroc"] is not None and result["auroc_fp32"] is not None:
        result["auroc_change_points"] = 100.0 * (result["auroc"] - result["auroc_fp32"])
    else:
        result["auroc_change_points"] = None
    return result


def check_variant(precision: str, result: dict, tolerance_points: float, path: Path) -> None:
    """Refuse a variant whose outputs are not finite or whose AUROC falls past the tolerance."""
    if not result["finite"]:
        raise LinesideError(f"the {precision} variant {path.name} produces non-finite outputs (overflow): "
                            f"it is refused; {HINTS.get(precision, '')}")
    change = result["auroc_change_points"]
    if change is not None and change < -tolerance_points:
        raise LinesideError(
            f"the {precision} variant {path.name} loses {-change:.2f} points of image AUROC against FP32 "
            f"({result['auroc_fp32']:.4f} → {result['auroc']:.4f}; tolerance {tolerance_points:g}): it is refused "
            f"and not added to the bundle. Hint: {HINTS.get(precision, '')}; or raise --auroc-tolerance if the "
            "loss is acceptable for this station")


def format_result(precision: str, result: dict) -> str:
    parts = [f"{precision}: score rel. error {result['score_rel_err']:.2e}, map {result['map_rel_err']:.2e}"]
    if result.get("spearman") is not None:
        parts.append(f"Spearman {result['spearman']:.4f}")
    if result.get("auroc") is not None:
        parts.append(f"AUROC {result['auroc']:.4f} ({result['auroc_change_points']:+.2f} points vs FP32 "
                     f"{result['auroc_fp32']:.4f})")
    return ", ".join(parts)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if len(set(labels.tolist())) < 2:
        return None  # AUROC needs both good and defective images
    return float(image_auroc(labels, scores))
