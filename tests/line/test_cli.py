"""`lineside serve` with a line section as a real process, driven by `lineside ctl`."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import yaml
from line_helpers import free_port, gray, make_tiny_bundle, wait_until

from edge_infer.journal import read_verdicts

ROOT = Path(__file__).resolve().parents[2]


def ctl(address, *args):
    out = subprocess.run([sys.executable, "-m", "lineside", "ctl", address, *args, "--json"], check=False, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {}  # no answer (yet): {}


def test_serve_with_a_line_section_grabs_from_its_camera_and_answers_ctl(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, value in enumerate((250, 20)):
        cv2.imwrite(str(frames / f"{i}.png"), gray(value))
    bundle = str(make_tiny_bundle(tmp_path / "bundle"))
    control = f"tcp://127.0.0.1:{free_port()}"
    config = {"station": "cli1", "bundle": bundle, "journal": {"path": "journal.sqlite"},
              "sockets": {"frames": f"tcp://127.0.0.1:{free_port()}", "verdicts": f"tcp://127.0.0.1:{free_port()}",
                          "control": control},
              "line": {"camera": {"source": "frames"}, "gpio_backend": "sim",
                       "recipes": [{"id": 1, "name": "a", "bundle": bundle},
                                   {"id": 2, "name": "b", "bundle": bundle, "thresholds": {"image": 0.99}}]}}
    (tmp_path / "station.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "lineside", "serve", str(tmp_path / "station.yaml")], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready = lambda: ctl(control, "line")[1].get("signals", {}).get("ready")
        assert wait_until(lambda: proc.poll() is None and ready(), 60)
        assert ctl(control, "trigger") == (0, {"ok": True, "inspection": 1})
        assert ctl(control, "recipe", "--id", "2", "--who", "alice")[1]["changed"] is True
        assert ctl(control, "trigger")[1]["inspection"] == 2
        code, refused = ctl(control, "recipe", "--id", "7")
        assert code == 1 and "UNKNOWN_RECIPE" in refused["error"]
        def decided():
            answer = ctl(control, "line")[1]
            counters = answer["signals"]["counters"]
            return answer if counters["OK"] + counters["NG"] == 2 else None

        line = wait_until(decided, 30)
        assert line["signals"]["recipe_id"] == 2 and line["signals"]["error_code"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    rows = read_verdicts(tmp_path / "journal.sqlite")
    assert [(r["detail"]["tags"]["inspection"], r["detail"]["tags"]["recipe"], r["status"]) for r in rows] == \
        [("1", "1", "NG"), ("2", "2", "OK")]  # 250 under recipe a: NG; 20 under b: OK
