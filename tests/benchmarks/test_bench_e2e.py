"""bench e2e: the analysis on verdicts whose timings are known, the sweep's search, and a
short real run (server process + cameras) against the tiny bundle."""

import json

import pytest
from tiny_bundle import make_tiny_bundle

from benchmarks import e2e
from edge_infer.errors import LinesideError


def verdict(status, captured_at, compute_ms, total_ms, decided_after_ms):
    return {"status": status, "camera": "c", "captured_at": captured_at,
            "decided_at": captured_at + decided_after_ms / 1e3,
            "latency_ms": {"queue": 1.0, "decode": 2.0, "compute": compute_ms, "total": total_ms}}


def test_analyse_known_timings():
    # 10 frames captured at t = i; frame i's verdict arrives (10 + i) ms later, compute i ms.
    measured = {("c", i): float(i) for i in range(12)}
    verdicts = {("c", i): (i + (10 + i) / 1e3, verdict("OK" if i % 2 else "NG", float(i), float(i), 8.0 + i, 9 + i))
                for i in range(10)}
    verdicts[("c", 10)] = (10.5, {"status": "DROPPED", "reason": "queue full"})
    # frame 11 got no verdict at all: counted as missing
    r = e2e.analyse(fps=2.0, cameras=1, measured=measured, verdicts=verdicts, unsent=3, usage={"cpu": 1},
                    duration_s=5.0)
    assert r["status"] == "ok" and r["key"] == "1cam@2fps"
    assert r["counts"] == {"OK": 5, "NG": 5, "DROPPED": 1, "ERROR": 0}
    assert r["missing"] == 1 and r["unsent"] == 3 and r["frames"] == 12
    assert r["latency_ms"]["min"] == pytest.approx(10) and r["latency_ms"]["max"] == pytest.approx(19)
    assert r["latency_ms"]["p50"] == pytest.approx(14.5)
    assert r["decided_ms"]["p50"] == pytest.approx(13.5)
    assert r["throughput_ips"] == pytest.approx(10 / 5.0)
    assert r["stages_ms"]["compute"]["p50"] == pytest.approx(4.5)
    assert r["overhead_ms"]["e2e_p50_minus_compute_p50"] == pytest.approx(10.0)
    assert r["overhead_ms"]["where"]["transport"] == pytest.approx(2.0)  # e2e − server total, per frame
    assert r["overhead_ms"]["where"]["decode"] == pytest.approx(2.0)
    assert len(r["samples_ms"]["total"]) == 10


def test_analyse_with_nothing_scored_says_why():
    measured = {("c", 0): 0.0}
    verdicts = {("c", 0): (0.01, {"status": "ERROR", "reason": "no image threshold set"})}
    r = e2e.analyse(1.0, 1, measured, verdicts, 0, {}, 1.0)
    assert r["status"] == "failed" and "no image threshold" in r["reason"]


class FakeRunner:
    """Holds up to 7 fps per camera: above that p99 blows the budget."""

    def __init__(self):
        self.asked = []

    def trial(self, fps):
        self.asked.append(fps)
        p99 = 10.0 if fps <= 7 else 100.0
        return {"key": f"1cam@{fps:g}fps", "fps": fps, "offered_fps": fps, "status": "ok", "missing": 0,
                "unsent": 0, "counts": {"OK": 1, "NG": 0, "DROPPED": 0, "ERROR": 0}, "latency_ms": {"p99": p99}}


def test_sweep_brackets_the_highest_rate_that_holds():
    run = FakeRunner()
    results = e2e.sweep(run, 2.0, budget_ms=50)
    summary = e2e.sweep_summary(results, 50)
    assert run.asked[:4] == [2.0, 3.0, 4.5, 6.75]  # grows by 1.5 until a trial fails
    assert 6.75 <= summary["max_fps_per_camera"] <= 7
    run = FakeRunner()
    summary = e2e.sweep_summary(e2e.sweep(run, 40.0, budget_ms=50), 50)
    assert run.asked[:4] == [40.0, 20.0, 10.0, 5.0]  # halves until one holds
    assert 5 <= summary["max_fps_per_camera"] <= 7


def test_resolution_parsing():
    assert e2e.parse_resolution("1920x1080") == (1920, 1080)
    for bad in ("1920", "axb", "4x4", "9000x10"):
        with pytest.raises(LinesideError):
            e2e.parse_resolution(bad)


@pytest.mark.slow  # starts a server process: ~10-30 s on the shared 2-core CPU
def test_short_real_run_against_the_tiny_bundle(tmp_path, capsys):
    from lineside.cli import main

    bundle = make_tiny_bundle(tmp_path / "bundle")
    config = tmp_path / "station.yaml"
    config.write_text(f"station: bench-st\nbundle: {bundle}\njournal: {{path: {tmp_path / 'never.sqlite'}}}\n")
    out = tmp_path / "out"
    code = main(["bench", "e2e", str(config), "--cameras", "2", "--fps", "4", "--duration", "1.5", "--warmup", "0.5",
                 "--resolution", "320x240", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "e2e.json").read_text())
    for field in ("command", "machine", "station", "frames", "settings", "results"):
        assert field in doc
    assert doc["frames"]["resolution"] == [320, 240]
    r = doc["results"][0]
    assert r["status"] == "ok" and r["cameras"] == 2 and r["frames"] > 0
    assert r["missing"] == 0  # the server answers every frame
    assert sum(r["counts"].values()) == r["frames"]
    assert r["server"]["rss_mib_peak"] > 0 and "compute" in r["stages_ms"]
    assert r["overhead_ms"]["e2e_p50_minus_compute_p50"] is not None
    assert not (tmp_path / "never.sqlite").exists()  # the benchmark used a scratch journal
    assert (out / "e2e.png").read_bytes()[:4] == b"\x89PNG"
    assert "pipeline overhead" in capsys.readouterr().out


@pytest.mark.slow  # starts a server process: ~10-30 s on the shared 2-core CPU
def test_short_real_run_through_shared_memory(tmp_path):
    """--encoding shm: raw frames through each camera's /dev/shm ring; every frame scored, none lapped."""
    from lineside.cli import main

    bundle = make_tiny_bundle(tmp_path / "bundle")
    config = tmp_path / "station.yaml"
    config.write_text(f"station: bench-shm\nbundle: {bundle}\njournal: {{path: {tmp_path / 'never.sqlite'}}}\n")
    out = tmp_path / "out"
    code = main(["bench", "e2e", str(config), "--cameras", "2", "--fps", "4", "--duration", "1.5", "--warmup", "0.5",
                 "--resolution", "320x240", "--encoding", "shm", "--shm-slots", "4", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "e2e.json").read_text())
    assert doc["frames"]["encoding"] == "shm" and doc["frames"]["shm_slots"] == 4
    r = doc["results"][0]
    assert r["status"] == "ok" and r["frames"] > 0 and r["missing"] == 0
    assert r["counts"]["OK"] + r["counts"]["NG"] == r["frames"]  # no ERROR: every frame read intact
    assert r["overhead_ms"]["where"]["transport"] is not None and "decode" in r["stages_ms"]
    assert r["overhead_ms"]["where"]["camera_shm_write"] > 0  # the copy into the slot, split out of transport
