"""`lineside serve`: frames in on PULL, one verdict out per frame on PUB, control on REP.

Four loops, each on its own thread and owning its sockets (ZeroMQ sockets are not
thread-safe), each supervised (edge_infer/supervise.py): a loop that raises is restarted and
the crash shows in `ctl health` under ``loops``. This module has the server's life, the
workers and control; frames in and verdicts out have their own modules:

    receiver  (edge_infer/receiver.py) PULL → parse_frame (limits) → journal "inflight" → decode → bounded DropQueue
                                 (bad message or undecodable image → ERROR, overflow → DROPPED)
    worker    (edge_infer/worker.py) DropQueue → Model.score (preprocess, batch, backend, decide); `workers: N` runs N
    output    (edge_infer/output.py) outbox → journal (one transaction) → PUB verdict.<st> / alert.<st> → listeners
    control   REP: health, stats, reload, threshold, shutdown (every request gets one answer)

plus the journal's retention job (``edge_infer.retention``: by age and disk budget, its own
connection) and, while the journal's disk refuses writes, the output's in-memory backlog
(``edge_infer.backlog``: verdicts still go out, flagged ``journaled: false``).

Every message the receiver takes gets exactly one verdict, and every verdict passes the
single output step. The receiver notes each burst of messages in the journal's ``inflight``
table before queueing them, and the output step deletes a frame's row in the transaction
that records its verdict; rows a crash leaves behind become ERROR verdicts ("lost in
crash") at the next start, so the accounting holds across ``kill -9`` too.
``Server.listeners`` (callables taking ``(item, event)``, called after the verdict is
journaled and published) is where other line I/O subscribes. SIGTERM (or
`ctl shutdown`) drains: the receiver empties its socket, the worker the queue, the output
the journal, then the process exits, within SHUTDOWN_S whatever state the loops are in.
Several stations can run in one process, one ``Server`` (and ZeroMQ context) each.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable

import zmq

from .alerts import AlertWorker, ImageCache, build_sinks
from .backlog import Backlog
from .control import encode_answer, handle_request
from .decide import Verdict
from .errors import ImageReadError, LinesideError
from .journal import LOST_IN_CRASH, Journal
from .logs import log_event
from .pipeline import DropQueue, Item, Model
from .retention import Retention
from .station import StationConfig
from .output import Output
from .receiver import Receiver, recv_parts
from .supervise import POLL_MS, Loop, join_all
from .telemetry import Telemetry
from .worker import Workers
from .wire import HARD_MAX_PAYLOAD, MAX_HEADER_BYTES

RELOADABLE = ("bundle", "backend", "precision", "threads", "roi", "thresholds")  # what `ctl reload` applies
SHUTDOWN_S = 8.0  # a stop ends within this, whatever state the loops are in
MAX_CONTROL_MESSAGE = 1 << 20  # bytes a control message part may have before ZeroMQ drops the peer
REBIND_S = 5.0  # a loop's socket that must be bound again after a crash: retried this long


class Server:
    def __init__(self, cfg: StationConfig, context: zmq.Context | None = None):
        self.cfg = cfg
        self.station = cfg.station
        self.limits = cfg.limits.limits(shm=cfg.shm)
        self.own_context = context is None
        self.ctx = context or zmq.Context()
        self.telemetry = Telemetry(cfg.station)
        self.model = Model(cfg)  # load first: health answers "ready" only with a model
        self.model_lock = threading.Lock()
        self.workers = Workers(self, cfg.workers)  # `workers: N` scoring loops (edge_infer/worker.py)
        self.queue = DropQueue(cfg.queue.capacity, cfg.queue.policy)
        self.outbox: queue.Queue = queue.Queue(maxsize=4 * cfg.queue.capacity + 1024)  # full: receiver waits
        self.listeners: list[Callable[[Item, dict], None]] = []
        self.hooks: list = []  # objects with start() and close(): the line service (edge_infer/line)
        self.commands: dict = {}  # extra control commands, name -> callable(server, request) -> dict
        self.sinks = build_sinks(cfg)
        self.images = ImageCache()
        self.stopping = threading.Event()  # drain and stop
        self.stop_at: float | None = None  # time.monotonic() of the stop request
        self.received_all = threading.Event()  # receiver has emptied its socket and left
        self.finished = threading.Event()  # every verdict journaled and published
        self.auth = None
        self.threads: list[Loop] = []  # the server's own loops
        self.alert_workers: list[AlertWorker] = []
        self.loops: list[Loop] = []  # every supervised loop, reported by health (hooks add theirs)
        self.control_owes_answer = False  # REP state: a request was read and its answer not yet sent
        self.retention = Retention(cfg.station, cfg.journal)  # its own thread and connection
        self.backlog = Backlog(cfg.station, cfg.journal.backlog, self.retention.request_emergency)
        self.status = "starting"
        from .exposure import warnings as exposure_warnings

        self.exposed = exposure_warnings(cfg)  # services open beyond loopback without their security

    # ---- lifecycle ----------------------------------------------------------------
    def start(self) -> "Server":
        if self.cfg.curve:
            from .security import start_authenticator

            self.auth = start_authenticator(self.ctx, self.cfg.curve.authorized_clients)
        # Bind every socket here, in this thread, so a bad address fails `serve` at once;
        # each socket is then used only by its own thread.
        self.frames_sock = self._bind(zmq.PULL, self.cfg.sockets.frames)
        try:
            self.pub_sock = self._bind(zmq.PUB, self.cfg.sockets.verdicts)
            try:
                self.control_sock = self._bind(zmq.REP, self.cfg.sockets.control)
            except LinesideError:
                self.pub_sock.close()
                raise
        except LinesideError:
            self.frames_sock.close()
            if self.auth:
                self.auth.stop()
            raise
        self.journal = Journal(self.cfg.journal.path, self.cfg.journal.synchronous)  # schema exists before any reader
        self.output = Output(self, self.pub_sock, self.journal)
        self.receiver = Receiver(self, self.frames_sock, Journal(self.cfg.journal.path, self.cfg.journal.synchronous))
        lost = self.receiver.lost_in_crash()  # read before the receiver notes new frames
        self.retention.start()
        if self.cfg.metrics_port:
            self.telemetry.serve_http(self.cfg.metrics_port, self.cfg.metrics_host)
        self.alert_workers = [AlertWorker(s, self.cfg, self.images, self.telemetry, self.finished)
                              for s in self.sinks]
        self.threads = [
            Loop("receiver", self.receiver.run, recover=self.receiver.recover, finish=self.receiver.finish,
                 stopping=self.stopping),
            *(Loop("worker" if i == 0 else f"worker{i}", self.workers.run, finish=self.workers.finish,
                   stopping=self.stopping)
              for i in range(self.cfg.workers)),  # `workers`: each scores on its own backend
            Loop("output", self.output.run, finish=self.output.finish, stopping=self.stopping),
            Loop("control", self._control, recover=self._recover_control, finish=lambda: self.control_sock.close(),
                 stopping=self.stopping),
        ]
        self.loops += self.threads + self.alert_workers
        for t in self.threads + self.alert_workers:
            t.start()
        for item in lost:  # before the line starts, whose inspection ids begin anew in this run
            self.emit(item)
        for hook in self.hooks:
            hook.start()
        self.status = "ready"
        for warning in self.exposed:
            log_event("insecure_exposure", logging.WARNING, station=self.station, warning=warning)
        log_event("serving", station=self.station, bundle=self.model.info, sockets=self.cfg.sockets.model_dump(),
                  queue=self.cfg.queue.model_dump(), batch=self.cfg.batch.model_dump(), curve=bool(self.cfg.curve))
        return self

    def _bind(self, kind: int, address: str) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 0  # a close never waits on unsent messages: shutdown stays bounded
        if kind == zmq.PULL:
            sock.rcvhwm = self.cfg.queue.socket_hwm
            sock.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_PAYLOAD + MAX_HEADER_BYTES)  # bigger: peer disconnected
        if kind == zmq.REP:
            # over MAX_REQUEST_BYTES: an error answer; over this, the peer is disconnected unread
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_MESSAGE)
        if self.cfg.curve:
            from .security import secure_server

            secure_server(sock, self.cfg.curve.server_secret_key)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close()
            raise LinesideError(f"cannot bind {address}: {exc}; pick a free address in the station's sockets") from None
        return sock

    def rebind(self, sock: zmq.Socket, kind: int, address: str) -> zmq.Socket:
        """A fresh socket on the same address, for a loop whose socket a crash left unusable.
        The old one is closed first; its address may take a moment to free, hence the retries."""
        sock.close()
        deadline = time.monotonic() + REBIND_S
        while True:
            try:
                return self._bind(kind, address)
            except LinesideError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            self.status = "draining"
            self.stop_at = time.monotonic()
            log_event("draining", station=self.station, queued=len(self.queue))
            self.stopping.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def past_shutdown_deadline(self) -> bool:
        return self.stop_at is not None and time.monotonic() > self.stop_at + SHUTDOWN_S

    def close(self) -> None:
        """Stop (draining first), join every loop and release the sockets, within SHUTDOWN_S.

        Each loop closes its own sockets as it ends. A loop still running at the deadline
        (stuck in a listener or a backend call) is named in the log and left to end with the
        process: the context is then not terminated, since ``term`` would wait for its socket.
        """
        self.request_stop()
        deadline = self.stop_at + SHUTDOWN_S
        stuck = join_all(self.threads + self.alert_workers, deadline)
        self.retention.close()
        for hook in self.hooks:  # after the drain: they see (and send) every last verdict
            hook.close()
        if self.auth:
            self.auth.stop()
        self.telemetry.close()
        if self.model_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            try:
                self.model.close()
            finally:
                self.model_lock.release()
        else:
            stuck.append("model")
        if stuck:
            log_event("shutdown_incomplete", level=logging.ERROR, station=self.station, stuck=stuck,
                      waited_s=SHUTDOWN_S)
        elif self.own_context:
            self.ctx.term()  # every socket is closed by now: this returns at once
        log_event("stopped", station=self.station, **self.telemetry.snapshot()["verdicts"])

    def emit(self, item: Item) -> None:
        """Hand a decided item to the output step (from the receiver, the workers, the start)."""
        item.decided_at = time.time()
        self.outbox.put(item)  # blocks when full: back-pressure to the sockets, never a lost verdict

    # ---- control --------------------------------------------------------------------
    def _control(self) -> None:
        """REP: every request, whatever its shape, gets exactly one answer (the socket's state
        machine allows nothing else), so the next request can be read."""
        sock, poller = self.control_sock, zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not (self.finished.is_set() or self.past_shutdown_deadline()):
            if poller.poll(POLL_MS):
                parts = recv_parts(sock, 0)
                self.control_owes_answer = True
                sock.send(encode_answer(handle_request(self, parts)))
                self.control_owes_answer = False

    def reread_config(self) -> tuple[StationConfig, list[str], StationConfig]:
        """The station config file again: (the running config with what a reload applies, the settings
        that changed but need a restart, the file's config as it is now)."""
        if self.cfg.source is None:  # made in code, not from a file: nothing to re-read
            return self.cfg, [], self.cfg
        from .station import load_station

        fresh = load_station(self.cfg.source)
        if fresh.station != self.station:
            raise LinesideError(f"{self.cfg.source} is now station {fresh.station!r}, but this server is "
                                f"{self.station!r}: a reload cannot rename a station; restart serve")
        applied = self.cfg.model_copy(update={k: getattr(fresh, k) for k in RELOADABLE})
        restart = [k for k in StationConfig.model_fields if k not in (*RELOADABLE, "line")
                   and getattr(fresh, k) != getattr(self.cfg, k)]
        if _without_recipes(fresh.line) != _without_recipes(self.cfg.line):
            restart.append("line (its recipes' bundles, thresholds and ROI do apply)")
        return applied, restart, fresh

    def journal_event(self, kind: str, who: str, **detail) -> None:
        """Journal one change (line_events) from the control thread, on its own connection."""
        journal = Journal(self.cfg.journal.path, self.cfg.journal.synchronous)
        try:
            journal.event(self.station, kind, who, **detail)
        finally:
            journal.close()

    def _recover_control(self, exc: BaseException) -> None:
        """After a crash: answer the request that was read, or, if the socket cannot, bind a fresh one."""
        if self.control_owes_answer:
            try:
                self.control_sock.send(encode_answer({"ok": False, "error": f"internal error: {exc!r}"}))
                self.control_owes_answer = False
                return
            except zmq.ZMQError:
                pass
        if self.control_owes_answer or isinstance(exc, zmq.ZMQError):
            self.control_sock = self.rebind(self.control_sock, zmq.REP, self.cfg.sockets.control)
            self.control_owes_answer = False

    # health and stats read the model reference once, without the scoring lock: a reload swaps
    # the reference whole, and a batch that takes seconds must not keep control from answering
    def health(self) -> dict:
        bundle = dict(self.model.info)
        journal = self.journal_report()
        answer = {"ok": True, "status": self.status, "station": self.station, "bundle": bundle, "pid": os.getpid(),
                  "loops": {loop.name: loop.report() for loop in self.loops}, "journal": journal,
                  "warnings": journal["warnings"]}
        if self.exposed:
            answer["security_warnings"] = self.exposed
        return answer

    def journal_report(self) -> dict:
        """The journal's size against its budget, retention's work, the backlog, and what to warn about."""
        report = {**self.retention.report(), **self.backlog.report()}
        if self.backlog.failing:
            report["warnings"].insert(0, f"the journal cannot be written ({self.backlog.last_error}): "
                                      f"{len(self.backlog.rows)} verdicts wait in memory; check its disk")
        return report

    def stats(self) -> dict:
        model = self.model
        thresholds = model.thresholds.model_dump(exclude={"provenance"})
        layers = model.layers.describe()
        drift = model.drift.report()
        bundle = dict(model.info)
        return {"ok": True, "station": self.station, "status": self.status, **self.telemetry.snapshot(),
                "queue": {"depth": len(self.queue), "high_water": self.queue.high_water,
                          "capacity": self.queue.capacity, "policy": self.queue.policy},
                "thresholds": thresholds, "threshold_layers": layers, "drift": drift,
                "backend": bundle["backend"], "precision": bundle["precision"], "journal": self.journal_report()}


def _without_recipes(line):
    return None if line is None else line.model_copy(update={"recipes": []})


def serve_forever(servers: list[Server]) -> None:
    """Run stations until SIGTERM/SIGINT or each one's `ctl shutdown`; then drain them all.

    Under systemd (Type=notify) it says READY=1 once all stations serve, WATCHDOG=1 while
    every worker loop turns, and STOPPING=1 when it drains (edge_infer/sdnotify.py).
    """
    from .sdnotify import Notifier

    notifier = Notifier()

    def stop(*_):
        notifier.stopping()
        for server in servers:
            server.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        for server in servers:
            server.start()
        notifier.ready(f"serving {', '.join(s.station for s in servers)}")
        while not all(server.finished.wait(notifier.tick_s / len(servers)) or server.past_shutdown_deadline()
                      for server in servers):
            notifier.watchdog(min(server.workers.alive_at for server in servers))
    finally:
        notifier.stopping()
        for server in servers:
            if server.status != "starting":
                server.close()
        notifier.close()


def main(args) -> int:
    from .logs import json_logging
    from .station import load_station

    configs = [load_station(path) for path in args.station_config]
    names = [cfg.station for cfg in configs]
    if len(set(names)) != len(names):
        raise LinesideError(f"station names must differ between the configs, got {names}")
    restore_stderr = json_logging()  # from here on, every stderr line is one JSON object, native ones too
    try:
        # each station has its own ZeroMQ context, hence its own Curve authenticator and its own keys
        servers = [Server(cfg) for cfg in configs]
        for server in servers:
            if server.cfg.line:
                from .line.service import LineService

                LineService(server)
        serve_forever(servers)
    finally:
        restore_stderr()
    return 0
