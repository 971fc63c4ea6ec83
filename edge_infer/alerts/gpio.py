"""GPIO sink: pulse a line (reject gate, stack light) on a Jetson for each NG verdict.

Uses NVIDIA's Jetson.GPIO. A pulse for a verdict older than ``max_age_ms`` (after a
retry or a restart) is skipped and noted: by then the part has left the gate, and firing
would reject the wrong one.
"""

from __future__ import annotations

import time

from ..errors import LinesideError
from ..station import GpioConfig
from .sink import Sink


class GpioSink(Sink):
    name = "gpio"

    def __init__(self, cfg: GpioConfig):
        try:
            import Jetson.GPIO as GPIO
        except (ImportError, RuntimeError) as exc:
            raise LinesideError(
                f"the station's alerts.gpio needs Jetson.GPIO, which is not usable here ({exc}): on a Jetson, "
                "`pip install Jetson.GPIO` and add the user to the gpio group; elsewhere remove alerts.gpio"
            ) from None
        self.gpio, self.cfg = GPIO, cfg
        GPIO.setmode(GPIO.BOARD if cfg.numbering == "BOARD" else GPIO.BCM)
        self.on, self.off = (GPIO.HIGH, GPIO.LOW) if cfg.active_high else (GPIO.LOW, GPIO.HIGH)
        GPIO.setup(cfg.pin, GPIO.OUT, initial=self.off)

    def deliver(self, verdict: dict, images) -> str | None:
        age_ms = (time.time() - verdict["decided_at"]) * 1e3
        if age_ms > self.cfg.max_age_ms:
            return f"skipped: {age_ms:.0f} ms old, over max_age_ms {self.cfg.max_age_ms:.0f}"
        self.gpio.output(self.cfg.pin, self.on)
        time.sleep(self.cfg.pulse_ms / 1e3)
        self.gpio.output(self.cfg.pin, self.off)
        return f"pulsed pin {self.cfg.pin} for {self.cfg.pulse_ms} ms"

    def close(self) -> None:
        self.gpio.cleanup(self.cfg.pin)
