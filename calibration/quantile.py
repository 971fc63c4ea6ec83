"""The quantile threshold: set so that, with the stated confidence, few good parts are rejected.

Put the threshold at the good scores' order statistic with ``k`` scores above it. For
continuous scores the true false-reject rate there is Beta(k+1, n-k) distributed (the
order statistics of a uniform sample), so its one-sided upper bound at confidence ``c``
is ``beta.ppf(c, k+1, n-k)`` -- the Clopper-Pearson bound for ``k`` rejects out of ``n``.
We take the largest ``k`` (the lowest threshold, so the fewest escapes) whose bound still
meets the target. When even ``k = 0`` (the highest good score) cannot meet it, there are
too few good images, and the result says how many are needed.

Dependencies: numpy and scipy only (the demo calls this directly).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import beta

from edge_infer.errors import LinesideError


@dataclass
class ThresholdResult:
    """A chosen image threshold and what it promises, in the words a quality engineer needs."""

    method: str
    threshold: float
    good_count: int
    expected_frr: float  # the false-reject rate to expect on good parts at this threshold
    frr_bound: float  # one-sided upper bound on it, at `confidence`
    confidence: float
    target_frr: float | None = None
    min_good_count: int | None = None  # good images needed for the bound to meet the target
    enough: bool = True
    message: str = ""
    observed_frr: float = 0.0  # the share of the calibration good scores above the threshold
    defect_count: int = 0
    escape_rate: float | None = None  # share of the given defects at or below the threshold
    escape_bound: float | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def clean_scores(scores, what: str = "good") -> np.ndarray:
    """Sorted finite float64 scores; refuses an empty set or non-finite values with the fix."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise LinesideError(f"no {what} scores to calibrate on: give a folder with {what} images")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x)))
        raise LinesideError(f"{bad} of the {what} scores are not finite (NaN/inf): the model misbehaves on "
                            "those images; check the bundle with `lineside score`")
    return np.sort(x)


def upper_bound(failures: int, trials: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on a rate after `failures` in `trials`."""
    if trials <= 0:
        return 1.0
    if failures >= trials:
        return 1.0
    return float(beta.ppf(confidence, failures + 1, trials - failures))


def min_count_for(target_frr: float, confidence: float) -> int:
    """Good images needed so that, with none above the threshold, the bound meets the target."""
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target_frr))


def check_rate(target_frr: float, confidence: float) -> None:
    if not 0.0 < target_frr < 1.0:
        raise LinesideError(f"target false-reject rate {target_frr} must lie between 0 and 1 (e.g. 0.005 for 0.5%)")
    if not 0.0 < confidence < 1.0:
        raise LinesideError(f"confidence {confidence} must lie between 0 and 1 (e.g. 0.95)")


def quantile_threshold(good_scores, target_frr: float = 0.005, confidence: float = 0.95) -> ThresholdResult:
    """The lowest good-score order statistic whose FRR upper bound meets ``target_frr``."""
    check_rate(target_frr, confidence)
    x = clean_scores(good_scores)
    n = x.size
    needed = min_count_for(target_frr, confidence)
    ks = np.arange(n)
    bounds = beta.ppf(confidence, ks + 1, n - ks)  # increases with k
    meets = np.nonzero(bounds <= target_frr)[0]
    k = int(meets[-1]) if meets.size else 0
    threshold = float(x[n - 1 - k])
    bound = float(bounds[k])
    enough = bool(meets.size)
    if enough:
        message = (f"{k} of {n} good images lie above the threshold; with {confidence:.0%} confidence "
                   f"the false-reject rate is at most {bound:.3%} (target {target_frr:.3%})")
    else:
        message = (f"with {n} good images the FRR bound is {bound:.2%}, not {target_frr:.2%}: give at least "
                   f"{needed} good images (or use --method evt to extrapolate the tail)")
    return ThresholdResult(
        method="quantile", threshold=threshold, good_count=n, expected_frr=(k + 1) / (n + 1),
        frr_bound=bound, confidence=confidence, target_frr=target_frr, min_good_count=needed,
        enough=enough, message=message, observed_frr=float(np.mean(x > threshold)),
        details={"order_statistic_rank": n - k, "scores_above": k},
    )


def add_escapes(result: ThresholdResult, defect_scores, confidence: float | None = None) -> ThresholdResult:
    """Fill in the escape rate (defects at or below the threshold) and its upper bound."""
    d = clean_scores(defect_scores, "defect")
    escapes = int(np.sum(d <= result.threshold))
    result.defect_count = int(d.size)
    result.escape_rate = escapes / d.size
    result.escape_bound = upper_bound(escapes, d.size, confidence or result.confidence)
    return result
