"""`lineside flash --engine ansible`: the lineside role through ansible-runner, to three devices
behind three real OpenSSH servers on loopback ports (the `sshd_fleet` fixture).

The canary roll-out (serial 1, 10%, 100%; max_fail_percentage 0) flashes v1 everywhere, then
v2 while the second device's environment breaks its engine build: a TensorRT whose Python
package imports but is unusable, so `trt_check` passes and the real `lineside build-engine`
fails there. The play stops after that batch: the first device runs v2, healthy; the failed
one is back on v1 and healthy; the third was never touched.
"""

from __future__ import annotations

import sys
import time

import pytest
from net_helpers import free_port

from deploy_jetson.device_health import wait_healthy
from deploy_jetson.device_layout import state
from tests.deploy.deploy_helpers import (
    REPO,
    STATION,
    device_settings,
    lineside,
    stop_service,
    write_inventory,
)

pytest.importorskip("ansible_runner", reason="pip install ansible-runner ansible-core (the `fleet` extra)")


def _fleet(tmp_path, servers, broken_trt_on: str | None = None):
    broken = tmp_path / "broken-tensorrt"
    (broken / "tensorrt").mkdir(parents=True, exist_ok=True)
    # A TensorRT whose Python package is there but whose libraries are not: it imports, nothing works.
    (broken / "tensorrt" / "__init__.py").write_text("__version__ = '10.0-broken'\n")
    devices, roots = [], {}
    for i, server in enumerate(servers, 1):
        name = f"jetson-{i}"
        root, control = tmp_path / name, f"tcp://127.0.0.1:{free_port()}"
        pythonpath = f"{broken}:{REPO}" if name == broken_trt_on else str(REPO)
        settings = device_settings(root, control, python=f"env PYTHONPATH={pythonpath} {sys.executable}")
        devices.append({"name": name, "target": server["url"], "station": STATION, "identity": server["identity"],
                        "ssh_options": server["ssh_options"], **settings})
        roots[name] = (root, control)
    return devices, roots


@pytest.mark.slow
def test_canary_rollout_through_ansible_stops_at_a_failed_build_and_rolls_that_device_back(
        sshd_fleet, tmp_path, keys, tars):
    devices, roots = _fleet(tmp_path, sshd_fleet, broken_trt_on="jetson-2")
    good = write_inventory(tmp_path / "fleet.toml", [{**d, "python": f"env PYTHONPATH={REPO} {sys.executable}"}
                                                     for d in devices], {})
    v2_fleet = write_inventory(tmp_path / "fleet-v2.toml", devices, {})
    try:
        r = lineside("provision", good, "--trust", keys[1])
        assert r.returncode == 0, r.stdout + r.stderr

        start = time.monotonic()
        r = lineside("flash", "--engine", "ansible", good, tars["v1"], timeout=600)
        v1_seconds = time.monotonic() - start
        assert r.returncode == 0, r.stdout + r.stderr
        for name, (root, control) in roots.items():
            assert state(root)["current"]["version"] == "v1", name
            assert wait_healthy(control, 10, STATION)["bundle"]["version"] == "v1", name
        assert "copy the chunks" in r.stdout and "TensorRT is not installed" in r.stdout
        print(f"3-device Ansible roll-out of v1: {v1_seconds:.1f} s wall")

        again = lineside("flash", "--engine", "ansible", good, tars["v1"], timeout=600)
        assert again.returncode == 0 and again.stdout.count(" unchanged ") == 3, again.stdout  # idempotent

        r = lineside("flash", "--engine", "ansible", v2_fleet, tars["v2"], timeout=600)
        assert r.returncode == 1, r.stdout + r.stderr
        rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("jetson-")}
        assert "v1@" in rows["jetson-1"] and " ok " in rows["jetson-1"]
        assert " failed " in rows["jetson-2"], rows
        assert " skipped " in rows["jetson-3"], rows
        assert "build the TensorRT engine failed" in r.stdout and "still running" in r.stdout
        assert "the roll-out stopped before this device" in r.stdout

        (root1, control1), (root2, control2), (root3, control3) = roots.values()
        assert state(root1)["current"]["version"] == "v2"
        assert wait_healthy(control1, 10, STATION)["bundle"]["version"] == "v2"
        st2 = state(root2)
        assert st2["current"]["version"] == "v1" and len(st2["bundles"]) == 1  # the failed v2 was removed
        assert wait_healthy(control2, 10, STATION)["bundle"]["version"] == "v1"
        assert state(root3)["current"]["version"] == "v1" and not list((root3 / "incoming").iterdir())
        assert wait_healthy(control3, 10, STATION)["bundle"]["version"] == "v1"
    finally:
        for root, _ in roots.values():
            stop_service(root)


def test_check_mode_changes_nothing(tmp_path, keys, tars):
    from tests.deploy.deploy_helpers import provision

    root, control = provision(tmp_path / "device", keys[1]), f"tcp://127.0.0.1:{free_port()}"
    settings = {k: v for k, v in device_settings(root, control).items() if k != "root"}
    fleet = write_inventory(tmp_path / "fleet.toml", [{"name": "local-1", "target": f"local:{root}",
                                                       "station": STATION, **settings}], {})
    r = lineside("flash", "--engine", "ansible", "--check", fleet, tars["v1"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " check " in r.stdout and "would copy, install, build and switch" in r.stdout
    st = state(root)
    assert st["current"] is None and st["bundles"] == [] and not list((root / "incoming").iterdir())


def test_an_ansible_inventory_provision_flash_status_and_a_cut_off_copy_resumes(tmp_path, keys, tars):
    """The state a cut-off copy leaves (whole chunks: Ansible's copy renames each into place) is resumed."""
    import subprocess

    import yaml

    from edge_infer.bundle import sha256_file
    from tests.deploy.deploy_helpers import SERVICE

    root, control = tmp_path / "device", f"tcp://127.0.0.1:{free_port()}"
    python = f"env PYTHONPATH={REPO} {sys.executable}"
    inventory = tmp_path / "plant.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"press-1-jetson": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "lineside_root": str(root), "lineside_python": python, "lineside_station": STATION,
        "lineside_control": control, "lineside_health_timeout": 20, "lineside_chunk_size": "2k",
        "lineside_restart": f"{python} {SERVICE} restart --root {root} --control {control}"}}}}))
    r = lineside("provision", "--engine", "ansible", inventory, "--trust", keys[1], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"station {STATION}, keys test" in r.stdout
    assert (root / "station").read_text().strip() == STATION and (root / "trusted-keys" / "test.pub").is_file()
    sha = sha256_file(tars["v1"])
    chunks = root / "incoming" / f"{sha}.tar.chunks"
    chunks.mkdir(parents=True)
    subprocess.run(["split", "-b", "2k", "-d", "-a", "5", str(tars["v1"]), str(chunks / "chunk.")], check=True)
    total = len(list(chunks.iterdir()))
    assert total >= 4
    for extra in sorted(chunks.iterdir())[2:]:
        extra.unlink()  # two chunks arrived before the cut
    (chunks / "chunk.00002").write_bytes(b"half a chunk")  # and a third that is not what the controller has
    try:
        r = lineside("flash", "--engine", "ansible", inventory, tars["v1"], timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "copy: chunk.00000 already there, skipped" in r.stdout and "chunk.00001 already there" in r.stdout
        assert "copy: chunk.00002 copied" in r.stdout
        assert r.stdout.count(" copied") == total - 2
        assert state(root)["current"]["version"] == "v1" and not chunks.exists()
        assert wait_healthy(control, 10, STATION)["bundle"]["version"] == "v1"
        assert "press-1-jetson  - → v1@" in r.stdout

        r = lineside("status", "--engine", "ansible", inventory, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "press-1-jetson: running v1@" in r.stdout and "(previous -), healthy" in r.stdout
    finally:
        stop_service(root)
