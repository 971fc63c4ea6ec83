"""The line service: one per station with a ``line`` section, attached to its Server.

It adds no pipeline of its own. Triggers send frames into the server's frames socket; the
server scores, journals and publishes them as always; this service's listener (on the
server's output thread) turns each verdict back into the inspection's result for the PLC
signals, the reject timer, the operator page and MQTT (which reads the journal).
"""

from __future__ import annotations

import threading

from ..errors import LinesideError
from ..logs import log_event
from ..score_scale import ScoreScale
from ..supervise import Loop
from .events import LineJournal, LineMetrics
from .hw import Clock, DebouncedInput, EdgeCounter, SimGpio, Timers, open_gpio
from .live import LiveView
from .plc_signals import ErrorCode, PlcError, PlcSignals, Result
from .recipes import RecipeBook
from .reject import RejectScheduler
from .triggers import FunctionGrabber, SourceGrabber, TriggerHub, TriggerRefused


class PlcEncoder:
    """Encoder counts the PLC writes into its registers (32-bit, wrapping), unwrapped."""

    def __init__(self, signals):
        self.signals, self.last, self.total = signals, None, 0

    def count(self) -> int:
        raw = self.signals.encoder
        if self.last is not None:
            self.total += (raw - self.last) % (1 << 32)
        self.last = raw
        return self.total


def uses_gpio(cfg) -> bool:
    """Whether the line config names any GPIO pin (only then is the GPIO backend opened)."""
    reject = cfg.reject
    return bool(cfg.trigger_input or (reject and (reject.output or (reject.encoder and reject.encoder.source == "gpio"))))


class LineService:
    def __init__(self, server, grabber=None, clock: Clock | None = None, gpio=None):
        cfg = server.cfg.line
        if cfg is None:
            raise LinesideError(f"station {server.station} has no `line` section: add one (docs/line-integration.md)")
        if not cfg.recipes:
            raise LinesideError("the station's line section has no recipes: add at least one "
                                "(id, name, bundle) under line.recipes")
        self.server, self.cfg, self.station = server, cfg, server.station
        self.clock = clock or Clock()
        self.gpio = gpio or (open_gpio(cfg.gpio_backend, self.clock) if uses_gpio(cfg) else SimGpio(self.clock))
        self.timers = Timers(self.clock)  # its thread runs only when something has deadlines
        self.signals = PlcSignals(cfg.result_buffer, capacity=cfg.max_in_flight)
        self.journal = LineJournal(server.cfg.journal.path, self.station)
        self.metrics = LineMetrics(server.telemetry.registry, self.station)
        self.signals.on_error = self._error_raised
        self.live = LiveView(cfg.drift)
        self.reject = self._reject()
        self.trigger_input = (DebouncedInput(self.gpio, cfg.trigger_input.pin, cfg.trigger_input.debounce_ms,
                                             self.clock, cfg.trigger_input.active_high, self.timers,
                                             on_trigger=lambda t: self.trigger("gpio", "gpio", at=t))
                              if cfg.trigger_input else None)
        if grabber is None:
            if cfg.camera is None:
                raise LinesideError("line.camera is missing: give the source the line service grabs from")
            grabber = SourceGrabber(cfg.camera.source)
        elif callable(grabber):
            grabber = FunctionGrabber(grabber)
        self.hub = TriggerHub(server, cfg, grabber, self.signals, self.clock, self.metrics, self._mode,
                              self.reject, self._grab_failed)
        self.recipes = RecipeBook(server, cfg, self.signals, self.journal, self.hub)
        first = cfg.recipe or cfg.recipes[0].id
        try:
            self.recipes.switch(first, "startup")  # before the server scores anything
        except PlcError as exc:  # a refused bundle at start-up is the user's to fix, not a traceback
            raise LinesideError(f"station {self.station} cannot start with recipe {first}: {exc.detail}") from None
        self.channels: list = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        server.listeners.append(self.on_verdict)
        server.hooks.append(self)
        server.commands.update(recipe=self._cmd_recipe, trigger=self._cmd_trigger, line=self._cmd_line)

    def _reject(self):
        rc = self.cfg.reject
        if rc is None:
            return None
        encoder = None
        if rc.encoder is not None:  # every new count looks at the deadlines counted in encoder steps
            if rc.encoder.source == "gpio":
                encoder = EdgeCounter(self.gpio, rc.encoder.pin, on_count=lambda: self.reject.tick())
            else:
                encoder = PlcEncoder(self.signals)
                self.signals.on_encoder = lambda: self.reject.tick()
        self.encoder = encoder

        def late(p):
            self.metrics.late.labels(self.station).inc()
            self.signals.count("LATE")
            self.journal.event("reject_late", "reject", inspection=p.inspection_id)  # the journal shows LATE parts
            log_event("reject_late", station=self.station, inspection=p.inspection_id)

        return RejectScheduler(rc, self.gpio, self.clock, encoder, on_late=late,
                               on_fire=lambda p: self.metrics.rejects.labels(self.station).inc(), timers=self.timers)

    def _mode(self) -> str:
        return self.recipes.active.trigger if self.recipes.active else "any"

    # ---- lifecycle (server hooks) --------------------------------------------------------
    def start(self) -> None:
        self.hub.start()
        if self.reject or self.trigger_input:  # deadlines to keep; otherwise no I/O thread at all
            self.timers.start()
        if any(r.trigger == "free-run" for r in self.cfg.recipes):
            t = Loop("line-free-run", lambda: self.hub.free_run(self.stop), stopping=self.stop)  # restarted if it raises
            t.start()
            self.threads.append(t)
        self.server.loops.extend(self.threads)
        from .channels import start_channels

        self.channels = start_channels(self)
        self.signals.ready = True
        log_event("line_ready", station=self.station, recipe=self.signals.recipe_id,
                  channels=[type(c).__name__ for c in self.channels])

    def close(self) -> None:
        self.signals.ready = False
        self.stop.set()
        self.timers.close()
        self.hub.close()
        for t in self.threads:
            t.join(timeout=5)
        for channel in reversed(self.channels):
            try:
                channel.close()
            except Exception as exc:  # noqa: BLE001  one channel failing to stop must not keep the others up
                log_event("line_channel_close_failed", channel=type(channel).__name__, error=repr(exc))
        if self.reject:
            self.reject.close()
        self.gpio.close()
        self.journal.close()

    def reloading(self, bundle):
        """`ctl reload` is loading ``bundle`` for the active recipe: its score scale is published after the swap."""
        scale = ScoreScale.of_bundle(bundle)  # a bad score_normalization refuses the reload here
        return lambda: self.recipes.use_scale(scale)

    # ---- requests (PLC, OPC UA, ctl, page) -----------------------------------------------
    def trigger(self, source: str, who: str, plc: bool = False, at: float | None = None) -> int | None:
        """Trigger one inspection (``plc``: from the PLC handshake; ``at``: the edge's time).

        A refused trigger sets the error code, is journaled with who and why, and its part
        (it has an id all the same) is decided DROPPED at once: rejected at its deadline and,
        for a PLC trigger, answered in the handshake. Returns the id, or None when refused."""
        try:
            return self.hub.trigger(source, who, plc, at).id
        except TriggerRefused as exc:
            self._refused(exc)
            return None

    def _refused(self, exc: TriggerRefused) -> None:
        insp = exc.inspection
        self.signals.set_error(exc.code, exc.detail)
        reason = f"not inspected: {exc.code.name}: {exc.detail}"
        self._decided_without_verdict(insp, "DROPPED", reason)
        self.journal.event("trigger_refused", insp.who, source=insp.source, inspection=insp.id,
                           recipe=insp.recipe_id, error=exc.code.name, detail=exc.detail)
        log_event("trigger_refused", station=self.station, who=insp.who, inspection=insp.id, error=exc.code.name)

    def _decided_without_verdict(self, insp, status: str, reason: str) -> None:
        """A part that gets no verdict from the model (refused, camera failed): fail-safe outcome."""
        if self.reject:
            self.reject.decided(insp.id, status)
        self.signals.push_result(Result(insp.id, status, None, insp.recipe_id, reason=reason), handshake=insp.plc)
        self._show(insp.id, {"status": status, "reason": reason, "recipe": insp.recipe_id}, insp.image, None)

    def select_recipe(self, recipe_id, who: str, wait: bool = False) -> dict:
        """Switch recipes (in the background unless ``wait``); bad ids set the error code and raise PlcError."""
        try:
            if wait:
                return self.recipes.switch(recipe_id, who)
            self.recipes.switch_async(recipe_id, who, self._switch_failed)
            return {"recipe": recipe_id, "switching": True}
        except PlcError as exc:
            self._switch_failed(exc, who, recipe_id)
            raise

    def _switch_failed(self, exc: PlcError, who: str, recipe_id) -> None:
        # Journaled before the PLC sees the error code: whoever reads the code finds the refusal in the audit.
        self.journal.event("recipe_refused", who, to=recipe_id, error=exc.code.name, detail=exc.detail)
        self.signals.set_error(exc.code, exc.detail)

    def acknowledge_alarm(self, who: str) -> dict | None:
        alarm = self.live.acknowledge()
        code = int(self.signals.error_code)
        self.signals.reset_error()
        self.journal.event("alarm_ack", who, alarm=alarm, error_code=code)
        return alarm

    def reset_shift(self, who: str) -> dict:
        """Start a new shift's counters on the page; the ended shift's counts are journaled."""
        ended = self.live.reset_shift()
        self.journal.event("shift_reset", who, **ended)
        return ended

    def review(self, verdict_id: int, confirmed: bool | None, who: str, note: str = "") -> dict:
        """An operator's judgement of a verdict (journal.review: sets confirmed, journals who)."""
        from ..journal import review

        verdict = review(self.server.cfg.journal.path, verdict_id, confirmed, who, note)
        self.live.reviewed(verdict_id, confirmed)
        return verdict

    def _error_raised(self, code: ErrorCode, detail: str) -> None:
        self.metrics.plc_errors.labels(self.station, code.name).inc()
        log_event("line_error", station=self.station, code=int(code), name=code.name, detail=detail)

    def _grab_failed(self, insp, reason: str) -> None:
        self.signals.set_error(ErrorCode.CAMERA_FAILED, reason)
        self._decided_without_verdict(insp, "ERROR", f"camera: {reason}")
        self.journal.event("grab_failed", insp.who, source=insp.source, inspection=insp.id, reason=reason)

    # ---- the verdict stream ---------------------------------------------------------------
    def on_verdict(self, item, event: dict) -> None:
        tag = (event.get("tags") or {}).get("inspection")
        if tag is None or not tag.isdigit():
            return  # a frame from another camera: not a triggered part
        insp = self.hub.decided(int(tag))
        if insp is None:
            return
        late = bool(self.reject.decided(insp.id, event["status"])) if self.reject else False
        scale = self.recipes.scale(insp.recipe_id)  # one published scale on every channel
        score, threshold = scale(event.get("score")), scale(event.get("threshold"))
        self.signals.push_result(Result(insp.id, event["status"], score, insp.recipe_id, late, event.get("id"),
                                        threshold, event.get("reason") or ""), handshake=insp.plc)
        image = item.image if item.image is not None else insp.image
        self._show(insp.id, {**event, "score": score, "threshold": threshold, "recipe": insp.recipe_id, "late": late},
                   image, item.anomaly_map, item.roi)

    def _show(self, inspection_id: int, event: dict, image, anomaly_map, roi=None) -> None:
        alarm = self.live.update(inspection_id, event, image, anomaly_map, roi)
        if alarm is not None:  # latched once; later NG parts only count until someone acknowledges
            self.journal.event("alarm", "line", inspection=inspection_id, status=alarm["status"], reason=alarm["reason"])
        self._wake_channels()

    def _wake_channels(self) -> None:
        for channel in self.channels:
            wake = getattr(channel, "wake", None)
            if wake is not None:
                wake.set()

    # ---- control commands (lineside ctl) --------------------------------------------------
    def _cmd_recipe(self, server, request) -> dict:
        try:
            return {"ok": True, **self.select_recipe(request.get("id"), str(request.get("who", "ctl")), wait=True)}
        except PlcError as exc:
            return {"ok": False, "error": str(exc)}

    def _cmd_trigger(self, server, request) -> dict:
        inspection = self.trigger("network", f"ctl:{request.get('who', '?')}")
        if inspection is None:
            return {"ok": False, "error": self.signals.error_detail, "error_code": int(self.signals.error_code)}
        return {"ok": True, "inspection": inspection}

    def _cmd_line(self, server, request) -> dict:
        snap = self.signals.snapshot()
        snap["history"] = [r.__dict__ for r in snap["history"]]
        return {"ok": True, "signals": snap, "recipes": {r.id: r.name for r in self.cfg.recipes}}
