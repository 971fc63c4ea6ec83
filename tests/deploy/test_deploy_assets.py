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
