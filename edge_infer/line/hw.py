"""Clocks, GPIO and timers behind small interfaces, so the reject timing and the trigger
debounce run the same code on a Jetson and in tests (a simulated clock and GPIO that record
every write).

Nothing polls. Inputs report edges (Jetson.GPIO's ``add_event_detect``; the simulated GPIO
when a test sets a level), each with its time on the line clock, and ``Timers`` runs
deadlines (debounce, reject, end of pulse) from one thread that sleeps until the next one.
A station with no GPIO configured runs no I/O thread at all.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from abc import ABC, abstractmethod

from ..errors import LinesideError


class Clock:
    """Monotonic seconds; the real one."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, cond: threading.Condition, deadline: float | None) -> None:
        """Wait on ``cond`` (held) until notified or the clock reaches ``deadline``."""
        cond.wait(None if deadline is None else max(0.0, deadline - self.now()))


class SimClock(Clock):
    """A clock that moves only when told to (tests, simulations)."""

    def __init__(self, start: float = 0.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, 0.001))  # the thread yields; simulated time moves only by advance()

    def wait(self, cond: threading.Condition, deadline: float | None) -> None:
        cond.wait(0.001)  # simulated time moves by advance(), which notifies no one: look again soon


class Gpio(ABC):
    """Digital lines by number. ``read`` returns True when the line is high."""

    @abstractmethod
    def setup_output(self, pin: int, level: bool) -> None:
        """Make ``pin`` an output, driven to ``level``."""

    @abstractmethod
    def setup_input(self, pin: int) -> None:
        """Make ``pin`` an input."""

    @abstractmethod
    def write(self, pin: int, level: bool) -> None:
        """Drive output ``pin`` high (True) or low."""

    @abstractmethod
    def read(self, pin: int) -> bool:
        """The level of input ``pin``: True when high."""

    @abstractmethod
    def watch(self, pin: int, on_edge) -> None:
        """Call ``on_edge(level, t)`` on every change of input ``pin`` (t: the edge on the line clock)."""

    def close(self) -> None:
        """Release what it holds; the default holds nothing."""


class SimGpio(Gpio):
    """Inputs set by the test; every output write recorded as (clock time, pin, level)."""

    def __init__(self, clock: Clock):
        self.clock, self.levels, self.writes = clock, {}, []
        self.lock = threading.Lock()
        self.watchers: dict[int, list] = {}

    def setup_output(self, pin: int, level: bool) -> None:
        self.levels[pin] = level

    def setup_input(self, pin: int) -> None:
        self.levels.setdefault(pin, False)

    def write(self, pin: int, level: bool) -> None:
        with self.lock:
            self.levels[pin] = level
            self.writes.append((self.clock.now(), pin, level))

    def read(self, pin: int) -> bool:
        return self.levels.get(pin, False)

    def watch(self, pin: int, on_edge) -> None:
        self.watchers.setdefault(pin, []).append(on_edge)

    def set_input(self, pin: int, level: bool) -> None:
        """Drive an input as the outside world would: an edge, timestamped now, reaches its watchers."""
        changed = self.levels.get(pin, False) != level
        self.levels[pin] = level
        if changed:
            t = self.clock.now()
            for on_edge in self.watchers.get(pin, ()):
                on_edge(level, t)

    def pulses(self, pin: int) -> list[tuple[float, float]]:
        """(rise time, fall time or None) of each high pulse written to ``pin``."""
        out, start = [], None
        with self.lock:
            writes = list(self.writes)
        for t, p, level in writes:
            if p != pin:
                continue
            if level and start is None:
                start = t
            elif not level and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, None))
        return out


class JetsonGpio(Gpio):
    """NVIDIA's Jetson.GPIO, BOARD numbering (the 40-pin header's pin numbers)."""

    def __init__(self):
        try:
            from Jetson import GPIO
        except (ImportError, RuntimeError) as exc:
            raise LinesideError(
                f"line.gpio_backend jetson needs Jetson.GPIO, which is not usable here ({exc}): on a Jetson "
                "`pip install Jetson.GPIO` and add the user to the gpio group; elsewhere set gpio_backend: sim"
            ) from None
        self.g = GPIO
        GPIO.setmode(GPIO.BOARD)
        self.pins: set[int] = set()

    def setup_output(self, pin: int, level: bool) -> None:
        self.g.setup(pin, self.g.OUT, initial=self.g.HIGH if level else self.g.LOW)
        self.pins.add(pin)

    def setup_input(self, pin: int) -> None:
        self.g.setup(pin, self.g.IN)
        self.pins.add(pin)

    def write(self, pin: int, level: bool) -> None:
        self.g.output(pin, self.g.HIGH if level else self.g.LOW)

    def read(self, pin: int) -> bool:
        return bool(self.g.input(pin))

    def watch(self, pin: int, on_edge) -> None:
        """Jetson.GPIO's edge events (its own thread, woken by the kernel): no polling loop. The
        callback carries no timestamp, so the edge is stamped on entry to the callback."""
        def edge(channel):
            t = time.monotonic()
            on_edge(bool(self.g.input(channel)), t)

        self.g.add_event_detect(pin, self.g.BOTH, callback=edge)

    def close(self) -> None:
        for pin in sorted(self.pins):
            try:
                self.g.remove_event_detect(pin)
            except (RuntimeError, ValueError):
                pass  # an output, or a pin never watched
        if self.pins:
            self.g.cleanup(sorted(self.pins))


def open_gpio(backend: str, clock: Clock) -> Gpio:
    return SimGpio(clock) if backend == "sim" else JetsonGpio()


class Timers:
    """Callbacks at line-clock times, run by one thread that sleeps until the next one is due.

    ``at(due, fn)`` from any thread; ``run_due()`` runs what is due now (the thread calls it;
    tests with a simulated clock may call it themselves after ``advance``).
    """

    def __init__(self, clock: Clock):
        self.clock = clock
        self.cond = threading.Condition()
        self.heap: list = []
        self.order = itertools.count()
        self.stopping = False
        self.thread: threading.Thread | None = None

    def at(self, due: float, fn) -> None:
        with self.cond:
            heapq.heappush(self.heap, (due, next(self.order), fn))
            self.cond.notify()

    def run_due(self) -> None:
        while True:
            with self.cond:
                if not self.heap or self.heap[0][0] > self.clock.now():
                    return
                _, _, fn = heapq.heappop(self.heap)
            fn()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="line-timers", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            self.run_due()
            with self.cond:
                if self.stopping:
                    return
                if not self.heap or self.heap[0][0] > self.clock.now():
                    self.clock.wait(self.cond, self.heap[0][0] if self.heap else None)

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not None:
            self.thread.join(timeout=5)


class DebouncedInput:
    """An input line whose activation counts once it has held for ``debounce_ms``.

    Driven by the line's edge events: an edge to active starts the debounce; another edge
    before it ends cancels it (contact bounce, a glitch). An accepted activation calls
    ``on_trigger(t)`` with ``t`` the time of its first edge, so the part's time (and its
    reject deadline) is the edge's, not the moment the debounce ended.
    """

    def __init__(self, gpio: Gpio, pin: int, debounce_ms: float, clock: Clock, active_high: bool = True,
                 timers: Timers | None = None, on_trigger=None):
        self.gpio, self.pin, self.debounce_s, self.clock, self.active_high = gpio, pin, debounce_ms / 1e3, clock, active_high
        self.timers, self.on_trigger = timers, on_trigger
        self.lock = threading.Lock()
        gpio.setup_input(pin)
        self.state = self.candidate = gpio.read(pin) == active_high  # accepted level, level since the last edge
        self.since, self.generation = clock.now(), 0
        gpio.watch(pin, self._edge)

    def _edge(self, level: bool, t: float) -> None:
        with self.lock:
            self.candidate, self.since = level == self.active_high, t
            self.generation += 1
            generation = self.generation
        if self.debounce_s <= 0 or self.timers is None:
            self._settle(generation)
        else:
            self.timers.at(t + self.debounce_s, lambda: self._settle(generation))

    def _settle(self, generation: int) -> None:
        with self.lock:
            if generation != self.generation or self.candidate == self.state:
                return  # another edge came within the debounce time, or nothing changed
            self.state, since = self.candidate, self.since
        if self.state and self.on_trigger is not None:
            self.on_trigger(since)


class EdgeCounter:
    """Counts rising edges of an input line (an encoder on a GPIO pin), from its edge events.

    Each edge costs a Python callback, so it suits slow encoders (a few hundred Hz); a fast
    one belongs on the PLC (encoder source ``plc``). ``on_count`` hears every new count.
    """

    def __init__(self, gpio: Gpio, pin: int, on_count=None):
        self.gpio, self.pin, self.on_count = gpio, pin, on_count
        gpio.setup_input(pin)
        self.value = 0
        gpio.watch(pin, self._edge)

    def _edge(self, level: bool, t: float) -> None:
        if level:
            self.value += 1
            if self.on_count is not None:
                self.on_count()

    def count(self) -> int:
        return self.value
