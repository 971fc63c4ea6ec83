"""The device assets: the systemd units parse, run `lineside serve` unprivileged, and restart on failure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[2] / "deploy_jetson" / "assets"


def unit(name: str) -> dict[str, str]:
    keys = {}
    for line in (ASSETS / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), value.strip())
    return keys


def test_service_unit_runs_serve_unprivileged_with_restart_and_journald():
    u = unit("lineside@.service")
    assert u["User"] == "lineside" and "gpio" in u["SupplementaryGroups"].split()
    assert u["ExecStart"].endswith("lineside serve ${LINESIDE_STATION_CONFIG}")
    # the service runs whatever `current` points at: the link that `lineside flash` switches
    assert "Environment=LINESIDE_STATION_CONFIG=/opt/lineside/current/station.yaml" in (
        ASSETS / "lineside@.service").read_text()
    assert (u["Restart"], u["StandardOutput"], u["NoNewPrivileges"]) == ("on-failure", "journal", "yes")
    assert "deploy_jetson.device health" in unit("lineside-watchdog@.service")["ExecStart"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed here")
def test_units_pass_systemd_analyze(tmp_path):
    for name in ("lineside@.service", "lineside-watchdog@.service", "lineside-watchdog@.timer"):
        shutil.copy(ASSETS / name, tmp_path / name.replace("@.", "@press-1."))
    files = sorted(str(p) for p in tmp_path.iterdir())
    r = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True, cwd=tmp_path)
    # The venv's binary does not exist on this host; anything else systemd complains about is a real error.
    problems = [line for line in (r.stderr + r.stdout).splitlines()
                if line.strip() and "is not executable" not in line]
    assert not problems, problems


def test_service_unit_is_supervised_by_sd_notify():
    u = unit("lineside@.service")
    assert (u["Type"], u["NotifyAccess"]) == ("notify", "main")
    assert int(u["WatchdogSec"]) >= 10  # serve pings at half of it (tests/runtime/test_sdnotify.py)


def dockerfile_pins() -> dict[str, str]:
    """name -> specifier of every requirement the Dockerfile's `pip install` lines name."""
    import re

    from packaging.requirements import Requirement

    text = (ASSETS / "Dockerfile").read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if "pip install" in line:
            for quoted in re.findall(r'"([^"]+)"', line):
                req = Requirement(quoted)
                pins[req.name.lower()] = req.specifier
    return pins


def test_dockerfile_installs_the_base_dependencies_within_pyprojects_floors():
    """Every base dependency of pyproject.toml is in the image, with a range that admits its floor
    and no higher one: an image pinning numpy<2 while the code needs NumPy 2 is what this catches."""
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    project = tomllib.loads((ASSETS.parents[1] / "pyproject.toml").read_text())["project"]
    pins = dockerfile_pins()
    for dependency in project["dependencies"]:
        req = Requirement(dependency)
        assert req.name.lower() in pins, f"the Dockerfile does not install {req.name}"
        floor = next(s.version for s in req.specifier if s.operator == ">=")
        image = pins[req.name.lower()]
        assert image.contains(floor), f"the image's {req.name}{image} refuses pyproject's floor {floor}"
        image_floor = next((s.version for s in image if s.operator == ">="), None)
        assert image_floor == floor, f"the image's {req.name} floor {image_floor} differs from pyproject's {floor}"
    # the optional pieces it adds come from pyproject's extras, within their ranges
    extras = {Requirement(r).name.lower(): Requirement(r).specifier for group in
              project["optional-dependencies"].values() for r in group}
    for name in ("onnxruntime", "cuda-python"):
        floor = next(s.version for s in extras[name] if s.operator == ">=")
        assert pins[name].contains(floor), f"the image's {name}{pins[name]} refuses the extra's floor {floor}"
    assert "opencv-python-headless" not in pins  # JetPack's OpenCV (GStreamer) stays the one in use
