"""Triggers: each one becomes an inspection with its own id, carried by the frame (tag
``inspection``), its verdict, its journal row (``detail.tags``) and every output.

Sources: ``free-run`` (every frame the line camera gives), ``gpio`` (a debounced input's
edge events), ``network`` (Modbus, OPC UA, `lineside ctl trigger`) and ``page`` (the
operator page's button). The active recipe's trigger mode decides which count. A trigger is
registered at once — id, time and encoder count taken at the edge, the reject armed — and
its frame is grabbed and sent by the hub's own thread, so a slow camera never delays it.

Ids come from one counter, whatever the source, and a refused trigger (busy, switching,
disabled source) still gets its id: it is a part on the conveyor that was not inspected, so
the service decides it DROPPED at once and the reject treats it as any other rejecting
verdict (fail-safe). Only free-run frames, which are no parts, are skipped silently.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..errors import LinesideError
from ..logs import log_event
from .plc_signals import ErrorCode, PlcError

ALLOWED = {"free-run": {"free-run"}, "gpio": {"gpio", "page"}, "network": {"network", "page"},
           "any": {"gpio", "network", "page"}}


@dataclass
class Inspection:
    id: int
    source: str
    recipe_id: int
    t_trigger: float  # line clock (monotonic seconds)
    count_at_trigger: int | None = None
    image: np.ndarray | None = None
    who: str = ""  # the channel or person: modbus, opcua, ctl:NAME, page:ADDR, gpio, free-run
    plc: bool = False  # the PLC triggered it: its result enters the PLC handshake


class TriggerRefused(PlcError):
    """A trigger that was refused: the part got an id and must be decided fail-safe."""

    def __init__(self, refusal: PlcError, inspection: Inspection):
        super().__init__(refusal.code, refusal.detail)
        self.inspection = inspection


class Grabber(ABC):
    """Where a triggered frame comes from."""

    @abstractmethod
    def grab(self) -> np.ndarray:
        """The frame for a trigger that just fired."""

    def close(self) -> None:
        """Release what it holds; the default holds nothing."""


class SourceGrabber(Grabber):
    """A camera source as `lineside camera` opens it (device, GStreamer, RTSP, folder...)."""

    def __init__(self, spec: str):
        from ..camera import open_source

        self.source = open_source(spec, loop=True)

    def grab(self) -> np.ndarray:
        image = self.source.read()
        if image is None and self.source.reopen():
            image = self.source.read()
        if image is None:
            raise LinesideError("the line camera gave no frame")
        return image

    def close(self) -> None:
        self.source.close()


class FunctionGrabber(Grabber):
    def __init__(self, fn):
        self.fn = fn

    def grab(self) -> np.ndarray:
        return self.fn()


class TriggerHub:
    def __init__(self, server, line_cfg, grabber: Grabber, signals, clock, metrics, recipe_mode, reject=None,
                 on_grab_failed=None):
        from ..camera import Publisher

        self.server, self.cfg, self.grabber, self.signals, self.clock = server, line_cfg, grabber, signals, clock
        self.metrics, self.recipe_mode, self.reject, self.on_grab_failed = metrics, recipe_mode, reject, on_grab_failed
        cam = line_cfg.camera
        self.publisher = Publisher(server.cfg.sockets.frames, server.station, cam.name if cam else "line0",
                                   cam.encoding if cam else "raw", server_key=cam.server_key if cam else None,
                                   client_key=cam.client_key if cam else None)
        self.publisher.sock.sndtimeo = 2000  # a server that stopped reading must not hang the hub
        self.cond = threading.Condition()
        self.in_flight: dict[int, Inspection] = {}
        self.next_id = 1
        self.grabs: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._grab_loop, name="line-grab", daemon=True)

    def start(self) -> None:
        self.thread.start()

    # ---- registering a trigger (any thread, fast) -------------------------------------
    def trigger(self, source: str, who: str = "", plc: bool = False, at: float | None = None) -> Inspection:
        """Register one trigger (``at``: its edge time on the line clock, default now).

        Raises TriggerRefused (a PlcError carrying the refused part's Inspection) when the part
        cannot be inspected; free-run frames are refused with a plain PlcError and no id."""
        mode = self.recipe_mode()
        with self.cond:
            refusal = self._refusal(source, mode)
            if refusal is not None and source == "free-run":
                raise refusal
            insp = self._register(source, who, plc, at)
            if refusal is None:
                self.in_flight[insp.id] = insp
                self.signals.in_flight = len(self.in_flight)
        if self.reject:
            self.reject.arm(insp.id, insp.t_trigger, insp.count_at_trigger)
        self.signals.count("triggers")
        self.metrics.triggers.labels(self.server.station, source).inc()
        if refusal is not None:
            raise TriggerRefused(refusal, insp)
        self.grabs.put(insp)
        return insp

    def _refusal(self, source: str, mode: str) -> PlcError | None:
        if not self.signals.ready or self.signals.switching or self.stopping.is_set():
            return PlcError(ErrorCode.NOT_READY, "not ready (starting, stopping or switching recipes)")
        if source not in ALLOWED[mode]:
            return PlcError(ErrorCode.TRIGGER_DISABLED, f"the active recipe's trigger mode is {mode}: "
                            f"a {source} trigger does not inspect")
        if len(self.in_flight) >= self.cfg.max_in_flight:
            return PlcError(ErrorCode.TRIGGER_WHILE_BUSY, f"{len(self.in_flight)} parts in flight "
                            f"(max_in_flight {self.cfg.max_in_flight}): wait for Ready")
        return None

    def _register(self, source: str, who: str, plc: bool, at: float | None) -> Inspection:
        """A new id, time and encoder count (under the lock: ids are unique and in trigger order)."""
        t = self.clock.now() if at is None else at
        count = self.reject.position() if self.reject else None
        insp = Inspection(self.next_id, source, self.signals.recipe_id, t, count, who=who or source, plc=plc)
        self.next_id += 1
        if plc:
            self.signals.last_trigger_id = insp.id
        return insp

    def decided(self, inspection_id: int) -> Inspection | None:
        with self.cond:
            insp = self.in_flight.pop(inspection_id, None)
            self.signals.in_flight = len(self.in_flight)
            self.cond.notify_all()
        return insp

    def wait_idle(self, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: not self.in_flight, timeout_s)

    # ---- grabbing and sending (the hub's thread) ----------------------------------------
    def _grab_loop(self) -> None:
        while not (self.stopping.is_set() and self.grabs.empty()):
            try:
                insp = self.grabs.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                insp.image = np.ascontiguousarray(self.grabber.grab())
                self.publisher.tags = {"inspection": str(insp.id), "recipe": str(insp.recipe_id),
                                       "trigger": insp.source}
                if not self.publisher.publish(insp.image, block=True):
                    raise LinesideError("the server did not take the frame within 2 s")
            except Exception as exc:  # noqa: BLE001  the part still needs an outcome: fail-safe, as ERROR
                log_event("grab_failed", station=self.server.station, inspection=insp.id, error=str(exc))
                self.decided(insp.id)
                if self.on_grab_failed:
                    self.on_grab_failed(insp, str(exc))

    def free_run(self, stop: threading.Event) -> None:
        """Trigger continuously while the active recipe is free-run, paced to the camera's fps."""
        fps = self.cfg.camera.free_run_fps if self.cfg.camera else None
        period = 1.0 / fps if fps else 0.0
        while not stop.is_set():
            if self.recipe_mode() != "free-run":
                stop.wait(0.05)  # another mode: look again for a switch to free-run
                continue
            t0 = self.clock.now()
            try:
                self.trigger("free-run", "free-run")
            except PlcError:
                pass  # busy or switching: the next frame gets its turn
            stop.wait(max(period - (self.clock.now() - t0), 0.002))

    def close(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.publisher.close()
        self.grabber.close()
