"""Frames in: the server's receiver loop.

    PULL → parse_frame (limits) → journal "inflight" → decode → the bounded DropQueue

A bad message or an undecodable image gets its ERROR verdict here, a frame the full queue
sheds its DROPPED one; every message read is noted in the journal's ``inflight`` table (one
transaction per burst) before it is queued, so a crash cannot lose it silently: the next
start gives each row left there its "lost in crash" ERROR (``lost_in_crash``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import TYPE_CHECKING

import zmq

from .decide import Verdict
from .errors import ImageReadError, LinesideError
from .journal import LOST_IN_CRASH, Journal
from .logs import log_event
from .pipeline import Item
from .supervise import POLL_MS
from .wire import WireError, parse_frame

if TYPE_CHECKING:
    from .server import Server

DRAIN_S = 2.0  # at most this long reading what is left on the frames socket at shutdown
MAX_PARTS = 3  # kept of a message: enough to tell "too many parts" from a frame
BURST = 64  # messages taken per wake-up at most; their receipt is journaled in one transaction


class Receiver:
    """The receiver loop's state and steps; it owns the frames socket and the journal
    connection that notes receipts (ZeroMQ sockets and SQLite connections stay in one thread)."""

    def __init__(self, server: Server, sock: zmq.Socket, receipts: Journal):
        self.server, self.sock, self.receipts = server, sock, receipts
        self.station = server.station
        self.last_ids: dict[str, int] = {}
        self.receipts_failing = False

    def run(self) -> None:
        server, poller = self.server, zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not server.stopping.is_set():
            if poller.poll(POLL_MS):
                self._accept_burst(recv_burst(self.sock, 0))
        # Drain: what already reached the socket still gets its verdict. Bounded in time,
        # since a camera that keeps sending would otherwise keep the server alive.
        deadline = server.stop_at + DRAIN_S
        while time.monotonic() < deadline:
            burst = recv_burst(self.sock, zmq.NOBLOCK)
            if not burst:
                break
            self._accept_burst(burst)

    def recover(self, exc: BaseException) -> None:
        if isinstance(exc, zmq.ZMQError):  # the socket itself failed: a fresh one on the same address
            self.sock = self.server.rebind(self.sock, zmq.PULL, self.server.cfg.sockets.frames)

    def finish(self) -> None:
        self.sock.close()
        self.receipts.close()
        self.server.received_all.set()

    def lost_in_crash(self) -> list[Item]:
        """Frames an earlier run received and never decided (it was killed): each gets its ERROR now."""
        lost = []
        for row in self.receipts.inflight(self.station):
            item = Item(self.station, row["camera"], row["frame_id"], row["captured_at"], row["received_at"],
                        time.perf_counter(), tags=row["tags"], inflight_id=row["inflight_id"])
            item.verdict = Verdict("ERROR", reason=LOST_IN_CRASH)
            lost.append(item)
        if lost:
            log_event("lost_in_crash", level=logging.WARNING, station=self.station, frames=len(lost),
                      cameras=sorted({str(it.camera) for it in lost}))
        return lost

    def _accept_burst(self, messages: list[list[bytes]]) -> None:
        """Take what arrived: note every message as received (one journal transaction for the
        burst, so the frame path stays fast), then queue each or give it its verdict at once."""
        items = [self._admit_safely(parts) for parts in messages]
        self._note_received(items)
        for item in items:  # counted once noted: `received` in stats never runs ahead of the journal
            self.server.telemetry.received_frame(item.camera)
            try:
                self._dispatch(item)
            except Exception as exc:  # a bug here must neither stop the receiver nor lose the message
                log_event("receive_failed", level=logging.ERROR, station=self.station, error=repr(exc))
                item.frame, item.verdict = None, Verdict("ERROR", reason="internal error while receiving: "
                                                         "see the server log")
                self.server.emit(item)

    def _admit_safely(self, parts: list[bytes]) -> Item:
        try:
            return self._admit(parts)
        except Exception as exc:  # a bug here must neither stop the receiver nor lose the message
            log_event("receive_failed", level=logging.ERROR, station=self.station, error=repr(exc))
            item = Item(self.station, None, None, None, time.time(), time.perf_counter())
            item.verdict = Verdict("ERROR", reason="internal error while receiving: see the server log")
            return item

    def _admit(self, parts: list[bytes]) -> Item:
        """The message as an Item: a frame to score, or one that already has its ERROR verdict."""
        now, t = time.time(), time.perf_counter()
        try:
            frame = parse_frame(parts, self.server.limits)
        except WireError as exc:
            item = Item(self.station, exc.camera, exc.frame_id, exc.captured_at, now, t)
            item.verdict = Verdict("ERROR", reason=exc.reason)
            return item
        h = frame.header
        item = Item(self.station, h.camera, h.frame_id, h.captured_at, now, t, frame=frame, tags=h.tags)
        refusal = self._refusal(h)
        if refusal:
            item.frame, item.verdict = None, Verdict("ERROR", reason=refusal)
        return item

    def _note_received(self, items: list[Item]) -> None:
        """Journal the items as in flight; their verdict's transaction removes them again."""
        try:
            ids = self.receipts.receive([{"received_at": it.received_at, "station": it.station, "camera": it.camera,
                                          "frame_id": it.frame_id, "captured_at": it.captured_at, "tags": it.tags}
                                         for it in items])
        except sqlite3.Error as exc:
            # The frames are still scored and published; only a crash before their verdicts would lose them.
            if not self.receipts_failing:  # once per episode: a full disk must not flood the log
                log_event("journal_failed", level=logging.ERROR, station=self.station, stage="receive",
                          error=str(exc), frames=len(items))
            self.receipts_failing = True
            return
        self.receipts_failing = False
        for item, inflight_id in zip(items, ids):
            item.inflight_id = inflight_id

    def _dispatch(self, item: Item) -> None:
        server = self.server
        if item.verdict is not None:
            return server.emit(item)
        self._track_ids(item.camera, item.frame_id)
        # Decode here, before the queue can shed anything: an undecodable image is an ERROR
        # whatever the load, and DROPPED only ever means a good frame left unscored.
        # Decoded by the model's plan (a JPEG at the scale its input needs); the frame stays with
        # the item until scored, in case a reload brings a model that plans differently.
        t_decode = time.perf_counter()
        try:
            server.model.decode(item)  # the current model, read without the lock: decoding never waits on scoring
        except ImageReadError as exc:
            item.frame, item.verdict = None, Verdict("ERROR", reason=f"undecodable or wrong shape: {exc.reason}")
            return server.emit(item)
        except LinesideError as exc:
            item.frame, item.verdict = None, Verdict("ERROR", reason=f"cannot preprocess: {exc}")
            return server.emit(item)
        item.t_queued = time.perf_counter()
        item.decode_ms = (item.t_queued - t_decode) * 1e3
        dropped = server.queue.put(item)
        server.telemetry.queue_depth.labels(self.station).set(len(server.queue))
        if dropped is not None:
            dropped.image = dropped.frame = None
            dropped.verdict = Verdict("DROPPED", reason=f"overload: queue of {server.queue.capacity} full, "
                                      f"policy {server.queue.policy}")
            server.emit(dropped)

    def _refusal(self, h) -> str | None:
        """Why a well-formed frame is not this server's to score, if it is not."""
        if h.station != self.station:
            return (f"frame addressed to station {h.station!r}, but this server is {self.station!r}: "
                    "point the camera at its own station's server")
        cameras = self.server.cfg.cameras
        if cameras and h.camera not in {c.name for c in cameras}:
            return f"camera {h.camera!r} is not one of the station's cameras: add it to `cameras`"
        return None

    def _track_ids(self, camera: str, frame_id: int) -> None:
        """Count ids a camera skipped (frames lost upstream); a smaller id means it restarted."""
        last = self.last_ids.get(camera)
        if last is not None and frame_id > last + 1:
            self.server.telemetry.gap(camera, frame_id - last - 1)
            log_event("frame_gap", camera=camera, after=last, next=frame_id, missing=frame_id - last - 1)
        elif last is not None and frame_id <= last:
            log_event("frame_ids_restarted", camera=camera, last=last, now=frame_id)
        self.last_ids[camera] = frame_id


def recv_parts(sock: zmq.Socket, flags: int) -> list[zmq.Frame]:
    """One message's parts, keeping at most MAX_PARTS: a frame has two, and a peer that sends
    thousands gets its ERROR without the server holding them all. Zero-copy: each part is a
    zmq.Frame over libzmq's own buffer, which decode reads in place."""
    parts = [sock.recv(flags, copy=False)]
    while sock.rcvmore:
        part = sock.recv(copy=False)
        if len(parts) < MAX_PARTS:
            parts.append(part)
    return parts


def recv_burst(sock: zmq.Socket, flags: int) -> list[list[bytes]]:
    """The messages waiting on the socket, BURST at most: the first is read with ``flags``, the
    rest only if they are already there. Empty when a NOBLOCK read finds nothing."""
    burst = []
    try:
        burst.append(recv_parts(sock, flags))
        while len(burst) < BURST:
            burst.append(recv_parts(sock, zmq.NOBLOCK))
    except zmq.Again:
        pass
    return burst
