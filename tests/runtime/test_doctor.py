"""`lineside doctor` reports what this machine really has: checked against the libraries themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import onnxruntime

ROOT = Path(__file__).resolve().parents[2]


def doctor(*args, prelude: str = ""):
    code = prelude + "import sys; from lineside.cli import main; sys.exit(main(['doctor', *sys.argv[1:]]))"
    out = subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_doctor_reports_the_opencv_onnxruntime_and_machine_in_use():
    report = json.loads(doctor("--json"))
    build = [line.strip() for line in cv2.getBuildInformation().splitlines()]

    def built_with(name):
        return any(line.startswith(f"{name}:") and line.split(":", 1)[1].strip().startswith("YES") for line in build)

    assert report["opencv"] == {"installed": True, "path": str(Path(cv2.__file__).resolve()),
                                "version": cv2.__version__, "gstreamer": built_with("GStreamer"),
                                "cuda": built_with("NVIDIA CUDA")}
    assert report["onnxruntime"] == {"version": onnxruntime.__version__,
                                     "providers": onnxruntime.get_available_providers()}
    assert report["cpu"]["logical_cores"] == os.cpu_count()
    on_jetson = Path("/etc/nv_tegra_release").exists()
    assert (report["jetson"] == "not a Jetson") is not on_jetson
    if not on_jetson:
        text = doctor()
        assert "jetson       not a Jetson" in text and f"opencv       {cv2.__version__} at " in text


def test_doctor_without_opencv_says_what_decodes_and_how_to_get_it():
    report = json.loads(doctor("--json", prelude="import sys; sys.modules['cv2'] = None\n"))
    assert report["opencv"]["installed"] is False
    assert "Pillow" in report["opencv"]["note"] and "lineside[opencv]" in report["opencv"]["note"]
    assert report["pillow"]
