"""Evaluation metrics: image AUROC/AUPRC, pixel AUROC, AU-PRO and segmentation F1.

Image metrics are scikit-learn's. The pixel metrics all read one curve (`_PixelCurve`)
built from a single global sort of every pixel score, so evaluating ~1500 maps of
256×256 costs one sort and a few arrays of that size, not one pass per threshold.

Threshold convention, as at run time (`edge_infer.decide`): a pixel is predicted
defective when `map > threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from edge_infer.errors import LinesideError
from edge_infer.numeric import trapezoid


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores; defects (label 1) are the positive class."""
    labels, scores = _image_inputs(labels, scores)
    return float(roc_auc_score(labels, scores))


def image_auprc(labels, scores) -> float:
    """Average precision of image scores with defects (label 1) as the positive class."""
    labels, scores = _image_inputs(labels, scores)
    return float(average_precision_score(labels, scores))


def breakdown(labels, scores, kinds, groups=None) -> dict:
    """Where a detector finds defects and where it does not, from the test's own classes.

    ``per_defect`` (with two or more defect classes): each class's defects against every good image.
    ``per_group`` (with ``groups``, one name per image): each group's images alone, and the median score
    of its good images; ``groups_score_apart`` is true when every group with both kinds separates better
    alone than all of them pooled do: their scores sit at different levels, which one threshold cannot
    serve (one model per group, or rx-mix --groups, can)."""
    labels, scores = _image_inputs(labels, scores)
    kinds = np.asarray(kinds)
    good = ~labels
    result = {}
    classes = sorted(set(kinds[labels].tolist()))
    if len(classes) > 1:
        result["per_defect"] = {
            kind: {"n": int(np.count_nonzero(kinds == kind)),
                   "image_auroc": image_auroc(labels[good | (kinds == kind)], scores[good | (kinds == kind)])}
            for kind in classes}
    if groups is not None:
        groups = np.asarray(groups)
        per_group = {}
        for name in sorted(set(groups.tolist())):
            inside = groups == name
            n_good, n_defect = int(np.count_nonzero(inside & good)), int(np.count_nonzero(inside & labels))
            per_group[name] = {
                "n_good": n_good, "n_defect": n_defect,
                "image_auroc": image_auroc(labels[inside], scores[inside]) if n_good and n_defect else None,
                "good_median_score": float(np.median(scores[inside & good])) if n_good else None}
        scored = [g["image_auroc"] for g in per_group.values() if g["image_auroc"] is not None]
        result["per_group"] = per_group
        result["groups_score_apart"] = len(scored) > 1 and min(scored) > image_auroc(labels, scores)
    return result


def pixel_auroc(masks, maps) -> float:
    """ROC AUC over every pixel of every image (masks: N×H×W 0/1, maps: N×H×W float)."""
    return _PixelCurve.build(masks, maps).auroc()


def au_pro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to `fpr_limit` (MVTec AD).

    Regions are the 8-connected components of each mask; PRO(t) is the mean over all
    regions of the fraction of the region above t; FPR(t) the fraction of all normal
    pixels above t. The area from FPR 0 to `fpr_limit` is divided by `fpr_limit`.
    """
    return _PixelCurve.build(masks, maps).au_pro(fpr_limit)


def seg_f1(masks, maps, threshold: float | None = None) -> tuple[float, float]:
    """Pixel F1 pooled over the whole set, with `map > threshold` predicted defective.

    threshold=None picks the threshold with the best F1 (an oracle: it looks at the test
    masks, so report it as such). Returns (f1, threshold).
    """
    if threshold is None:
        return _PixelCurve.build(masks, maps).best_f1()
    masks, maps = _pixel_inputs(masks, maps)
    n_defect = _count_defects(masks)
    predicted = maps > np.float32(threshold)
    tp = int(np.count_nonzero(predicted & masks))
    fp = int(np.count_nonzero(predicted)) - tp
    return 2.0 * tp / (tp + fp + n_defect), float(threshold)


def evaluate_scores(labels, scores, masks=None, maps=None) -> dict:
    """All metrics for one evaluation run, as a flat dict of plain numbers.

    Always: image_auroc, image_auprc, n_good, n_defect. With masks and maps whose masks hold
    at least one defect pixel: pixel_auroc, au_pro_30, au_pro_05 (the MVTec AD 2 limit),
    seg_f1 and seg_f1_threshold (the oracle threshold, see `seg_f1`).
    """
    labels_arr, _ = _image_inputs(labels, scores)
    result = {
        "image_auroc": image_auroc(labels, scores),
        "image_auprc": image_auprc(labels, scores),
        "n_good": int(np.count_nonzero(~labels_arr)),
        "n_defect": int(np.count_nonzero(labels_arr)),
    }
    if masks is None and maps is None:
        return result
    if masks is None or maps is None:
        raise LinesideError(
            "evaluate_scores got masks without maps (or maps without masks); "
            "pass both to get pixel metrics, or neither for image metrics only"
        )
    masks, maps = _pixel_inputs(masks, maps)
    if len(masks) != len(labels_arr):
        raise LinesideError(
            f"evaluate_scores got {len(labels_arr)} labels but {len(masks)} masks; "
            "pass one mask and one map per scored image, in the same order"
        )
    if not masks.any():
        return result  # no defect pixel anywhere: pixel metrics are undefined
    curve = _PixelCurve.build(masks, maps)
    f1, threshold = curve.best_f1()
    result.update(
        pixel_auroc=curve.auroc(),
        au_pro_30=curve.au_pro(0.3),
        au_pro_05=curve.au_pro(0.05),
        seg_f1=f1,
        seg_f1_threshold=threshold,
    )
    return result


@dataclass
class _PixelCurve:
    """Counts at each distinct pixel score s_k (descending), over pixels with map >= s_k."""

    thresholds: np.ndarray  # distinct map values, descending, float32
    tp: np.ndarray  # defect pixels with map >= thresholds[k]
    fp: np.ndarray  # normal pixels with map >= thresholds[k]
    pro: np.ndarray  # mean over regions of the covered fraction at thresholds[k]
    n_defect: int
    n_normal: int

    @classmethod
    def build(cls, masks, maps) -> _PixelCurve:
        masks, maps = _pixel_inputs(masks, maps)
        n_defect = _count_defects(masks)
        n_normal = masks.size - n_defect
        if n_normal == 0:
            raise LinesideError(
                "every mask pixel is marked defective, so false-positive rates are "
                "undefined; include defect-free pixels (e.g. good images) in the evaluation"
            )
        # One sort of all scores (values only: a float32 sort is several times faster than
        # an argsort). Every distinct score is a threshold; ends[k] is the last position
        # of thresholds[k] in the descending order, so ends[k] + 1 pixels are >= it.
        scores = np.sort(maps.reshape(-1))[::-1]
        ends = np.flatnonzero(scores[1:] != scores[:-1])
        ends = np.append(ends, scores.size - 1)
        thresholds = scores[ends]
        del scores
        # Defect pixels alone give TP and PRO, so memory beyond the sort scales with the
        # defect area. Ties do not matter: counts are read at whole tie groups.
        defect_scores, defect_weight = _defect_pixels(masks, maps)
        order = np.argsort(defect_scores)[::-1]
        defect_scores = defect_scores[order]  # descending
        pro_cum = np.cumsum(defect_weight[order])
        tp = np.searchsorted(-defect_scores, -thresholds, side="right")  # defects >= t
        pro = np.where(tp > 0, pro_cum[np.maximum(tp - 1, 0)], 0.0)
        fp = ends + 1 - tp
        return cls(thresholds, tp, fp, np.minimum(pro, 1.0), n_defect, n_normal)

    def _fpr(self) -> np.ndarray:
        return np.concatenate([[0.0], self.fp / self.n_normal])

    def auroc(self) -> float:
        tpr = np.concatenate([[0.0], self.tp / self.n_defect])
        return trapezoid(tpr, self._fpr())

    def au_pro(self, fpr_limit: float) -> float:
        if not 0.0 < fpr_limit <= 1.0:
            raise LinesideError(
                f"AU-PRO fpr_limit must be in (0, 1], got {fpr_limit}; use 0.3 (MVTec AD) "
                "or 0.05 (MVTec AD 2)"
            )
        pro = np.concatenate([[0.0], self.pro])
        return float(_area_up_to(self._fpr(), pro, fpr_limit) / fpr_limit)

    def best_f1(self) -> tuple[float, float]:
        f1 = 2.0 * self.tp / (self.tp + self.fp + self.n_defect)
        k = int(np.argmax(f1))
        return float(f1[k]), _threshold_below(self.thresholds, k)


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y) for x in [0, limit], x non-decreasing from 0.

    The curve is interpolated linearly at exactly x = limit, as the MVTec AD code does.
    """
    inside = int(np.searchsorted(x, limit, side="right"))  # points with x <= limit
    area = trapezoid(y[:inside], x[:inside])
    if inside < x.size:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_limit) / 2.0
    return area


def _threshold_below(thresholds: np.ndarray, k: int) -> float:
    """A float32-exact t with thresholds[k+1] <= t < thresholds[k], so `map > t` selects
    exactly the pixels with map >= thresholds[k] whether compared in float32 or float64."""
    high = thresholds[k]
    if k + 1 == thresholds.size:
        return float(np.nextafter(high, np.float32(-np.inf)))
    low = thresholds[k + 1]
    middle = np.float32((float(high) + float(low)) / 2.0)
    return float(middle if middle < high else low)


def _defect_pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of all defect pixels and each one's PRO weight 1 / (region size × regions),
    regions being the 8-connected components of each mask."""
    scores, region_ids = [], []
    n_regions = 0
    for mask, amap in zip(masks, maps):
        if not mask.any():
            continue
        count, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        scores.append(amap[mask])
        region_ids.append(labels[mask] + (n_regions - 1))  # 0-based ids over the whole set
        n_regions += count - 1
    region_ids = np.concatenate(region_ids)
    sizes = np.bincount(region_ids, minlength=n_regions)
    return np.concatenate(scores), 1.0 / (sizes[region_ids] * float(n_regions))


def _count_defects(masks: np.ndarray) -> int:
    n_defect = int(np.count_nonzero(masks))
    if n_defect == 0:
        raise LinesideError(
            "the masks contain no defect pixel, so pixel metrics are undefined; "
            "evaluate pixel metrics on a set that includes annotated defective images"
        )
    return n_defect


def _image_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1 or labels.shape != scores.shape:
        raise LinesideError(
            f"labels {labels.shape} and scores {scores.shape} must be 1-D and of equal "
            "length; pass one label (0 good, 1 defect) and one score per image"
        )
    if labels.size == 0:
        raise LinesideError("no images to evaluate; pass at least one good and one defective image")
    if np.isnan(scores).any():
        raise LinesideError(
            f"{int(np.isnan(scores).sum())} image scores are NaN; fix the model or "
            "preprocessing that produced them (a NaN score cannot be ranked)"
        )
    labels = _as_binary(labels, "labels")
    if labels.all() or not labels.any():
        only = "defective" if labels.all() else "good"
        raise LinesideError(
            f"all {labels.size} images are {only}: AUROC/AUPRC need both classes; "
            "evaluate on a test set with good and defective images"
        )
    return labels, scores


def _pixel_inputs(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """Masks as bool N×H×W and maps as contiguous float32 N×H×W (N×1×H×W is accepted)."""
    masks = _squeeze_channel(np.asarray(masks))
    maps = _squeeze_channel(np.asarray(maps))
    if masks.ndim != 3 or maps.ndim != 3:
        raise LinesideError(
            f"masks {masks.shape} and maps {maps.shape} must be N×H×W; "
            "stack them with np.stack, and use x[None] for a single image"
        )
    if masks.shape != maps.shape:
        raise LinesideError(
            f"masks {masks.shape} and anomaly maps {maps.shape} differ in shape; resize the "
            "maps to the mask size (cv2.resize, INTER_LINEAR) and pass one map per mask"
        )
    if masks.size == 0:
        raise LinesideError("no pixels to evaluate: masks and maps are empty")
    maps = np.ascontiguousarray(maps, dtype=np.float32)
    if not np.isfinite(maps).all():
        raise LinesideError(
            "anomaly maps contain NaN or infinite values; fix the model or preprocessing "
            "that produced them before evaluating"
        )
    return np.ascontiguousarray(_as_binary(masks, "masks")), maps


def _squeeze_channel(array: np.ndarray) -> np.ndarray:
    return array[:, 0] if array.ndim == 4 and array.shape[1] == 1 else array


def _as_binary(values: np.ndarray, name: str) -> np.ndarray:
    if values.dtype == np.bool_:
        return values
    if not ((values == 0) | (values == 1)).all():
        found = values[(values != 0) & (values != 1)].flat[0]
        raise LinesideError(
            f"{name} must be 0/1 or bool, found the value {found!r}; "
            f"convert first (e.g. {name} > 0 for 0/255 masks)"
        )
    return values == 1
