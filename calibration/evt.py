"""Peaks over threshold: a generalised Pareto tail for false-reject rates finer than the sample.

Above a high order statistic ``u`` (the top ``tail_fraction`` of the good scores) the
excesses of any well-behaved distribution follow a generalised Pareto law (Pickands-
Balkema-de Haan). Fit it (scipy.stats.genpareto, location 0), check the fit with an
Anderson-Darling test whose p-value is found by Monte Carlo refits (scipy's
``goodness_of_fit``, so estimating the parameters is accounted for), and read the
threshold off the fitted tail: ``P(score > t) = zeta * GPD.sf(t - u)``, ``zeta`` the
share of scores above ``u``.

The threshold carries the fit's uncertainty: it is the one-sided ``confidence`` upper
limit of the target rate's return level from the profile likelihood (Coles, *An
Introduction to Statistical Modeling of Extreme Values*, 2001, sec. 4.3.3), so with that
confidence the false-reject rate there is at most the target. The limit is exact only
asymptotically and only as far as the tail is Pareto-like: in seeded trials (tests) it
held in about 93% of exponential samples and 87% of normal ones (normal tails approach
the GPD slowly) at the nominal 95%. When the tail does not fit, or is too short, we fall
back to the quantile method and say why.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, stats

from .quantile import ThresholdResult, check_rate, clean_scores, min_count_for, quantile_threshold


def fit_tail(x_sorted: np.ndarray, n_tail: int) -> tuple[float, float, float, np.ndarray]:
    """(u, shape, scale, excesses) for the top ``n_tail`` of a sorted sample."""
    u = float(x_sorted[-n_tail - 1])
    excess = x_sorted[-n_tail:] - u
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        shape, _, scale = stats.genpareto.fit(excess, floc=0)
    return u, float(shape), float(scale), excess


def tail_rate(t: float, n: int, n_tail: int, u: float, shape: float, scale: float) -> float:
    """P(score > t) under the fitted tail (t at or above u)."""
    return n_tail / n * float(stats.genpareto.sf(max(t - u, 0.0), shape, 0, scale))


def tail_threshold(target_frr: float, n: int, n_tail: int, u: float, shape: float, scale: float) -> float:
    return u + float(stats.genpareto.isf(target_frr * n / n_tail, shape, 0, scale))


def gpd_loglik(excess: np.ndarray, shape: float, scale: float) -> float:
    if scale <= 0:
        return -np.inf
    if abs(shape) < 1e-9:
        return float(-excess.size * np.log(scale) - excess.sum() / scale)
    t = 1.0 + shape * excess / scale
    if np.any(t <= 0):
        return -np.inf
    return float(-excess.size * np.log(scale) - (1.0 + 1.0 / shape) * np.log(t).sum())


def profile_upper_excess(excess: np.ndarray, shape: float, scale: float, p: float, confidence: float) -> float:
    """One-sided upper profile-likelihood limit of the excess exceeded with probability ``p``.

    The GPD is reparametrised by that excess z (the return level): for a given shape,
    scale = z * shape / (p**-shape - 1). The limit is the largest z whose profile
    log-likelihood lies within chi2_1(1 - 2 alpha) / 2 of the maximum.
    """
    def scale_for(z: float, c: float) -> float:
        return z / np.log(1.0 / p) if abs(c) < 1e-9 else z * c / (p ** (-c) - 1.0)

    def profile(z: float) -> float:
        best = optimize.minimize_scalar(lambda c: -gpd_loglik(excess, c, scale_for(z, c)),
                                        bounds=(-0.95, 1.5), method="bounded")
        return -best.fun

    top = gpd_loglik(excess, shape, scale)
    drop = stats.chi2.ppf(1.0 - 2.0 * (1.0 - confidence), 1) / 2.0
    z_hat = float(stats.genpareto.isf(p, shape, 0, scale))

    def gap(z: float) -> float:  # negative inside the confidence interval
        return top - profile(z) - drop

    if gap(z_hat) >= 0:  # the fit sits at the edge of the shapes searched: no interval to read off
        return np.inf
    hi = z_hat * 1.5
    while gap(hi) < 0:
        if hi > 1e6 * z_hat:
            return np.inf
        hi *= 1.5
    return float(optimize.brentq(gap, z_hat, hi, xtol=1e-9 + 1e-7 * z_hat))


def evt_threshold(good_scores, target_frr: float = 0.005, confidence: float = 0.95, tail_fraction: float = 0.1,
                  min_exceedances: int = 30, gof_alpha: float = 0.05, gof_samples: int = 199,
                  seed: int = 0) -> ThresholdResult:
    """The GPD-tail threshold for ``target_frr``; falls back to ``quantile_threshold`` with a reason."""
    check_rate(target_frr, confidence)
    x = clean_scores(good_scores)
    n = x.size
    n_tail = max(min_exceedances, round(tail_fraction * n))

    def fallback(reason: str) -> ThresholdResult:
        result = quantile_threshold(x, target_frr, confidence)
        result.method = "quantile (evt fell back)"
        own = result.message.replace(" (or use --method evt to extrapolate the tail)", "")
        result.message = f"evt fell back to quantile: {reason}. {own}"
        result.details["evt_fallback"] = reason
        return result

    if n_tail > n // 2:
        return fallback(f"{n} good images leave too short a tail to fit; give at least {2 * min_exceedances}")
    if target_frr * n >= n_tail:
        return fallback(f"the target {target_frr:.2%} lies in the body of the sample, not its top "
                        f"{n_tail / n:.0%} tail; the quantile method needs no model there")
    u, shape, scale, excess = fit_tail(x, n_tail)
    if scale <= 0 or np.ptp(excess) == 0:
        return fallback("the top scores are all equal, so there is no tail to fit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gof = stats.goodness_of_fit(stats.genpareto, excess, known_params={"loc": 0}, statistic="ad",
                                    n_mc_samples=gof_samples, random_state=seed)
    if gof.pvalue < gof_alpha:
        return fallback(f"the generalised Pareto tail does not fit the top {n_tail} scores "
                        f"(Anderson-Darling p = {gof.pvalue:.3f} < {gof_alpha}); a tail of another length "
                        "(--tail-fraction 0.05 or 0.2) may fit")

    p = target_frr * n / n_tail  # the target as a probability within the tail
    upper = profile_upper_excess(excess, shape, scale, p, confidence)
    if not np.isfinite(upper):
        return fallback("the tail's profile likelihood gives no finite upper confidence limit (too heavy a tail)")
    threshold = u + upper
    expected = tail_rate(threshold, n, n_tail, u, shape, scale)
    return ThresholdResult(
        method="evt", threshold=threshold, good_count=n, expected_frr=expected, frr_bound=target_frr,
        confidence=confidence, target_frr=target_frr, min_good_count=min_count_for(target_frr, confidence),
        enough=True, observed_frr=float(np.mean(x > threshold)),
        message=(f"generalised Pareto tail over the top {n_tail} of {n} good scores (shape {shape:.3f}, "
                 f"fit p = {gof.pvalue:.2f}); expected FRR {expected:.4%}; with {confidence:.0%} confidence "
                 f"(profile likelihood) at most {target_frr:.3%}"),
        details={"tail_start": u, "tail_count": n_tail, "shape": shape, "scale": scale,
                 "gof_statistic": "anderson-darling", "gof_pvalue": float(gof.pvalue),
                 "point_threshold": tail_threshold(target_frr, n, n_tail, u, shape, scale),
                 "bound_method": "profile likelihood of the return level"},
    )
