"""Thresholds from labelled good and defect scores: best F1, or least expected cost.

Candidate thresholds lie midway between consecutive distinct scores (and just below the
lowest), so the chosen one leaves equal room on both sides. A score above the threshold
is NG, as in ``edge_infer.decide``.
"""

from __future__ import annotations

import numpy as np

from edge_infer.errors import LinesideError

from .quantile import ThresholdResult, add_escapes, check_rate, clean_scores, upper_bound


def candidates(good: np.ndarray, defects: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, good above each, defects above each) for every distinct cut."""
    values = np.unique(np.concatenate([good, defects]))
    cuts = np.concatenate([[values[0] - 1e-9 * max(1.0, abs(values[0]))], (values[:-1] + values[1:]) / 2, [values[-1]]])
    good_above = good.size - np.searchsorted(good, cuts, side="right")
    defects_above = defects.size - np.searchsorted(defects, cuts, side="right")
    return cuts, good_above, defects_above


def f1_threshold(good_scores, defect_scores, confidence: float = 0.95) -> ThresholdResult:
    """The threshold with the best F1 for catching defects (defect = positive)."""
    good, defects = labelled(good_scores, defect_scores)
    cuts, fp, tp = candidates(good, defects)
    fn = defects.size - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    best = int(np.argmax(f1))
    result = labelled_result("f1", cuts[best], good, defects, int(fp[best]), confidence)
    result.details["f1"] = float(f1[best])
    result.message = (f"best F1 {f1[best]:.3f}: {result.observed_frr:.2%} of good rejected (bound "
                      f"{result.frr_bound:.2%}), {result.escape_rate:.2%} of defects escape (bound "
                      f"{result.escape_bound:.2%}), at {confidence:.0%} confidence")
    return result


def cost_threshold(good_scores, defect_scores, cost_escape: float = 10.0, cost_reject: float = 1.0,
                   defect_rate: float | None = None, confidence: float = 0.95) -> ThresholdResult:
    """The threshold with the least expected cost per part.

    cost = defect_rate * escape_rate * cost_escape + (1 - defect_rate) * FRR * cost_reject.
    ``defect_rate`` is the share of defective parts on the line; labelled sets are usually
    enriched with defects, so give the line's real rate (default: the share in the sample).
    """
    good, defects = labelled(good_scores, defect_scores)
    if cost_escape <= 0 or cost_reject <= 0:
        raise LinesideError("the costs of an escape and of a false reject must both be positive")
    rate = defects.size / (good.size + defects.size) if defect_rate is None else defect_rate
    check_rate(rate, 0.5)
    cuts, fp, tp = candidates(good, defects)
    cost = rate * (defects.size - tp) / defects.size * cost_escape + (1 - rate) * fp / good.size * cost_reject
    best = int(np.argmin(cost))
    result = labelled_result("cost", cuts[best], good, defects, int(fp[best]), confidence)
    result.details.update({"cost_per_part": float(cost[best]), "cost_escape": cost_escape,
                           "cost_reject": cost_reject, "defect_rate": rate})
    result.message = (f"least expected cost {cost[best]:.4f} per part (escape {cost_escape:g}, false reject "
                      f"{cost_reject:g}, defect rate {rate:.2%}): {result.observed_frr:.2%} of good rejected, "
                      f"{result.escape_rate:.2%} of defects escape")
    return result


def labelled(good_scores, defect_scores) -> tuple[np.ndarray, np.ndarray]:
    good = clean_scores(good_scores, "good")
    if defect_scores is None or np.size(defect_scores) == 0:
        raise LinesideError("the f1 and cost methods need labelled defects: pass --defects DIR")
    return good, clean_scores(defect_scores, "defect")


def labelled_result(method: str, threshold: float, good: np.ndarray, defects: np.ndarray, false_rejects: int,
                    confidence: float) -> ThresholdResult:
    result = ThresholdResult(
        method=method, threshold=float(threshold), good_count=int(good.size),
        expected_frr=false_rejects / good.size, frr_bound=upper_bound(false_rejects, good.size, confidence),
        confidence=confidence, observed_frr=false_rejects / good.size,
    )
    return add_escapes(result, defects, confidence)
