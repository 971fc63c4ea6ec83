"""The server's scoring steps for frames off the wire, and its bounded queue.

The steps are the Scorer's (score.py): decode → preprocess → backend → decide, with the
model loaded by ``Scorer`` itself. The server decodes each frame as it receives it (before
the queue may shed it, so an undecodable image is always an ERROR); ``Model.score`` does the
rest. The difference from the Scorer is only that each frame's failure (ROI outside)
becomes that frame's ERROR verdict instead of stopping a batch, and a backend failure
becomes an ERROR for the frames of that batch.

Frames are decoded by ``edge_infer.preprocess``'s plan (a JPEG at the scale the model
needs) straight from the received buffer; a raw frame is never copied before the resize. A
frame in a camera's shared-memory ring (edge_infer/shm.py) is read in place the same way, and
each read is checked after it against the slot's seqlock: a slot the camera wrote over while
the frame waited makes that frame an ERROR, never a score of mixed pixels.
The model is loaded once per worker (``workers`` in the station config): each worker scores
its batches on its own backend, so N single-threaded backends use N cores.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .bundle import Bundle, Thresholds, sha256_file
from .decide import Verdict
from .drift import DriftMonitor
from .errors import ImageReadError, LinesideError
from .preprocess import Plan, frame_image, preprocess
from .score import Scorer
from .shm import ShmError
from .station import StationConfig
from .thresholds import ThresholdLayers
from .wire import Frame


@dataclass
class Item:
    """One message through the server, from arrival to its one verdict."""

    station: str
    camera: str | None
    frame_id: int | None
    captured_at: float | None
    received_at: float  # unix seconds
    t_received: float  # perf_counter, for latencies
    frame: Frame | None = None  # until the receiver decodes it into ``image``
    verdict: Verdict | None = None
    tags: dict = field(default_factory=dict)
    bundle_sha: str | None = None
    image: np.ndarray | None = None  # decoded on receipt; kept after scoring for NG frames only (disk alerts)
    decode_ms: float | None = None
    t_queued: float | None = None  # perf_counter when it entered the queue (after receipt and decode)
    plan: Plan | None = None  # how ``image`` was decoded (edge_infer.preprocess.plan)
    planned_for: object = None  # the InputSpec the plan was made for
    anomaly_map: np.ndarray | None = None
    roi: tuple | None = None  # the crop the anomaly map covers, in frame pixels (None: the whole frame)
    id: int | None = None  # journal row id once recorded
    inflight_id: int | None = None  # its row in the journal's ``inflight`` table, until recorded
    decided_at: float | None = None

    def event(self) -> dict:
        """The verdict as published and journaled (detail holds regions, latencies, bundle)."""
        v = self.verdict
        return {
            "id": self.id, "station": self.station, "camera": self.camera, "frame_id": self.frame_id,
            "captured_at": self.captured_at, "decided_at": self.decided_at, "status": v.status,
            "score": v.score, "threshold": v.threshold, "reason": v.reason,
            "regions": [r.__dict__ for r in v.regions], "latency_ms": v.latency_ms,
            "bundle_sha256": self.bundle_sha, "tags": self.tags,
        }


class Model:
    """A bundle loaded for the station (via Scorer), with the station's ROI and its threshold layers.

    ``recipe`` (a line recipe) adds its thresholds over the station's pins and its ROI over
    the station's. The thresholds the model decides with follow edge_infer.thresholds' rule;
    ``layers.runtime`` holds `ctl threshold` values, which `ctl reload` carries over.

    One Scorer (backend) per worker: ``score`` may be called from ``cfg.workers`` threads at
    once, each batch on a free backend. ``lease`` (taken under the server's model lock) keeps
    a reload from closing the model while a batch is on it.
    """

    def __init__(self, cfg: StationConfig, bundle_path=None, recipe=None, bundle: Bundle | None = None,
                 runtime: dict | None = None):
        bundle = bundle or Bundle.load(bundle_path or cfg.bundle)
        pins = cfg.thresholds.model_dump(exclude_none=True)
        if recipe is not None:
            pins |= recipe.thresholds.model_dump(exclude_none=True)
        self.recipe = recipe
        self.layers = ThresholdLayers(*bundle.thresholds_with_source(), station=pins, runtime=dict(runtime or {}))
        roi = (recipe.roi if recipe is not None and recipe.roi else None) or cfg.roi
        threads = cfg.threads
        if threads is None and cfg.workers > 1:  # N backends share the cores instead of each taking all
            threads = max(1, (os.cpu_count() or 1) // cfg.workers)
        self.scorers = [Scorer(bundle, backend=cfg.backend, precision=cfg.precision, threads=threads,
                               thresholds=self.layers.effective(), roi=roi, cuda_graph=cfg.cuda_graph,
                               tiles=cfg.tiles)
                        for _ in range(cfg.workers)]
        self.scorer = self.scorers[0]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for scorer in self.scorers:
            self._free.put(scorer)
        self._busy, self._idle = 0, threading.Condition()
        self._drift_lock = threading.Lock()
        self.drift = DriftMonitor(self.layers.bundle.provenance, self.scorer.thresholds.image)
        self.spec = self.scorer.spec
        m = bundle.manifest
        self.info = {"path": str(bundle.root), "family": m.model.family, "name": m.model.name,
                     "version": m.model.version, "manifest_sha256": sha256_file(bundle.root / "manifest.json"),
                     "backend": self.scorer.backend.name, "precision": self.scorer.backend.precision,
                     "signed": bundle.signed, "thresholds_file": self.layers.bundle_source, "workers": cfg.workers}

    @property
    def thresholds(self) -> Thresholds:
        return self.scorer.thresholds

    def set_runtime(self, runtime: dict) -> None:
        """New runtime threshold layer; decisions use it from the next batch."""
        self.layers.runtime = dict(runtime)
        for scorer in self.scorers:
            scorer.thresholds = self.layers.effective()
        with self._drift_lock:
            self.drift = DriftMonitor(self.layers.bundle.provenance, self.scorer.thresholds.image)  # new reference

    @property
    def max_batch(self) -> int:
        return self.scorer.backend.max_batch

    def lease(self) -> _Lease:
        """Count a batch in (call under the lock that guards swapping models); use as ``with``."""
        with self._idle:
            self._busy += 1
        return _Lease(self)

    def _release(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def decode(self, item: Item) -> None:
        """The frame's image, decoded by this model's plan (a JPEG at the scale its input needs).
        Raises ImageReadError (undecodable, wrong shape) or LinesideError (ROI outside)."""
        h = item.frame.header
        item.image, item.plan = frame_image(item.frame.payload, h.encoding, h.shape, self.spec,
                                            f"{h.camera}#{h.frame_id}")
        item.planned_for = self.spec

    def score(self, items: list[Item]) -> None:
        """Give every item its verdict (OK, NG or ERROR); never raises for one bad frame."""
        scorer = self._free.get()  # one per worker: free whenever a worker asks
        try:
            self._score(scorer, items)
        finally:
            self._free.put(scorer)

    def _score(self, scorer: Scorer, items: list[Item]) -> None:
        t_start = time.perf_counter()
        inputs, ready, preprocess_ms = [], [], {}
        for it in items:
            t0 = time.perf_counter()
            try:
                if it.planned_for != self.spec:  # decoded for the model a reload replaced
                    self.decode(it)
                # shared memory: the read is checked against the camera lapping the ring (edge_infer/shm.py)
                x = preprocess(it.image, self.spec, it.plan)
                inputs.append(x if it.frame is None else it.frame.settle(x))
            except ShmError as exc:  # overwritten before it was read: the reason names the fix
                it.verdict, it.image = Verdict("ERROR", reason=str(exc)), None
                continue
            except ImageReadError as exc:
                it.verdict, it.image = Verdict("ERROR", reason=f"undecodable or wrong shape: {exc.reason}"), None
                continue
            except LinesideError as exc:
                it.verdict, it.image = Verdict("ERROR", reason=f"cannot preprocess: {exc}"), None
                continue
            preprocess_ms[id(it)] = (time.perf_counter() - t0) * 1e3
            ready.append(it)
        if not ready:
            return
        try:
            out, verdicts = scorer.judge(inputs)
        except Exception as exc:  # any backend failure is this batch's ERROR, not the server's end
            for it in ready:
                it.verdict, it.image = Verdict("ERROR", reason=f"backend failure: {exc}"), None
            return
        sha = self.info["manifest_sha256"]
        for i, (it, verdict) in enumerate(zip(ready, verdicts)):
            verdict.latency_ms = {**_before_queue(it, t_start), "decode": round(it.decode_ms or 0.0, 3),
                                  "preprocess": round(preprocess_ms[id(it)], 3), **verdict.latency_ms}
            it.verdict = verdict
            it.bundle_sha = sha
            if it.verdict.status == "OK":
                with self._drift_lock:
                    self.drift.add(it.verdict.score)
            if it.verdict.status == "NG":
                it.anomaly_map, it.roi = out.anomaly_map[i], self.spec.roi
                it.image = _kept_image(it)
            else:
                it.image = None

    def close(self) -> None:
        """Close every backend once no batch is on the model any more."""
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0)
        for scorer in self.scorers:
            scorer.close()
        release_freed_memory()


def _kept_image(it: Item) -> np.ndarray | None:
    """An NG frame's image for the alerts that show it: a frame in shared memory is copied out of
    its slot (the camera reuses it), or left out when the camera has already written over it."""
    if it.frame is None or it.frame.shm is None:
        return it.image
    try:
        return it.frame.settle(it.image)
    except ShmError:
        return None


def _before_queue(it: Item, t_start: float) -> dict:
    """An item's time from its receipt to its batch's start, split so each ms is counted once:
    ``receive`` (parse and the journal's receipt transaction; decode is its own stage) and
    ``queue`` (from entering the queue to the worker taking it, batch wait included)."""
    if it.t_queued is None:  # queued without the receiver's stamp: all of it is waiting
        return {"queue": round((t_start - it.t_received) * 1e3, 3)}
    receive_ms = (it.t_queued - it.t_received) * 1e3 - (it.decode_ms or 0.0)
    return {"receive": round(max(0.0, receive_ms), 3), "queue": round((t_start - it.t_queued) * 1e3, 3)}


class _Lease:
    def __init__(self, model: Model):
        self.model = model

    def __enter__(self) -> Model:
        return self.model

    def __exit__(self, *exc) -> None:
        self.model._release()


class DropQueue:
    """A bounded FIFO that sheds load by policy and hands back what it shed."""

    def __init__(self, capacity: int, policy: str):
        self.capacity, self.policy = capacity, policy
        self.items: deque = deque()
        self.cond = threading.Condition()
        self.high_water = 0

    def put(self, item):
        """Queue ``item``; return the item dropped to make room (the oldest or ``item``), or None."""
        with self.cond:
            dropped = None
            if len(self.items) >= self.capacity:
                if self.policy == "drop-newest":
                    return item
                dropped = self.items.popleft()
            self.items.append(item)
            self.high_water = max(self.high_water, len(self.items))
            self.cond.notify()
            return dropped

    def get_batch(self, max_n: int, max_wait_s: float, timeout_s: float) -> list:
        """Up to ``max_n`` items: wait ``timeout_s`` for the first, then ``max_wait_s`` to fill."""
        with self.cond:
            if not self.items and not self.cond.wait_for(lambda: self.items, timeout_s):
                return []
            deadline = time.monotonic() + max_wait_s
            while len(self.items) < max_n:
                left = deadline - time.monotonic()
                if left <= 0 or not self.cond.wait(left):
                    break
            return [self.items.popleft() for _ in range(min(max_n, len(self.items)))]

    def __len__(self) -> int:
        return len(self.items)


def release_freed_memory() -> None:
    """Hand memory freed by a model back to the OS (glibc keeps it in its arenas otherwise, and
    RSS then grows with every reload as the arenas fragment); a no-op without glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass
