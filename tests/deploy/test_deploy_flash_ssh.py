"""Flashing over a real OpenSSH server on 127.0.0.1 (started by the `sshd` fixture with throw-away keys).

The "device" is a folder on this machine reached through sshd, so every step runs as it
would on a Jetson: through `ssh`, with the device's own Python, shell and service manager.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from net_helpers import free_port

from deploy_jetson.device_health import wait_healthy
from deploy_jetson.device_layout import state
from tests.deploy.deploy_helpers import REPO, SSH_PYTHON, STATION, device_settings, make_signed_tar, write_inventory


def ssh_inventory(tmp_path, sshd, root, control, **extra):
    defaults = {**device_settings(root, control, python=SSH_PYTHON), "identity": sshd["identity"],
                "ssh_options": sshd["ssh_options"], **extra}
    devices = [{"name": "jetson-1", "target": sshd["url"], "station": STATION}]
    return write_inventory(tmp_path / f"fleet-{time.monotonic_ns()}.toml", devices, defaults)


def lineside_cli(*args, timeout=120):
    from tests.deploy.deploy_helpers import lineside

    return lineside(*args, timeout=timeout)


def test_provision_and_flash_over_ssh_then_a_failing_build_leaves_it_running(sshd, tmp_path, keys, tars):
    root, control = tmp_path / "device", f"tcp://127.0.0.1:{free_port()}"
    inventory = ssh_inventory(tmp_path, sshd, root, control)
    try:
        r = lineside_cli("provision", inventory, "--trust", keys[1])
        assert r.returncode == 0, r.stderr + r.stdout
        assert (root / "station").read_text().strip() == STATION and list((root / "trusted-keys").iterdir())

        r = lineside_cli("flash", inventory, tars["v1"])
        assert r.returncode == 0, r.stderr + r.stdout
        assert "s  copy: 100%" in r.stdout and "TensorRT is not installed" in r.stdout
        assert wait_healthy(control, 10, STATION)["bundle"]["version"] == "v1"

        failing = ssh_inventory(tmp_path, sshd, root, control, trt_check="true", build="exit 7")
        r = lineside_cli("flash", failing, tars["v2"])
        assert r.returncode == 1
        assert "build failed" in r.stdout and "v1@" in r.stdout and "still running" in r.stdout
        assert wait_healthy(control, 10, STATION)["bundle"]["version"] == "v1"
        assert state(root)["current"]["version"] == "v1"

        r = lineside_cli("status", inventory)
        assert r.returncode == 0, r.stderr
        assert "running v1@" in r.stdout and "healthy" in r.stdout and "last verdict unknown" in r.stdout
    finally:
        _stop(root)


def test_copy_cut_off_mid_transfer_resumes_over_ssh(sshd, tmp_path, keys):
    root, control = tmp_path / "device", f"tcp://127.0.0.1:{free_port()}"
    scratch = None
    big = make_signed_tar(tmp_path, keys[0], "v3", extra_bytes=3_000_000)
    slow = ssh_inventory(tmp_path, sshd, root, control, bwlimit="1M")
    try:
        assert lineside_cli("provision", slow, "--trust", keys[1]).returncode == 0
        # the killed flash cannot remove its ssh control folder: give it one this test removes (short: sockets)
        scratch = tempfile.mkdtemp(prefix="ls6-")
        flashing = subprocess.Popen([sys.executable, "-m", "lineside", "flash", str(slow), str(big)], cwd=REPO,
                                    env=dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=scratch),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
        part = _wait_for_part(root, flashing)
        os.killpg(flashing.pid, signal.SIGKILL)  # the laptop's lid closes mid-copy
        flashing.wait(timeout=10)
        cut_at = part.stat().st_size
        assert 0 < cut_at < big.stat().st_size

        r = lineside_cli("flash", ssh_inventory(tmp_path, sshd, root, control), big)
        assert r.returncode == 0, r.stdout + r.stderr
        resumed = [line for line in r.stdout.splitlines() if "copy: resuming at" in line]
        assert resumed and int(resumed[0].split("resuming at ")[1].split()[0]) >= cut_at
        assert wait_healthy(control, 10, STATION)["bundle"]["version"] == "v3"
    finally:
        _stop(root)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _wait_for_part(root, proc, at_least=200_000):
    for _ in range(300):
        parts = list((root / "incoming").glob("*.part")) if (root / "incoming").is_dir() else []
        if parts and parts[0].stat().st_size >= at_least:
            return parts[0]
        assert proc.poll() is None, f"the flash ended before it was cut off: {proc.stdout.read()}"
        time.sleep(0.05)
    raise AssertionError("the copy never started")


def _stop(root):
    from tests.deploy.deploy_helpers import stop_service

    stop_service(root)
