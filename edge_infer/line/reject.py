"""Timed reject: fire the ejector when the judged part reaches it, never let a part through unjudged.

Each inspection is armed at its trigger with a deadline: trigger time + ``delay_ms``, or the
encoder count at the trigger + ``encoder_counts``. At the deadline:

- the verdict is in and rejects (NG, and by default ERROR and DROPPED too): pulse the output;
- the verdict is in and is OK: nothing;
- the verdict is not in: pulse anyway (fail-safe) and count the part LATE. Its verdict,
  when it comes, is still journaled and reported, flagged late.

``tick()`` does the work. With ``timers`` (the service's) it is run at each deadline and at
each pulse's end, and on every encoder count: no polling. Tests without timers call it after
moving a simulated clock. Overlapping pulses merge into one longer pulse.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .config import RejectConfig
from .hw import Clock, Gpio


@dataclass
class Pending:
    inspection_id: int
    due_time: float | None
    due_count: int | None
    status: str | None = None
    done: bool = False
    late: bool = False
    fired_at: float | None = None
    extra: dict = field(default_factory=dict)


class RejectScheduler:
    SIM_PIN = -1  # the output "pin" when no output is configured (simulation only)

    def __init__(self, cfg: RejectConfig, gpio: Gpio, clock: Clock, encoder=None, on_late=None, on_fire=None,
                 timers=None):
        self.cfg, self.gpio, self.clock, self.encoder, self.timers = cfg, gpio, clock, encoder, timers
        self.on_late, self.on_fire = on_late, on_fire
        self.pin = cfg.output.pin if cfg.output else self.SIM_PIN
        self.on_level = cfg.output.active_high if cfg.output else True
        gpio.setup_output(self.pin, not self.on_level)
        self.pending: dict[int, Pending] = {}
        self.lock = threading.Lock()
        self.off_at: float | None = None
        self.fired = self.late = 0

    def position(self) -> int:
        return self.encoder.count() if self.encoder is not None else 0

    def arm(self, inspection_id: int, trigger_time: float, trigger_count: int | None = None) -> Pending:
        if self.cfg.delay_ms is not None:
            p = Pending(inspection_id, trigger_time + self.cfg.delay_ms / 1e3, None)
        else:
            start = self.position() if trigger_count is None else trigger_count
            p = Pending(inspection_id, None, start + self.cfg.encoder_counts)
        with self.lock:
            self.pending[inspection_id] = p
        if self.timers is not None and p.due_time is not None:
            self.timers.at(p.due_time, self.tick)
        return p

    def decided(self, inspection_id: int, status: str) -> bool | None:
        """Record a verdict. Returns True when it came after its deadline (already rejected LATE)."""
        with self.lock:
            p = self.pending.get(inspection_id)
            if p is None:
                return None
            p.status = status
            if p.done:
                del self.pending[inspection_id]
                return True
            return False

    def tick(self) -> None:
        now, pos = self.clock.now(), self.position()
        fire = []
        with self.lock:
            for p in list(self.pending.values()):
                due = (p.due_time is not None and now >= p.due_time) or (p.due_count is not None and pos >= p.due_count)
                if not due or p.done:
                    continue
                p.done = True
                if p.status is None:
                    p.late = True
                    fire.append(p)  # fail-safe: an unjudged part is rejected; its verdict is awaited
                else:
                    del self.pending[p.inspection_id]
                    if p.status in self.cfg.reject:
                        fire.append(p)
        for p in fire:
            self._pulse(now)
            p.fired_at = now
            self.fired += 1
            if p.late:
                self.late += 1
                if self.on_late:
                    self.on_late(p)
            if self.on_fire:
                self.on_fire(p)
        if self.off_at is not None and now >= self.off_at:
            self.gpio.write(self.pin, not self.on_level)
            self.off_at = None

    def _pulse(self, now: float) -> None:
        if self.off_at is None:
            self.gpio.write(self.pin, self.on_level)
        self.off_at = max(self.off_at or 0.0, now + self.cfg.pulse_ms / 1e3)
        if self.timers is not None:
            self.timers.at(self.off_at, self.tick)

    def close(self) -> None:
        self.gpio.write(self.pin, not self.on_level)
