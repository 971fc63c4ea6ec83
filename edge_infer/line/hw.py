"""Clocks and GPIO behind small interfaces, so the reject timing and the trigger debounce run
the same code on a Jetson and in tests (a simulated clock and GPIO that record every write)."""

from __future__ import annotations

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

    def close(self) -> None:
        """Release what it holds; the default holds nothing."""


class SimGpio(Gpio):
    """Inputs set by the test; every output write recorded as (clock time, pin, level)."""

    def __init__(self, clock: Clock):
        self.clock, self.levels, self.writes = clock, {}, []
        self.lock = threading.Lock()

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

    def set_input(self, pin: int, level: bool) -> None:
        self.levels[pin] = level

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

    def close(self) -> None:
        if self.pins:
            self.g.cleanup(sorted(self.pins))


def open_gpio(backend: str, clock: Clock) -> Gpio:
    return SimGpio(clock) if backend == "sim" else JetsonGpio()


class DebouncedInput:
    """A polled input line: a change counts once it has held for ``debounce_ms``.

    ``poll()`` returns True once per accepted activation (inactive → active), so contact
    bounce or a glitch shorter than the debounce time never makes a second trigger.
    """

    def __init__(self, gpio: Gpio, pin: int, debounce_ms: float, clock: Clock, active_high: bool = True):
        self.gpio, self.pin, self.debounce_s, self.clock, self.active_high = gpio, pin, debounce_ms / 1e3, clock, active_high
        gpio.setup_input(pin)
        self.state = self._active()  # accepted level
        self.candidate, self.since = self.state, clock.now()

    def _active(self) -> bool:
        return self.gpio.read(self.pin) == self.active_high

    def poll(self) -> bool:
        level, now = self._active(), self.clock.now()
        if level != self.candidate:
            self.candidate, self.since = level, now
        if self.candidate != self.state and now - self.since >= self.debounce_s:
            self.state = self.candidate
            return self.state
        return False


class EdgeCounter:
    """Counts rising edges of a polled line (an encoder on a GPIO pin).

    Polled from the line's I/O loop (about 1 kHz), so it suits slow encoders; a fast one
    belongs on the PLC (encoder source ``plc``).
    """

    def __init__(self, gpio: Gpio, pin: int):
        self.gpio, self.pin = gpio, pin
        gpio.setup_input(pin)
        self.last, self.value = gpio.read(pin), 0

    def poll(self) -> None:
        level = self.gpio.read(self.pin)
        if level and not self.last:
            self.value += 1
        self.last = level

    def count(self) -> int:
        return self.value
