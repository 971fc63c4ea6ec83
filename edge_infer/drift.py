"""Has the line drifted since calibration? Compare live scores with the calibration reference.

Two measures, numpy only (this runs on the device, beside the server's stats):

- the population stability index (PSI) over bins cut at the reference's quantiles:
  below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a major one (the usual
  credit-scoring rule of thumb);
- the two-sample Kolmogorov-Smirnov statistic with its asymptotic p-value
  (Kolmogorov's limiting distribution, scipy.stats.kstwobign; scipy's own
  ``ks_2samp(method="asymp")`` uses the finite-n distribution at the effective n instead).

The reference is what calibration stores in the thresholds' provenance: a bounded
sample of the good scores (``reference_scores``) and how many scores it summarises
(``reference_count``), so the KS p-value uses the real calibration sample size.
"""

from __future__ import annotations

from collections import deque

import numpy as np

PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
KS_ALPHA = 0.01
REFERENCE_SIZE = 512


def reference_sample(scores, size: int = REFERENCE_SIZE) -> list[float]:
    """A bounded stand-in for a score distribution: the sorted sample, or its quantiles."""
    x = np.sort(np.asarray(scores, dtype=np.float64))
    if x.size <= size:
        return x.tolist()
    return np.quantile(x, (np.arange(size) + 0.5) / size).tolist()


def psi(reference, live, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of ``live`` against ``reference`` (bins at reference quantiles)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("psi needs two non-empty samples")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    # searchsorted puts each score in a bin; the outer bins reach to -inf / +inf
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    q = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    p, q = np.clip(p, eps, None), np.clip(q, eps, None)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_2samp(a, b, n_a: int | None = None) -> tuple[float, float]:
    """KS statistic D and its asymptotic two-sided p-value; ``n_a`` overrides a's sample size."""
    x = np.sort(np.asarray(a, dtype=np.float64))
    y = np.sort(np.asarray(b, dtype=np.float64))
    if x.size == 0 or y.size == 0:
        raise ValueError("ks_2samp needs two non-empty samples")
    grid = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, grid, side="right") / x.size
                            - np.searchsorted(y, grid, side="right") / y.size)))
    n, m = (n_a or x.size), y.size
    en = np.sqrt(n * m / (n + m))
    return d, kolmogorov_sf(en * d)


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution: 2 sum (-1)^(k-1) exp(-2 k^2 lam^2)."""
    if lam < 0.2:  # the series converges slowly here and the answer is 1 to 1e-9
        return 1.0
    k = np.arange(1, 101)
    terms = 2.0 * (-1.0) ** (k - 1) * np.exp(-2.0 * k**2 * lam**2)
    return float(np.clip(terms.sum(), 0.0, 1.0))


def drift_check(reference, live, reference_count: int | None = None, min_live: int = 30) -> dict:
    """PSI and KS between calibration and live scores, with a verdict a person can act on."""
    live = np.asarray(live, dtype=np.float64)
    live = live[np.isfinite(live)]
    if live.size < min_live:
        return {"status": "too-few", "live_count": int(live.size),
                "message": f"only {live.size} live scores; the drift check needs at least {min_live}"}
    index = psi(reference, live)
    d, p = ks_2samp(reference, live, n_a=reference_count)
    drifted = index > PSI_MAJOR or p < KS_ALPHA
    status = "drift" if drifted else ("watch" if index > PSI_MODERATE else "stable")
    message = {
        "drift": "live scores differ from calibration: check the lighting, camera and parts, then recalibrate",
        "watch": "live scores have moved a little since calibration; keep an eye on the reject rate",
        "stable": "live scores match calibration",
    }[status]
    return {"status": status, "psi": round(index, 4), "ks_statistic": round(d, 4), "ks_pvalue": p,
            "live_count": int(live.size), "reference_count": int(reference_count or np.size(reference)),
            "live_median": float(np.median(live)), "reference_median": float(np.median(reference)),
            "message": message}


def drift_from_provenance(provenance: dict, live) -> dict:
    """The drift check against the reference a calibration stored in the thresholds' provenance."""
    ref = provenance.get("reference_scores")
    if not ref:
        return {"status": "no-reference",
                "message": "these thresholds carry no reference scores: recalibrate with `lineside calibrate`"}
    return drift_check(ref, live, reference_count=provenance.get("good_count"))


class DriftMonitor:
    """The last ``window`` OK scores of a running station against its calibration reference.

    Feed it the score of every OK verdict; ``report()`` is the drift check for the stats.
    OK scores never exceed the image threshold, so the reference is cut there too, or the
    few calibration scores above it would read as drift.
    """

    def __init__(self, provenance: dict, threshold: float | None, window: int = 1000):
        ref = np.asarray(provenance.get("reference_scores") or [], dtype=np.float64)
        self.reference = ref[ref <= threshold] if threshold is not None else ref
        self.reference_count = provenance.get("good_count")
        self.live: deque[float] = deque(maxlen=window)

    def add(self, score: float | None) -> None:
        if score is not None and np.isfinite(score):
            self.live.append(float(score))

    def report(self) -> dict:
        if self.reference.size == 0:
            return drift_from_provenance({}, [])
        live = list(self.live)  # a copy taken at once: the worker appends while stats reads
        return drift_check(self.reference, np.asarray(live, np.float64), reference_count=self.reference_count)
