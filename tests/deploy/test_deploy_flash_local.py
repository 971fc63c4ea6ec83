"""Flashing `local:` device roots: goes live, refuses, fails a build, fails to come up, resumes, rolls back.

The device's service is tests/deploy/service_double.py, restarted through the target's
`restart` command like systemd would; health is asked over its real ZeroMQ REP socket.
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from net_helpers import free_port

from deploy_jetson.device_bundles import upload_state
from deploy_jetson.device_health import wait_healthy
from deploy_jetson.device_layout import state
from deploy_jetson.flash import BundleInfo, flash, rollback
from deploy_jetson.targets import parse_target
from deploy_jetson.transport import open_shell
from edge_infer.bundle import sha256_file
from edge_infer.errors import LinesideError
from tests.deploy.deploy_helpers import STATION, device_settings, info, make_signed_tar


def run_flash(root, tar, control, progress=None, **settings):
    target = parse_target(f"local:{root}", device_settings(root, control, **settings))
    shell = open_shell(target)
    try:
        return flash(target, shell, info(tar), progress=progress)
    finally:
        shell.close()


@pytest.fixture
def live_v1(device_root, tars):
    """A device running v1, healthy."""
    control = f"tcp://127.0.0.1:{free_port()}"
    out = run_flash(device_root, tars["v1"], control)
    assert out.result == "ok", out.message
    # no TensorRT on this machine: no engine, ONNX Runtime, and the outcome says so
    assert any("TensorRT is not installed" in w for w in out.warnings)
    return device_root, control


def running(control) -> str:
    return wait_healthy(control, 10, STATION)["bundle"]["version"]


def test_good_bundle_goes_live_and_answers_health(live_v1, tars):
    root, control = live_v1
    assert running(control) == "v1"
    lines = []
    # a device with TensorRT: the build command gets the new bundle's folder and writes the engine there
    # (the test stand-in builder, which writes where TensorRT's build writes)
    build = "env LINESIDE_ENGINE_STANDIN=1 {python} -m lineside build-engine {bundle}"
    out = run_flash(root, tars["v2"], control, progress=lines.append, trt_check="true", build=build)
    assert (out.result, out.old.split("@")[0], out.new.split("@")[0]) == ("ok", "v1", "v2"), out.message
    assert "backend tensorrt-standin, precision fp32" in out.message and not out.warnings
    assert (root / "current" / "engines" / "model.fp32.engine.json").is_file()
    assert any("built a fp32 engine for tensorrt-standin" in line for line in lines)
    assert running(control) == "v2"
    st = state(root)
    assert (st["current"]["version"], st["previous"]["version"]) == ("v2", "v1")
    assert os.readlink(root / "current") == f"bundles/{st['current']['id']}"
    assert any(line.startswith("copy") for line in lines) and not list((root / "incoming").iterdir())
    # the same bundle again changes nothing
    assert run_flash(root, tars["v2"], control).result == "unchanged"


def test_tampered_bundle_is_refused_and_v1_keeps_running(live_v1, tars, tmp_path):
    root, control = live_v1
    good = info(tars["v2"])
    bad = tmp_path / "tampered.tar"
    with tarfile.open(tars["v2"]) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "thresholds.json":
                data = data.replace(b"0.5", b"0.9")
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    # the host's own check would stop this tar; flash it anyway to see the DEVICE refuse it
    tampered = BundleInfo(bad, sha256_file(bad), good.id, good.version, good.station)
    target = parse_target(f"local:{root}", device_settings(root, control))
    out = flash(target, open_shell(target), tampered)
    assert out.result == "refused"
    assert "does not match the sha256" in out.message and "v1@" in out.message and "still running" in out.message
    assert running(control) == "v1" and state(root)["current"]["version"] == "v1"
    assert len(state(root)["bundles"]) == 1


def test_failing_engine_build_leaves_v1_running(live_v1, tars):
    root, control = live_v1
    out = run_flash(root, tars["v2"], control, trt_check="true", build="sh -c 'echo parser error >&2; exit 3'")
    assert out.result == "failed"
    assert "build failed" in out.message and "parser error" in out.message and "v1@" in out.message
    assert running(control) == "v1"
    st = state(root)
    assert st["current"]["version"] == "v1" and st["bundles"] == [st["current"]["id"]]


def test_service_that_does_not_come_up_is_rolled_back(live_v1, tars):
    root, control = live_v1
    restart = device_settings(root, control)["restart"] + " --refuse-version v2"
    out = run_flash(root, tars["v2"], control, restart=restart, health_timeout=2)
    assert out.result == "rolled back", out.message
    assert "health failed" in out.message and "restored and healthy" in out.message
    st = state(root)
    assert st["current"]["version"] == "v1" and st["previous"] is None
    # the rollback restarted v1 with the same (refusing-v2) service manager: it answers again
    assert running(control) == "v1"


def test_restart_that_does_not_happen_is_not_taken_for_success(live_v1, tars):
    root, control = live_v1
    out = run_flash(root, tars["v2"], control, restart="true", health_timeout=2)  # the old service keeps answering
    assert out.result == "rolled back" and "still the old bundle" in out.message, out.message
    assert running(control) == "v1" and state(root)["current"]["version"] == "v1"


def test_wrong_station_bundle_is_refused_before_copying(live_v1, keys, tmp_path):
    root, control = live_v1
    other = make_signed_tar(tmp_path, keys[0], "v9", station="press-2")
    out = run_flash(root, other, control)
    assert out.result == "refused" and "'press-2'" in out.message and "nothing was changed" in out.message
    assert running(control) == "v1"


def test_interrupted_copy_resumes_from_what_is_there(device_root, tars):
    root, tar = device_root, tars["v1"]
    data = tar.read_bytes()
    sha = sha256_file(tar)
    upload_state(root, f"{sha}.tar")  # makes incoming/
    (root / "incoming" / f"{sha}.tar.part").write_bytes(data[: len(data) // 2])
    lines = []
    out = run_flash(root, tar, f"tcp://127.0.0.1:{free_port()}", progress=lines.append)
    assert out.result == "ok", out.message
    assert f"copy: resuming at {len(data) // 2} of {len(data)} bytes" in lines


def test_damaged_partial_copy_is_copied_afresh(device_root, tars):
    root, tar = device_root, tars["v1"]
    sha = sha256_file(tar)
    upload_state(root, f"{sha}.tar")
    (root / "incoming" / f"{sha}.tar.part").write_bytes(b"\0" * 1000)  # not a prefix of the tar
    lines = []
    out = run_flash(root, tar, f"tcp://127.0.0.1:{free_port()}", progress=lines.append)
    assert out.result == "ok", out.message
    assert any("damaged" in line for line in lines)


def test_rollback_returns_to_previous_and_back(live_v1, tars):
    root, control = live_v1
    assert run_flash(root, tars["v2"], control).result == "ok"
    target = parse_target(f"local:{root}", device_settings(root, control))
    out = rollback(target, open_shell(target))
    assert out.result == "ok", out.message
    assert running(control) == "v1"
    st = state(root)
    assert (st["current"]["version"], st["previous"]["version"]) == ("v1", "v2")


def test_unprovisioned_device_is_refused(tmp_path, tars):
    out = run_flash(tmp_path / "bare", tars["v1"], "tcp://127.0.0.1:1")
    assert out.result == "refused" and "provision" in out.message


def test_bad_target_strings_explain_themselves():
    with pytest.raises(LinesideError, match="not a target"):
        parse_target("press-1")
    with pytest.raises(LinesideError, match="names no folder"):
        parse_target("local:")
    t = parse_target("ssh://lineside@10.0.0.11:2222/srv/lineside")
    assert (t.user, t.host, t.port, t.root, t.python) == ("lineside", "10.0.0.11", 2222, "/srv/lineside", "python3")


def test_device_steps_refuse_names_that_leave_the_root(device_root, capsys):
    from deploy_jetson.device import main

    assert main(["remove", str(device_root), ".."]) == 2
    assert main(["switch", str(device_root), "../../etc"]) == 2
    assert main(["upload-state", str(device_root), "../x.tar"]) == 2
    assert "not a valid bundle id" in capsys.readouterr().err
    assert (device_root / "station").is_file() and not (device_root / "current").exists()
