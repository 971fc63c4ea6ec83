"""Latency statistics as trtexec reports them: percentiles, spread, throughput, and the
bootstrap that tells a real change from run-to-run noise."""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def summarize(samples_ms) -> dict:
    """min, mean, median and the other percentiles, max and standard deviation of samples in ms."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latency samples to summarise")
    out = {"count": int(x.size), "min": float(x.min()), "mean": float(x.mean())}
    out.update({f"p{p}": float(np.percentile(x, p)) for p in PERCENTILES})
    out.update(max=float(x.max()), std=float(x.std(ddof=1)) if x.size > 1 else 0.0)
    return out


def format_row(name: str, stats: dict) -> str:
    keys = ("mean", "p50", "p90", "p99", "max")
    return f"{name:>12s}  " + "  ".join(f"{k} {stats[k]:7.2f}" for k in keys) + "  ms"


def throughput(images: int, seconds: float) -> float:
    """Images per second over a measured wall-clock span."""
    if seconds <= 0:
        raise ValueError(f"throughput needs a positive duration, got {seconds} s")
    return images / seconds


def cdf(samples_ms) -> tuple[np.ndarray, np.ndarray]:
    """Sorted samples and the fraction of samples at or below each: the empirical CDF."""
    x = np.sort(np.asarray(samples_ms, dtype=np.float64))
    return x, np.arange(1, x.size + 1) / x.size


def statistic(samples, name: str = "p50", axis=None):
    """`p50`, `p99`, ... or `mean` of samples (along `axis` for the bootstrap's resamples)."""
    if name == "mean":
        return np.mean(samples, axis=axis)
    if name.startswith("p") and name[1:].isdigit():
        return np.percentile(samples, int(name[1:]), axis=axis)
    raise ValueError(f"unknown statistic {name!r}: use mean or pNN (p50, p99, ...)")


def bootstrap_ratio(baseline, candidate, stat: str = "p50", resamples: int = 2000,
                    level: float = 0.95, seed: int = 0) -> dict:
    """candidate/baseline ratio of a statistic, with a bootstrap confidence interval.

    Each run is resampled with replacement on its own, so the interval is as wide as the
    two runs' spread makes it: a change outside it is more than this noise.
    """
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError("the bootstrap needs at least two samples in each run")
    rng = np.random.default_rng(seed)
    # Chunks keep memory bounded for long runs (resamples × samples floats at a time).
    ratios = []
    chunk = max(1, 2_000_000 // max(a.size, b.size))
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        sa = statistic(a[rng.integers(0, a.size, (n, a.size))], stat, axis=1)
        sb = statistic(b[rng.integers(0, b.size, (n, b.size))], stat, axis=1)
        ratios.append(sb / sa)
    ratios = np.concatenate(ratios)
    tail = (1 - level) / 2 * 100
    return {"stat": stat, "ratio": float(statistic(b, stat) / statistic(a, stat)),
            "low": float(np.percentile(ratios, tail)), "high": float(np.percentile(ratios, 100 - tail)),
            "level": level, "resamples": resamples}
