"""Latency statistics as trtexec reports them: percentiles, spread, throughput."""

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
