"""Timed reject on a simulated clock and GPIO, and the debounced trigger input."""

import pytest
from line_helpers import gray, line_station, make_tiny_bundle, start_line, wait_until

from edge_infer.journal import read_verdicts
from edge_infer.line.config import RejectConfig
from edge_infer.line.hw import DebouncedInput, EdgeCounter, SimClock, SimGpio, Timers
from edge_infer.line.plc_signals import ErrorCode
from edge_infer.line.reject import RejectScheduler


def scheduler(**cfg):
    clock = SimClock()
    gpio = SimGpio(clock)
    late = []
    cfg = RejectConfig(output={"pin": 12}, pulse_ms=20, **cfg)
    return clock, gpio, RejectScheduler(cfg, gpio, clock, on_late=late.append), late


def run_until(clock, sched, t, step=0.001):
    while clock.now() < t - 1e-9:
        clock.advance(step)
        sched.tick()


def test_reject_fires_at_trigger_time_plus_delay_for_ng_and_not_for_ok():
    clock, gpio, sched, late = scheduler(delay_ms=300)
    sched.arm(1, trigger_time=0.0)
    clock.advance(0.010)
    sched.arm(2, trigger_time=0.010)
    sched.decided(1, "NG")
    sched.decided(2, "OK")
    run_until(clock, sched, 0.299)
    assert gpio.pulses(12) == []  # not before its time
    run_until(clock, sched, 0.400)
    (rise, fall), = gpio.pulses(12)
    assert rise == pytest.approx(0.300, abs=1e-6) and fall == pytest.approx(0.320, abs=1e-6)
    assert late == [] and sched.late == 0


def test_a_verdict_not_ready_by_the_deadline_rejects_fail_safe_and_counts_late():
    clock, gpio, sched, late = scheduler(delay_ms=100)
    sched.arm(7, trigger_time=0.0)
    run_until(clock, sched, 0.150)
    assert [r for r, _ in gpio.pulses(12)] == [pytest.approx(0.100, abs=1e-6)]
    assert [p.inspection_id for p in late] == [7] and sched.late == 1
    assert sched.decided(7, "OK") is True  # the verdict, when it comes, is known to be late
    run_until(clock, sched, 0.300)
    assert len(gpio.pulses(12)) == 1  # and nothing fires twice


def test_error_and_dropped_reject_by_default_and_encoder_distance_counts_pulses():
    clock = SimClock()
    gpio = SimGpio(clock)
    encoder = EdgeCounter(gpio, 5)
    cfg = RejectConfig(encoder_counts=3, encoder={"source": "gpio", "pin": 5}, pulse_ms=10)
    sched = RejectScheduler(cfg, gpio, clock, encoder)
    sched.arm(1, 0.0)
    sched.decided(1, "ERROR")
    for i in range(3):
        assert gpio.pulses(RejectScheduler.SIM_PIN) == []
        gpio.set_input(5, True)  # an edge event per change: nothing polls the pin
        gpio.set_input(5, False)
        clock.advance(0.5)
        sched.tick()
    assert [r for r, _ in gpio.pulses(RejectScheduler.SIM_PIN)] == [1.5]  # at the third count, not by time


def test_debounce_ignores_bounce_and_glitches():
    clock = SimClock()
    gpio = SimGpio(clock)
    timers = Timers(clock)
    fired = []
    DebouncedInput(gpio, 7, debounce_ms=5, clock=clock, timers=timers, on_trigger=fired.append)

    def step(level, ms):
        gpio.set_input(7, level)
        for _ in range(ms):
            clock.advance(0.001)
            timers.run_due()

    step(True, 2)  # a 2 ms glitch
    step(False, 10)
    for _ in range(4):  # contact bounce, then a steady press
        step(True, 1)
        step(False, 1)
    press = clock.now()
    step(True, 20)
    step(False, 20)
    assert fired == [pytest.approx(press, abs=1e-9)]  # once, stamped at the edge, not when the debounce ended


def test_late_verdict_through_the_service_is_rejected_and_counted(tmp_path):
    clock = SimClock(100.0)
    gpio = SimGpio(clock)
    cfg = line_station(tmp_path, {"reject": {"delay_ms": 250, "pulse_ms": 30, "output": {"pin": 12}}})
    server, service = start_line(cfg, lambda: gray(20), clock=clock, gpio=gpio)  # OK parts
    try:
        first = service.trigger("network", "test")
        assert wait_until(lambda: service.signals.counters["OK"] == 1)
        clock.advance(0.3)
        assert wait_until(lambda: clock.now() >= 100.3 and not service.reject.pending)
        assert gpio.pulses(12) == []  # an OK part is let through
        with server.model_lock:  # the model is busy: this verdict cannot be in time
            second = service.trigger("network", "test")
            clock.advance(0.26)
            pulses = wait_until(lambda: gpio.pulses(12))
            assert pulses[0][0] == pytest.approx(100.56, abs=1e-6)
            assert service.signals.counters["LATE"] == 1
        assert wait_until(lambda: service.signals.counters["OK"] == 2)
        head = next(r for r in service.signals.snapshot()["history"] if r.inspection_id == second)
        assert head.late and head.status == "OK" and first == 1 and second == 2
        metric = server.telemetry.registry.get_sample_value("lineside_late_rejects_total", {"station": "line1"})
        assert metric == 1
        assert [e["inspection"] for e in service.journal.events("reject_late")] == [second]
    finally:
        server.close()


def test_gpio_trigger_free_run_and_disabled_sources_through_the_service(tmp_path):
    clock = SimClock(5.0)
    gpio = SimGpio(clock)
    bundle = str(make_tiny_bundle(tmp_path / "b"))
    recipes = [{"id": 1, "name": "gpio-part", "bundle": bundle, "trigger": "gpio"},
               {"id": 2, "name": "stream", "bundle": bundle, "trigger": "free-run"}]
    cfg = line_station(tmp_path, {"trigger_input": {"pin": 7, "debounce_ms": 5},
                                  "camera": {"source": "unused", "free_run_fps": 50}}, recipes=recipes)
    server, service = start_line(cfg, lambda: gray(20), clock=clock, gpio=gpio)
    try:
        assert service.trigger("network", "ctl:plc") is None  # a gpio recipe does not inspect network triggers
        assert service.signals.error_code == ErrorCode.TRIGGER_DISABLED
        gpio.set_input(7, True)  # a press held past the debounce time: one part
        clock.advance(0.006)
        assert wait_until(lambda: service.signals.counters["OK"] == 1)
        clock.advance(0.1)
        assert service.signals.counters["triggers"] == 2  # held, not pressed again
        # the refused network trigger was a part too: id 1, DROPPED (rejected), journaled with who
        assert service.signals.result(1).status == "DROPPED" and service.signals.result(2).status == "OK"
        refused, = service.journal.events("trigger_refused")
        assert (refused["who"], refused["inspection"], refused["error"]) == ("ctl:plc", 1, "TRIGGER_DISABLED")
        service.select_recipe(2, "test", wait=True)  # free-run: parts without any trigger
        assert wait_until(lambda: service.signals.counters["OK"] >= 5)
    finally:
        server.close()
    rows = read_verdicts(cfg.journal.path)
    assert rows[0]["detail"]["tags"] == {"inspection": "2", "recipe": "1", "trigger": "gpio"}
    assert {r["detail"]["tags"]["trigger"] for r in rows[1:]} == {"free-run"}
    ids = [int(r["detail"]["tags"]["inspection"]) for r in rows]
    assert ids == sorted(set(ids))  # one verdict per inspection id


def test_no_gpio_configured_runs_no_io_thread(tmp_path):
    """A station without trigger input, reject or encoder pins opens no GPIO and polls nothing."""
    import threading

    cfg = line_station(tmp_path, {"gpio_backend": "jetson"})  # Jetson.GPIO is not here: it must not be opened
    server, service = start_line(cfg, lambda: gray(20))
    try:
        assert service.trigger("network", "test") == 1
        assert wait_until(lambda: service.signals.counters["OK"] == 1)
        names = {t.name for t in threading.enumerate()}
        assert not names & {"line-io", "line-timers", "line-free-run"}, names
    finally:
        server.close()


def test_a_gpio_part_is_timed_from_its_edge_and_rejected_when_refused(tmp_path):
    """The reject deadline counts from the edge (not from when the debounce ended), and a part
    that could not be inspected (the station is full) is rejected all the same."""
    clock = SimClock(10.0)
    gpio = SimGpio(clock)
    cfg = line_station(tmp_path, {"trigger_input": {"pin": 7, "debounce_ms": 5}, "max_in_flight": 1,
                                  "reject": {"delay_ms": 100, "pulse_ms": 10, "output": {"pin": 12}}})
    server, service = start_line(cfg, lambda: gray(20), clock=clock, gpio=gpio)  # OK parts
    try:
        with server.model_lock:  # the first part stays in flight: the second is refused
            gpio.set_input(7, True)
            clock.advance(0.006)
            assert wait_until(lambda: service.signals.counters["triggers"] == 1)
            gpio.set_input(7, False)
            clock.advance(0.010)
            assert wait_until(lambda: not service.trigger_input.state)  # the release has settled
            second_edge = clock.now()
            gpio.set_input(7, True)
            clock.advance(0.006)
            assert wait_until(lambda: service.signals.counters["DROPPED"] == 1)
        assert wait_until(lambda: service.signals.counters["OK"] == 1)
        clock.advance(second_edge + 0.100 - clock.now())  # to the refused part's deadline, from its edge
        pulses = wait_until(lambda: gpio.pulses(12))
        assert [r for r, _ in pulses] == [pytest.approx(second_edge + 0.100, abs=1e-6)]  # the refused part only
        refused, = service.journal.events("trigger_refused")
        assert (refused["who"], refused["error"]) == ("gpio", "TRIGGER_WHILE_BUSY")
    finally:
        server.close()
