"""Counters and latency histograms (Prometheus) and the live stats of `lineside ctl stats`."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STATUSES = ("OK", "NG", "ERROR", "DROPPED")
STAGES = ("receive", "queue", "decode", "preprocess", "compute", "postprocess", "journal")
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Telemetry:
    """Per-server metrics in their own registry (several servers can share a process)."""

    def __init__(self, station: str, window: int = 4096):
        self.station = station
        self.registry = CollectorRegistry()
        r, s = self.registry, ["station"]
        self.frames = Counter("lineside_frames_received", "messages received on the frames socket", s + ["camera"],
                              registry=r)
        self.verdicts = Counter("lineside_verdicts", "verdicts journaled and published", s + ["status"], registry=r)
        self.dropped = Counter("lineside_frames_dropped", "frames shed under overload", s + ["policy"], registry=r)
        self.gaps = Counter("lineside_frame_id_gaps", "frame ids skipped by a camera (lost before the server)",
                            s + ["camera"], registry=r)
        self.latency = Histogram("lineside_verdict_latency_seconds", "from receipt to publication", s,
                                 buckets=BUCKETS, registry=r)
        self.stage = Histogram("lineside_stage_latency_seconds", "per pipeline stage", s + ["stage"],
                               buckets=BUCKETS, registry=r)
        self.queue_depth = Gauge("lineside_queue_depth", "frames waiting for the model", s, registry=r)
        self.alert_failures = Counter("lineside_alert_failures", "failed alert deliveries (retried)", s + ["sink"],
                                      registry=r)
        self.started = time.time()
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(STATUSES, 0)
        self.received = 0
        self.gap_frames = 0
        self.recent: deque = deque(maxlen=window)  # (published at, total ms, stage ms dict)
        self._http = None

    def received_frame(self, camera: str | None) -> None:
        self.frames.labels(self.station, camera or "?").inc()
        with self.lock:
            self.received += 1

    def gap(self, camera: str, missing: int) -> None:
        self.gaps.labels(self.station, camera).inc(missing)
        with self.lock:
            self.gap_frames += missing

    def verdict(self, status: str, total_ms: float, stages: dict, policy: str | None = None) -> None:
        self.verdicts.labels(self.station, status).inc()
        if status == "DROPPED":
            self.dropped.labels(self.station, policy or "?").inc()
        self.latency.labels(self.station).observe(total_ms / 1e3)
        for stage in STAGES:
            if stage in stages:
                self.stage.labels(self.station, stage).observe(stages[stage] / 1e3)
        with self.lock:
            self.counts[status] += 1
            if status in ("OK", "NG"):
                self.recent.append((time.time(), total_ms, stages))

    def snapshot(self) -> dict:
        with self.lock:
            recent = list(self.recent)
            counts, received, gaps = dict(self.counts), self.received, self.gap_frames
        out = {"uptime_s": round(time.time() - self.started, 3), "received": received, "verdicts": counts,
               "frame_id_gaps": gaps, "latency_ms": {}, "stage_ms": {}, "fps": 0.0}
        if recent:
            total = np.array([t for _, t, _ in recent])
            out["latency_ms"] = _percentiles(total) | {"n": len(total)}
            for stage in STAGES:
                vals = [st[stage] for _, _, st in recent if stage in st]
                if vals:
                    out["stage_ms"][stage] = _percentiles(np.array(vals))
            span = recent[-1][0] - recent[0][0]
            out["fps"] = round((len(recent) - 1) / span, 2) if span > 0 else 0.0
        return out

    def serve_http(self, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import start_http_server

        self._http = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if isinstance(self._http, tuple):  # prometheus-client >= 0.18 returns (server, thread)
            self._http[0].shutdown()


def _percentiles(values: np.ndarray) -> dict:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "max": round(float(values.max()), 3), "mean": round(float(values.mean()), 3)}
